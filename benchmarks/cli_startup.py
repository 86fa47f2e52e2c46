"""CLI start-up: wall time of `moonlora --help` against a bare `python -c pass`, and against what
the CLI paid before it was made light (importing torch, transformers, peft and accelerate).

`moonlora --help` parses arguments only; it must not load torch, transformers, peft or
accelerate (tests/test_cli_light.py checks the imports; this measures what is left). Each
repeat runs both commands as fresh processes, interleaved (baseline, CLI, baseline, CLI, ...)
so that a change in machine load hits both alike; the medians and their difference are reported.

    uv run python benchmarks/cli_startup.py [--repeats 5]

The load average is printed at the start; when it exceeds the number of cores the result is
marked `"loaded": true`, and the numbers should be taken again on a quiet machine.
Writes benchmarks/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_name("cli_startup.json")


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("moonlora")  # the console script uv installs into .venv/bin
    return [str(script), "--help"] if script.is_file() else [sys.executable, "-m", "moonlora", "--help"]


def wall_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs of each command (default: 5)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    load = os.getloadavg()
    loaded = load[0] > cores
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {cores} cores"
          + ("  (LOADED: more runnable processes than cores; rerun on a quiet machine)" if loaded else ""))

    baseline_cmd, cli_cmd = [sys.executable, "-c", "pass"], cli_command()
    heavy_cmd = [sys.executable, "-c", "import torch, transformers, peft, accelerate"]
    wall_seconds(baseline_cmd), wall_seconds(cli_cmd), wall_seconds(heavy_cmd)  # warm the file cache, untimed
    baseline, cli, heavy = [], [], []
    for _ in range(args.repeats):
        baseline.append(wall_seconds(baseline_cmd))
        cli.append(wall_seconds(cli_cmd))
        heavy.append(wall_seconds(heavy_cmd))

    result = {
        "command": " ".join(Path(part).name if i == 0 else part for i, part in enumerate(cli_cmd)),
        "repeats": args.repeats,
        "baseline_python_pass_s": [round(s, 4) for s in baseline],
        "moonlora_help_s": [round(s, 4) for s in cli],
        "median_baseline_s": round(statistics.median(baseline), 4),
        "median_moonlora_help_s": round(statistics.median(cli), 4),
        "median_overhead_s": round(statistics.median(cli) - statistics.median(baseline), 4),
        "ml_stack_import_s": [round(s, 4) for s in heavy],
        "median_ml_stack_import_s": round(statistics.median(heavy), 4),
        "load_average_at_start": [round(value, 2) for value in load],
        "cores": cores,
        "loaded": loaded,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"python -c pass   median {result['median_baseline_s']:.3f} s")
    print(f"moonlora --help  median {result['median_moonlora_help_s']:.3f} s "
          f"(+{result['median_overhead_s']:.3f} s over bare python)" + ("  [LOADED]" if loaded else ""))
    print(f"import torch, transformers, peft, accelerate (what --help paid before)  median "
          f"{result['median_ml_stack_import_s']:.3f} s")
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
