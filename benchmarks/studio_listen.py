"""The studio under load: 200 concurrent requests to the Listen view of a 1,000-clip run, p95 latency.

A run folder with 1,000 clips (baseline and tuned transcripts of its main manifest; the record itself
is a stand-in, the Listen view reads only the transcripts) is written to a temporary root, and
`moonlora studio --root ROOT --port 0` is started as its own process. Each round sends 200 requests at
once (200 threads released together), each a page of 50 rows under one of the view's sorts and
filters, after one warm-up request that builds the row cache. Every response must be 200 with 50 rows
(or the filter's count); latencies are per request, from send to full body.

    uv run python benchmarks/studio_listen.py [--rounds 3] [--concurrency 200]

Writes benchmarks/studio_listen.json; docs/benchmarks.md quotes it. The machine's load is recorded at
start and end: on a shared 2-core machine the numbers are an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).with_name("studio_listen.json")
CLIPS = 1000
QUERIES = ("sort=worst", "sort=changed", "sort=duration&offset=200", "sort=speaker&speaker=s3", "flag=repeat_loop",
           "sort=order&offset=950", "q=bravo&changed=1", "min=3&max=5")


def clip_row(i: int, tuned: bool) -> dict:
    ref = f"clip {i} cleared to land runway two seven left"
    wrong = (i % 3 == 0) if not tuned else (i % 7 == 0)
    hyp = ref.replace("seven", "eleven") if wrong else ref
    return {"utt_id": f"{i + 1}:c{i:04d}.wav", "audio_filepath": f"clips/c{i:04d}.wav", "duration": 1.0 + i % 7,
            "speaker": f"s{i % 9}", "ref": ref, "hyp": hyp, "ref_norm": ref, "hyp_norm": hyp, "ref_words": 8,
            "substitutions": int(wrong), "deletions": 0, "insertions": 0, "wer": wrong / 8,
            "flags": ["repeat_loop"] if i % 50 == 0 else []}


def write_run(root: Path) -> Path:
    run = root / "runs" / "big"
    for side in ("baseline", "tuned"):
        folder = run / side / "main"
        folder.mkdir(parents=True)
        rows = [clip_row(i, side == "tuned") for i in range(CLIPS)]
        (folder / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "summary.json").write_text("{}")
    (run / "experiment_metrics.json").write_text("{}")  # marks a run folder; the Listen view reads the transcripts
    return run


def start_studio(root: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "moonlora", "studio", "--root", str(root), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the studio did not start: {line}{process.stdout.read()}")
    return process, line[line.index("http://"):].split()[0]


def fetch(url: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = json.loads(response.read())
        return time.perf_counter() - started, response.status, len(body["rows"])


def round_of(base: str, concurrency: int) -> list[dict]:
    barrier, results = threading.Barrier(concurrency), [None] * concurrency

    def one(index: int) -> None:
        url = f"{base}api/listen?folder=runs/big&limit=50&{QUERIES[index % len(QUERIES)]}"
        barrier.wait()
        try:
            seconds, status, rows = fetch(url)
            results[index] = {"seconds": seconds, "status": status, "rows": rows}
        except Exception as error:  # a refused or dropped request is a result to report, not a crash
            results[index] = {"seconds": None, "status": None, "error": f"{type(error).__name__}: {error}"}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_run(root)
        process, base = start_studio(root)
        try:
            warm, _, _ = fetch(f"{base}api/listen?folder=runs/big&limit=50")
            rounds = [round_of(base, args.concurrency) for _ in range(args.rounds)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    done = [r for rnd in rounds for r in rnd if r["status"] == 200]
    failed = [r for rnd in rounds for r in rnd if r["status"] != 200]
    seconds = [r["seconds"] for r in done]
    result = {
        "clips": CLIPS, "concurrency": args.concurrency, "rounds": args.rounds, "requests": len(seconds) + len(failed),
        "ok": len(done), "failed": len(failed), "first_errors": [r.get("error") for r in failed[:3]],
        "warm_up_seconds": round(warm, 4),
        "p50_seconds": round(statistics.median(seconds), 4) if seconds else None,
        "p95_seconds": round(percentile(seconds, 0.95), 4) if seconds else None,
        "max_seconds": round(max(seconds), 4) if seconds else None,
        "p95_per_round": [round(percentile([r["seconds"] for r in rnd if r["status"] == 200], 0.95), 4)
                          for rnd in rounds if any(r["status"] == 200 for r in rnd)],
        "load_start": load_start, "load_end": os.getloadavg()[0], "cores": os.cpu_count(),
        "machine": platform.machine(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
