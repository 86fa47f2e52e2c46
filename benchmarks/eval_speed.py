"""Eval speed: moonlora's decode path (both exact encoders) vs the two usual Hugging Face loops, in one run.

  ours, per-clip encoder  decode_clips: clips encoded one by one, decoder batched over
                          length-sorted batches (DecodeConfig defaults), per-clip token cap
  ours, batched encoder   the same with DecodeConfig(encoder="batched"): one exact padded
                          encoder pass per batch (encode_batched_exact)
  batch-1 loop            feature_extractor + model.generate one clip at a time, per-clip token cap
  fixed batch             feature_extractor over batches in manifest order + model.generate,
                          one cap per batch (the stock padded batch)

Same model (bundled:base-en, fp32), same clips (synthetic ATC test voices + beckett.wav). Each
path runs --repeats times, interleaved (a, b, c, d, a, b, ...), after an untimed warm-up of each;
medians and min-max are reported. The machine's load is printed at start and end, and a path
timed while the 1-minute load exceeded the core count is marked BUSY. Prints a Markdown table
and writes JSON next to this script.

    uv run python benchmarks/eval_speed.py [--threads 2] [--repeats 3] [--clips 101]
    uv run python benchmarks/eval_speed.py --sweep 1 8 16 32 64   # ours at each decode batch size
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from moonlora.model import bundled
from moonlora.data.audio import load_audio
from moonlora.configs import DecodeConfig
from moonlora.eval.decode import decode_clips
from moonlora.data.manifest import load_manifest, write_manifest
from moonlora.eval.metrics import corpus_score, score_utterance
from moonlora.model.loading import load_model
from moonlora.data.synth.build import build_domain

sys.path.insert(0, str(Path(__file__).parent))
from machine import interleaved, median_spread, print_load  # noqa: E402

BATCH1_LOOP = "batch-1 loop"


def benchmark_manifest(work: Path) -> Path:
    """~100 synthetic ATC clips on held-out voices plus the real beckett.wav."""
    synth = build_domain("atc", n=303, seed=0, out_dir=work / "atc", progress=False)
    rows = [json.loads(line) for line in synth.test_manifest.read_text().splitlines()]
    rows = [{**row, "audio_filepath": str(synth.out_dir / row["audio_filepath"])} for row in rows]
    rows.append({"audio_filepath": str(bundled.beckett_wav_path()), "text": bundled.BECKETT_TEXT})
    return write_manifest(rows, work / "bench.jsonl")


def hf_generate(model, feature_extractor, waveforms, max_new_tokens: int) -> list[list[int]]:
    inputs = feature_extractor(waveforms, sampling_rate=16000, return_tensors="pt", padding=True,
                               return_attention_mask=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return out.tolist()


def texts_from_ids(tokenizer, rows) -> list[str]:
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def wer_of(utterances, texts) -> float:
    return corpus_score([score_utterance(u.text, t) for u, t in zip(utterances, texts)]).wer


def timed(run) -> dict:
    """Time `run()` (which returns the transcripts) as one measurement for `interleaved`."""
    started = time.perf_counter()
    texts = run()
    return {"seconds": time.perf_counter() - started, "texts": texts}


def ours(loaded, waveforms, config: DecodeConfig):
    durations = [len(w) / 16000 for w in waveforms]
    clips, _ = decode_clips(loaded.decoder(), durations, lambda i: waveforms[i], config)
    return [clip.text for clip in clips]


def batch1_loop(loaded, waveforms, caps):
    rows = [hf_generate(loaded.model, loaded.feature_extractor, [w], cap)[0] for w, cap in zip(waveforms, caps)]
    return texts_from_ids(loaded.tokenizer, rows)


def fixed_batches(loaded, waveforms, caps, batch_size: int):
    rows = []
    for start in range(0, len(waveforms), batch_size):
        chunk = slice(start, start + batch_size)
        rows += hf_generate(loaded.model, loaded.feature_extractor, waveforms[chunk], max(caps[chunk]))
    return texts_from_ids(loaded.tokenizer, rows)


def load_clips(clip_count: int | None):
    work = Path(tempfile.mkdtemp(prefix="moonlora-bench-"))
    utterances = load_manifest(benchmark_manifest(work)).utterances
    if clip_count is not None:  # keep beckett.wav (the last row) among the first clips
        utterances = utterances[: clip_count - 1] + utterances[-1:]
    waveforms = [load_audio(u.audio_filepath) for u in utterances]  # loaded once, outside every timer
    return utterances, waveforms


def summarize(utterances, audio_seconds: float, runs: dict[str, list[dict]], reference: str) -> dict:
    """Medians, spread, WER and text identity per path; speed ratios against `reference`'s median."""
    reference_seconds = median_spread([r["seconds"] for r in runs[reference]])["median"]
    reference_texts = runs[reference][0]["texts"]
    table = {}
    for name, rows in runs.items():
        seconds = median_spread([r["seconds"] for r in rows])
        table[name] = {
            "seconds": seconds, "rtfx": audio_seconds / seconds["median"],
            "wer": wer_of(utterances, rows[0]["texts"]),
            "speedup_vs_reference": reference_seconds / seconds["median"],
            "same_texts_as_reference": rows[0]["texts"] == reference_texts,
            "same_texts_every_repeat": all(r["texts"] == rows[0]["texts"] for r in rows),
            "load1": [r["load1"] for r in rows], "busy": any(r["busy"] for r in rows),
        }
    return table


