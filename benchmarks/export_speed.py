"""Export speed: CPU seconds per audio second of the same clips through
(1) moonlora's torch path (the merged fp32 model), (2) the bundled `.ort` files through the
onnxruntime backend, (3) the exported `.ort` folder (`moonlora export --format ort`).

Every path is scored with `evaluate_manifest` (same manifest, audio pipeline, greedy decode,
per-clip cap), repeated `--repeats` times interleaved (1, 2, 3, 1, 2, 3, ...); medians and spread
of process CPU seconds and wall seconds are reported, with the machine's load at the start (a
result taken while the load exceeded the core count is marked). Texts of (2) vs (1) and (3) vs the
merged torch model are compared too.

    uv run python benchmarks/export_speed.py --run RUN_DIR --manifest TEST.jsonl [--clips 30] [--repeats 3]

RUN_DIR is a finished `moonlora experiment` run on bundled:base-en, or on a Moonshine Streaming model: then
the paths are (1) torch, (2) the exported int8 streaming folder, (3) the same exported float32 (there is no
bundled streaming folder). Writes benchmarks/export_speed.json (export_speed_streaming.json for streaming).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from moonlora.data.audio import AudioConfig
from moonlora.configs import DecodeConfig
from moonlora.eval.evaluate import evaluate_manifest
from moonlora.ship.export import export
from moonlora.data.manifest import Manifest, load_manifest
from moonlora.model.loading import load_model

OUT = Path(__file__).with_name("export_speed.json")


def timed(loaded, manifest: Manifest) -> tuple[float, float, list[str]]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = evaluate_manifest(loaded, manifest, AudioConfig(), DecodeConfig(device="cpu"), progress=False)
    return time.process_time() - cpu, time.perf_counter() - wall, [c.hypothesis for c in result.clips]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run folder on bundled:base-en")
    parser.add_argument("--manifest", required=True, help="clips to transcribe (the run's test manifest)")
    parser.add_argument("--clips", type=int, default=30, help="first N clips of the manifest (default: 30)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each path (default: 3)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} on {cores} cores" + ("  (LOADED)" if load[0] > cores else ""))
    full = load_manifest(args.manifest)
    manifest = Manifest(path=full.path, utterances=full.utterances[: args.clips])
    audio_seconds = sum(u.file_duration for u in manifest.utterances)
    work = Path(tempfile.mkdtemp(prefix="export-speed-"))
    exported = export(args.run, work / "ship", export_format="both")
    torch_model = load_model(str(exported.folders["hf"]), device="cpu")
    streaming = "streaming-graphs" in torch_model.family.export_routes
    if streaming:  # the runtime's five graphs, int8 (what ships) against float32
        reference = export(args.run, work / "float", export_format="ort", precision="float32").folders["ort"]
        reference_name = "exported float32 .ort (onnxruntime)"
    else:
        reference, reference_name = "bundled:base-en", "bundled .ort (onnxruntime)"
    paths = {"torch merged fp32": torch_model, reference_name: load_model(f"ort:{reference}"),
             "exported .ort (onnxruntime)": load_model(f"ort:{exported.folders['ort']}")}
    samples = {name: {"cpu": [], "wall": []} for name in paths}
    texts, loads = {}, []
    for _ in range(args.repeats):
        loads.append([round(v, 2) for v in os.getloadavg()])
        for name, loaded in paths.items():
            cpu, wall, texts[name] = timed(loaded, manifest)
            samples[name]["cpu"].append(cpu)
            samples[name]["wall"].append(wall)
    rows = {}
    for name, measured in samples.items():
        cpu = statistics.median(measured["cpu"])
        rows[name] = {"cpu_seconds": measured["cpu"], "wall_seconds": measured["wall"],
                      "median_cpu_seconds_per_audio_second": cpu / audio_seconds,
                      "median_rtfx": audio_seconds / statistics.median(measured["wall"])}
        print(f"{name:30s} {cpu / audio_seconds:.3f} CPU-s per audio-s, RTFx {rows[name]['median_rtfx']:.1f} "
              f"(CPU {min(measured['cpu']):.1f}-{max(measured['cpu']):.1f} s)")
    identical = sum(a == b for a, b in zip(texts["torch merged fp32"], texts["exported .ort (onnxruntime)"]))
    report = {
        "clips": len(manifest.utterances), "audio_seconds": audio_seconds, "repeats": args.repeats,
        "paths": rows, "exported_vs_torch_identical_texts": identical,
        "family": torch_model.model_type,
        ("exported_over_float_cpu" if streaming else "exported_over_bundled_cpu"):
        rows["exported .ort (onnxruntime)"]["median_cpu_seconds_per_audio_second"]
        / rows[reference_name]["median_cpu_seconds_per_audio_second"],
        "ort_over_torch_cpu": rows["exported .ort (onnxruntime)"]["median_cpu_seconds_per_audio_second"]
        / rows["torch merged fp32"]["median_cpu_seconds_per_audio_second"],
        "load_average_at_start": [round(v, 2) for v in load], "cores": cores, "loaded": load[0] > cores,
        "load_average_per_repeat": loads, "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "busy_repeats": sum(entry[0] > cores for entry in loads),
        "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
    }
    ratio = report["exported_over_float_cpu" if streaming else "exported_over_bundled_cpu"]
    print(f"exported/{'float32' if streaming else 'bundled'} CPU {ratio:.3f}; exported ORT/torch CPU "
          f"{report['ort_over_torch_cpu']:.2f}; identical texts exported vs torch {identical}/{len(manifest.utterances)}")
    out = OUT.with_name("export_speed_streaming.json") if streaming else OUT
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
