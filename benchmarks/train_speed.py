"""Training speed: moonlora's LoRA loop vs the Hugging Face Seq2SeqTrainer + PEFT recipe, one run.

Same model (bundled:base-en), same LoRA config (r 8, alpha 16, dropout 0.05 on
q/k/v/o/fc1/fc2), same batch size, learning rate and clips (synthetic ATC train voices), same
number of optimizer steps; no evaluation or checkpoint inside the timed part of either.

  peer   Seq2SeqTrainer over a Dataset of (input_values, labels), the feature extractor padding
         each batch (the recipe of the Hugging Face speech fine-tuning guides)
  ours   moonlora.train.train (per-clip exact encoding, data stream, Accelerate)

    uv run python benchmarks/train_speed.py [--steps 12] [--batch-size 8] [--threads 2] [--length-spread] [--repeats 2]

--length-spread joins 1-4 utterances per clip (about 3-25 s, like the experiment plan's
manifests, mean 7-13 s) instead of single utterances (3-8 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from moonlora.audio import AudioConfig, load_audio
from moonlora.configs import LoraSettings, TrainConfig
from moonlora.lora import attach_lora
from moonlora.manifest import load_manifest
from moonlora.model import load_model
from moonlora.synth.build import build_domain
from moonlora.train import IntervalEval, TrainStream, label_ids, train


def peer_trainer(clips, steps: int, batch_size: int, lr: float, seed: int, work: Path) -> float:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    loaded = load_model(device="cpu")
    model = attach_lora(loaded.model, LoraSettings(), seed)
    fe, tok = loaded.feature_extractor, loaded.tokenizer
    eos = model.config.eos_token_id
    rows = [{"audio": load_audio(u.audio_filepath), "text": u.text} for u in clips]

    def collate(batch):
        inputs = fe([b["audio"] for b in batch], sampling_rate=16000, return_tensors="pt", padding=True,
                    return_attention_mask=True)
        return {"input_values": inputs["input_values"], "attention_mask": inputs["attention_mask"],
                "labels": label_ids(tok, [b["text"] for b in batch], eos)}

    args = Seq2SeqTrainingArguments(
        output_dir=str(work / "peer"), per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=lr, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0,
        logging_steps=10_000, save_strategy="no", report_to=[], seed=seed, dataloader_num_workers=0,
        remove_unused_columns=False, use_cpu=True, disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def ours(clips, steps: int, batch_size: int, lr: float, seed: int, work: Path) -> float:
    loaded = load_model(device="cpu")
    loaded.model = attach_lora(loaded.model, LoraSettings(), seed)
    config = TrainConfig(max_steps=steps, learning_rate=lr, batch_size=batch_size, grad_accum=1,
                         eval_interval=steps, seed=seed, mixed_precision="no")
    state = train(loaded, TrainStream(clips, [], config), config, AudioConfig(),
                  evaluate=lambda model, step: IntervalEval(0.0, None, {}), run_dir=work / "ours", progress=False).state
    return state.train_seconds  # training steps only: no evaluation, no checkpoint save


def spread_lengths(clips, work: Path, seed: int = 0):
    """Clips of 1-4 joined utterances (0.3 s apart), written as new wavs with their manifest."""
    import random

    import numpy as np
    import soundfile as sf

    from moonlora.manifest import write_manifest

    rng, rows, start = random.Random(seed), [], 0
    (work / "spread").mkdir(parents=True, exist_ok=True)
    while start < len(clips):
        group = clips[start : start + rng.randint(1, 4)]
        start += len(group)
        gap = np.zeros(4800, dtype=np.float32)
        audio = np.concatenate([part for u in group for part in (load_audio(u.audio_filepath), gap)])
        path = work / "spread" / f"joined{len(rows):04d}.wav"
        sf.write(str(path), audio, 16000)
        rows.append({"audio_filepath": str(path), "text": " ".join(u.text for u in group)})
    return load_manifest(write_manifest(rows, work / "spread.jsonl")).utterances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length-spread", action="store_true", help="clips of 1-4 joined utterances")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per trainer; medians reported")
    parser.add_argument("--out", default=None, help="JSON results (default: next to this script)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="moonlora-train-bench-"))
    synth = build_domain("atc", n=120 if not args.length_spread else 300, seed=1, out_dir=work / "atc", progress=False)
    clips = load_manifest(synth.train_manifest).utterances
    if args.length_spread:
        clips = spread_lengths(clips, work)
    durations = sorted(u.duration for u in clips)
    out = args.out or str(Path(__file__).with_name("train_speed_spread.json" if args.length_spread else "train_speed.json"))
    samples = args.steps * args.batch_size
    trainers = {"peer: Seq2SeqTrainer + PEFT": peer_trainer, "ours: moonlora.train": ours}
    runs: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats):  # interleaved, so a slow spell of the machine hits both
        for name, trainer in trainers.items():
            runs[name].append(trainer(clips, args.steps, args.batch_size, args.learning_rate, 0, work / str(repeat)))
    timings = {name: statistics.median(seconds) for name, seconds in runs.items()}
    peer_seconds = timings["peer: Seq2SeqTrainer + PEFT"]
    table = {name: {"seconds": s, "all_seconds": runs[name], "samples_per_second": samples / s,
                    "speedup_vs_peer": peer_seconds / s} for name, s in timings.items()}
    report = {"steps": args.steps, "batch_size": args.batch_size, "clips": len(clips), "threads": args.threads,
              "clip_seconds_min_mean_max": [durations[0], sum(durations) / len(durations), durations[-1]],
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "results": table}
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.steps} steps x batch {args.batch_size}, {len(clips)} clips "
          f"({durations[0]:.1f}-{durations[-1]:.1f} s, mean {sum(durations) / len(durations):.1f} s), "
          f"{args.threads} threads, bundled:base-en\n")
    print("| trainer | median seconds (runs) | samples/s | speed vs peer |")
    print("| --- | --- | --- | --- |")
    for name, row in table.items():
        each = ", ".join(f"{x:.1f}" for x in row["all_seconds"])
        print(f"| {name} | {row['seconds']:.1f} ({each}) | {row['samples_per_second']:.2f} | {row['speedup_vs_peer']:.2f}x |")


if __name__ == "__main__":
    main()