def print_table(table: dict, reference: str, first_column: str) -> None:
    print(f"| {first_column} | median seconds (min-max) | RTFx | WER | speed vs {reference} | "
          f"same texts as {reference} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in table.items():
        seconds, busy = row["seconds"], " (BUSY)" if row["busy"] else ""
        print(f"| {name}{busy} | {seconds['median']:.1f} ({seconds['min']:.1f}-{seconds['max']:.1f}) | "
              f"{row['rtfx']:.1f}x | {row['wer']:.4f} | {row['speedup_vs_reference']:.2f}x | "
              f"{row['same_texts_as_reference']} |")


def write_report(args, table: dict, utterances, audio_seconds: float, loads: dict, default_name: str, **extra) -> None:
    report = {"clips": len(utterances), "audio_seconds": audio_seconds, "threads": args.threads,
              "repeats": args.repeats, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "load": loads, **extra, "results": table}
    Path(args.out or Path(__file__).with_name(default_name)).write_text(json.dumps(report, indent=2) + "\n")


def sweep(args) -> None:
    """Ours at several decode batch sizes: RTFx, WER, and whether texts equal the first size's."""
    load_at_start = print_load("start")
    torch.set_num_threads(args.threads)
    utterances, waveforms = load_clips(args.clips)
    loaded = load_model(device="cpu")
    audio_seconds = sum(len(w) for w in waveforms) / 16000
    ours(loaded, waveforms[:4], DecodeConfig(device="cpu", encoder=args.encoder))  # warm-up, untimed
    paths = {f"batch {size}": (lambda size=size: timed(lambda: ours(
        loaded, waveforms, DecodeConfig(device="cpu", batch_size=size, encoder=args.encoder))))
        for size in args.sweep}
    runs = interleaved(paths, args.repeats)
    load_at_end = print_load("end")
    reference = f"batch {args.sweep[0]}"
    table = summarize(utterances, audio_seconds, runs, reference)
    write_report(args, table, utterances, audio_seconds, {"start": load_at_start, "end": load_at_end},
                 "eval_speed_sweep.json", encoder=args.encoder)
    print(f"\n{len(utterances)} clips, {audio_seconds:.0f} s of audio, {args.threads} threads, bundled:base-en fp32, "
          f"{args.encoder} encoder, {args.repeats} interleaved repeats\n")
    print_table(table, reference, "decode batch size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per path; medians reported")
    parser.add_argument("--clips", type=int, default=None, help="only the first N clips (beckett.wav kept)")
    parser.add_argument("--sweep", type=int, nargs="+", default=None,
                        help="instead: time ours at each of these decode batch sizes")
    parser.add_argument("--encoder", choices=("per-clip", "batched"), default="per-clip",
                        help="encoder for --sweep")
    parser.add_argument("--out", default=None, help="JSON results (default: next to this script)")
    args = parser.parse_args()
    if args.sweep:
        return sweep(args)
    load_at_start = print_load("start")
    torch.set_num_threads(args.threads)
    utterances, waveforms = load_clips(args.clips)
    loaded = load_model(device="cpu")
    per_clip, batched = DecodeConfig(device="cpu", encoder="per-clip"), DecodeConfig(device="cpu", encoder="batched")
    caps = [per_clip.token_cap(len(w) / 16000) for w in waveforms]
    audio_seconds = sum(len(w) for w in waveforms) / 16000
    batch_size = per_clip.batch_size

    ours(loaded, waveforms[:4], batched)  # warm-ups, untimed: first-call costs hit no path
    ours(loaded, waveforms[:4], per_clip)
    batch1_loop(loaded, waveforms[:2], caps[:2])
    fixed_batches(loaded, waveforms[:4], caps[:4], batch_size)
    paths = {
        f"ours, per-clip encoder (batch {batch_size}, length-sorted)": lambda: timed(lambda: ours(loaded, waveforms, per_clip)),
        f"ours, batched exact encoder (batch {batch_size}, length-sorted)": lambda: timed(lambda: ours(loaded, waveforms, batched)),
        BATCH1_LOOP: lambda: timed(lambda: batch1_loop(loaded, waveforms, caps)),
        f"fixed batch {batch_size}, manifest order": lambda: timed(lambda: fixed_batches(loaded, waveforms, caps, batch_size)),
    }
    runs = interleaved(paths, args.repeats)
    load_at_end = print_load("end")
    table = summarize(utterances, audio_seconds, runs, BATCH1_LOOP)
    write_report(args, table, utterances, audio_seconds, {"start": load_at_start, "end": load_at_end},
                 "eval_speed.json", batch_size=batch_size)
    print(f"\n{len(utterances)} clips, {audio_seconds:.0f} s of audio, {args.threads} threads, bundled:base-en fp32, "
          f"{args.repeats} interleaved repeats\n")
    print_table(table, BATCH1_LOOP, "decode path")


if __name__ == "__main__":
    main()
