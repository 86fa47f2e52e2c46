"""GPU check: bf16 LoRA training samples/s, and eval RTFx at decode batch 64 against the leaderboard's loop.

One short script for the first minutes a GPU is lent; it prints one JSON report with the device
name and writes it next to this script. What it measures, on synthetic ATC clips:
  - eval RTFx at decode batch 64 for moonlora's decode path with each exact encoder
    (DecodeConfig.encoder "per-clip" and "batched"), and for the padded-batch `generate` peer:
    the Open ASR Leaderboard's Moonshine loop (processor pads a batch, `model.generate` with
    max_new_tokens = max over the batch of len * 6.5 // 16000 + 2, preprocessing outside the
    timer, fp16 on CUDA; Moonshine base measured RTFx 566 there on an A100). The peer gets
    length-sorted batches (its most favourable order); ours times its feature extraction too.
    The three run --repeats times interleaved after a warm-up; medians and min-max reported;
  - bf16 LoRA training samples/s (training steps only; `train(...).state.train_seconds`).

    uv run python benchmarks/gpu_check.py                 # on a CUDA machine
    uv run python benchmarks/gpu_check.py --cpu-smoke     # tiny and slow on CPU: checks the script runs

Without CUDA and without --cpu-smoke it says so and exits 0.
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

from moonlora.data.audio import AudioConfig, load_audio
from moonlora.configs import DecodeConfig, LoraSettings, TrainConfig
from moonlora.eval.decode import decode_clips
from moonlora.model.lora import attach_lora
from moonlora.data.manifest import load_manifest
from moonlora.eval.metrics import corpus_score, score_utterance
from moonlora.model.loading import load_model
from moonlora.data.synth.build import build_domain
from moonlora.train.loop import IntervalEval, TrainStream, train

sys.path.insert(0, str(Path(__file__).parent))
from machine import interleaved, median_spread, print_load  # noqa: E402

PEER = "peer: padded-batch generate (Open ASR Leaderboard loop)"


def settings(args) -> dict:
    """Sizes and precisions for a real GPU check or a tiny CPU smoke run."""
    if args.cpu_smoke:
        return {"device": "cpu", "clips": 30, "steps": 2, "batch_size": 2, "repeats": 1,
                "eval_dtype": "float32", "mixed_precision": "no"}
    return {"device": "cuda", "clips": 600, "steps": args.steps, "batch_size": args.batch_size,
            "repeats": args.repeats, "eval_dtype": "float16", "mixed_precision": "bf16"}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, run) -> dict:
    synchronize(device)
    started = time.perf_counter()
    texts = run()
    synchronize(device)
    return {"seconds": time.perf_counter() - started, "texts": texts}


def ours(loaded, waveforms, config: DecodeConfig) -> list[str]:
    clips, _ = decode_clips(loaded.decoder(), [len(w) / 16000 for w in waveforms], lambda i: waveforms[i], config)
    return [clip.text for clip in clips]


def leaderboard_batches(loaded, waveforms, batch_size: int, device: str, dtype: torch.dtype) -> list[tuple]:
    """The peer's inputs, prepared outside its timer as the leaderboard does: (inputs, max_new_tokens, order)."""
    order = sorted(range(len(waveforms)), key=lambda i: -len(waveforms[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        audios = [waveforms[i] for i in indices]
        inputs = loaded.feature_extractor(audios, sampling_rate=16000, return_tensors="pt", padding=True,
                                          return_attention_mask=True)
        inputs = {name: value.to(device) for name, value in inputs.items()}
        inputs["input_values"] = inputs["input_values"].to(dtype)
        max_new_tokens = int(max(len(a) * 6.5 // 16000 + 2 for a in audios))
        batches.append((inputs, max_new_tokens, indices))
    return batches


def leaderboard_generate(loaded, batches, clip_count: int) -> list[str]:
    texts = [""] * clip_count
    with torch.inference_mode():
        for inputs, max_new_tokens, indices in batches:
            ids = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens)
            for index, text in zip(indices, loaded.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                texts[index] = text.strip()
    return texts


def eval_check(utterances, plan: dict) -> dict:
    """RTFx at decode batch 64: ours with each exact encoder and the leaderboard peer, interleaved."""
    device, dtype_name = plan["device"], plan["eval_dtype"]
    loaded = load_model(device=device, dtype=dtype_name)
    dtype = next(loaded.model.parameters()).dtype
    waveforms = [load_audio(u.audio_filepath) for u in utterances]
    audio_seconds = sum(len(w) for w in waveforms) / 16000
    configs = {name: DecodeConfig(batch_size=64, device=device, dtype=dtype_name, encoder=name)
               for name in ("per-clip", "batched")}
    batches = leaderboard_batches(loaded, waveforms, 64, device, dtype)
    paths = {
        "ours, per-clip encoder": lambda: timed(device, lambda: ours(loaded, waveforms, configs["per-clip"])),
        "ours, batched exact encoder": lambda: timed(device, lambda: ours(loaded, waveforms, configs["batched"])),
        PEER: lambda: timed(device, lambda: leaderboard_generate(loaded, batches, len(waveforms))),
    }
    for path in paths.values():  # warm-up: kernels, allocator
        path()
    runs = interleaved(paths, plan["repeats"])
    results = {}
    for name, rows in runs.items():
        seconds = median_spread([row["seconds"] for row in rows])
        scores = [score_utterance(u.text, text) for u, text in zip(utterances, rows[0]["texts"])]
        results[name] = {"rtfx": audio_seconds / seconds["median"], "seconds": seconds,
                         "wer": corpus_score(scores).wer, "busy": any(row["busy"] for row in rows)}
    per_clip_texts = runs["ours, per-clip encoder"][0]["texts"]
    return {"clips": len(utterances), "audio_seconds": audio_seconds, "dtype": dtype_name, "decode_batch": 64,
            "batched_texts_equal_per_clip": runs["ours, batched exact encoder"][0]["texts"] == per_clip_texts,
            "results": results}


def train_check(train_clips, plan: dict, work: Path) -> dict:
    """LoRA training samples/s (bf16 autocast on the GPU), training steps only."""
    device = plan["device"]
    loaded = load_model(device=device)
    loaded.model = attach_lora(loaded.model, LoraSettings(), seed=0)
    config = TrainConfig(max_steps=plan["steps"], learning_rate=1e-3, batch_size=plan["batch_size"], grad_accum=1,
                         eval_interval=plan["steps"], mixed_precision=plan["mixed_precision"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    state = train(loaded, TrainStream(train_clips, [], config), config, AudioConfig(),
                  evaluate=lambda model, step: IntervalEval(0.0, None, {}), run_dir=work / "run", progress=False,
                  device=device).state
    report = {"steps": plan["steps"], "batch_size": plan["batch_size"], "precision": plan["mixed_precision"],
              "samples_per_second": plan["steps"] * plan["batch_size"] / state.train_seconds,
              "steps_per_second": plan["steps"] / state.train_seconds,
              "first_loss": state.losses[0]["loss"], "last_loss": state.losses[-1]["loss"]}
    if device.startswith("cuda"):
        report["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return report


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()})"


def print_summary(report: dict) -> None:
    """The lines to record in docs/benchmarks.md."""
    evaluation, training = report["eval"], report["train"]
    print(f"\n{report['device']}: {evaluation['clips']} clips, {evaluation['audio_seconds']:.0f} s of audio, "
          f"{evaluation['dtype']}, decode batch {evaluation['decode_batch']}")
    print("| path | RTFx (median) | seconds min-max | WER |\n| --- | --- | --- | --- |")
    for name, row in evaluation["results"].items():
        busy = " (BUSY)" if row["busy"] else ""
        print(f"| {name}{busy} | {row['rtfx']:.0f}x | {row['seconds']['min']:.2f}-{row['seconds']['max']:.2f} | "
              f"{row['wer']:.4f} |")
    print(f"batched exact texts equal per-clip: {evaluation['batched_texts_equal_per_clip']}")
    print(f"training ({training['precision']}, batch {training['batch_size']}, {training['steps']} steps): "
          f"{training['samples_per_second']:.1f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16, help="training clips per step")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved eval repeats; medians reported")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny run on the CPU: checks the script, no numbers to record")
    parser.add_argument("--out", default=None, help="JSON report (default: gpu_check.json next to this script)")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: gpu_check skipped (--cpu-smoke runs it small on the CPU)")
        return
    plan = settings(args)
    load_at_start = print_load("start")
    work = Path(tempfile.mkdtemp(prefix="moonlora-gpu-"))
    synth = build_domain("atc", n=plan["clips"], seed=0, out_dir=work / "atc", progress=False)
    report = {"device": device_name(plan["device"]), "cpu_smoke": args.cpu_smoke, "torch": torch.__version__,
              "load_at_start": load_at_start,
              "eval": eval_check(load_manifest(synth.test_manifest).utterances, plan),
              "train": train_check(load_manifest(synth.train_manifest).utterances, plan, work),
              "checked_at": time.strftime("%Y-%m-%d")}
    default_name = "gpu_check_cpu_smoke.json" if args.cpu_smoke else "gpu_check.json"
    Path(args.out or Path(__file__).with_name(default_name)).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print_summary(report)


if __name__ == "__main__":
    main()
