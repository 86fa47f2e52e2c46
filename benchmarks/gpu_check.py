"""GPU check: bf16 LoRA training steps/s and eval RTFx at decode batch 64, with the device name.

For a CUDA machine; on a CPU-only machine it says so and exits 0. Run whenever a GPU is at hand
and record the printed table in docs/benchmarks.md.

    uv run python benchmarks/gpu_check.py [--steps 30] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from moonlora.audio import AudioConfig
from moonlora.configs import DecodeConfig, LoraSettings, TrainConfig
from moonlora.evaluate import evaluate_manifest
from moonlora.lora import attach_lora
from moonlora.manifest import load_manifest
from moonlora.model import load_model
from moonlora.synth.build import build_domain
from moonlora.train import IntervalEval, TrainStream, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).with_name("gpu_check.json")))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: gpu_check skipped")
        return
    device = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="moonlora-gpu-"))
    synth = build_domain("atc", n=300, seed=0, out_dir=work / "atc", progress=False)
    train_clips = load_manifest(synth.train_manifest).utterances
    test = load_manifest(synth.test_manifest)

    loaded = load_model(device="cuda")
    decode = DecodeConfig(batch_size=64, device="cuda")
    evaluate_manifest(loaded, test, AudioConfig(), decode, progress=False)  # warm-up (CUDA kernels)
    result = evaluate_manifest(loaded, test, AudioConfig(), decode, progress=False)
    eval_rtfx = result.audio_seconds / result.decode_seconds

    loaded.model = attach_lora(loaded.model, LoraSettings(), seed=0)
    config = TrainConfig(max_steps=args.steps, learning_rate=1e-3, batch_size=args.batch_size, grad_accum=1,
                         eval_interval=args.steps, mixed_precision="bf16")
    torch.cuda.synchronize()
    state = train(loaded, TrainStream(train_clips, [], config), config, AudioConfig(),
                  evaluate=lambda model, step: IntervalEval(0.0, None, {}), run_dir=work / "run", progress=False).state
    train_seconds = state.train_seconds  # training steps only
    report = {
        "device": device, "torch": torch.__version__, "eval_clips": len(test.utterances),
        "eval_audio_seconds": result.audio_seconds, "eval_wer": result.corpus.wer, "eval_rtfx_batch64": eval_rtfx,
        "train_steps": args.steps, "train_batch_size": args.batch_size,
        "train_steps_per_second_bf16": args.steps / train_seconds,
        "train_samples_per_second_bf16": args.steps * args.batch_size / train_seconds,
        "first_loss": state.losses[0]["loss"], "last_loss": state.losses[-1]["loss"],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "checked_at": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
