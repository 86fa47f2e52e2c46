"""Training speed: moonlora's LoRA loop vs the Hugging Face Seq2SeqTrainer + PEFT recipe.

Same model (bundled:base-en), same LoRA settings (r 8, alpha 16, dropout 0.05), same batch size,
learning rate and clips (synthetic ATC train voices), same number of optimizer steps; no
evaluation or checkpoint inside the timed part of any path.

  peer          Seq2SeqTrainer over a list of (input_values, text), the feature extractor padding
                each batch (the recipe of the Hugging Face speech fine-tuning guides)
  peer grouped  the same with train_sampling_strategy="group_by_length" (`group_by_length=True`
                before transformers 5): batches of similar lengths, HF's standard padding fix
  ours          moonlora.train.loop.train (per-clip exact encoding, stem cache, data stream, Accelerate;
                encoder gradient checkpointing as `auto` sets it: on for micro-batches over 60 s of audio)

All-stack paths adapt q/k/v/o/fc1/fc2 everywhere (`--target-modules all`, the default) and run
--steps steps (default: one epoch, every clip once; the clip list is trimmed to whole batches, so
both sides see the same clips). The peer is timed from its first step's start to its last step's
end, moonlora by its train_seconds: neither side's setup is timed. The decoder-only paths
(`--target-modules decoder`: ours with its encoder-output cache, and the better peer with the same
targets) run --decoder-steps steps (whole epochs), because the cache pays from a clip's second
draw; their rate over the steps after every clip was drawn once is reported as "steady state".
--bf16 adds bf16-autocast paths (ours `--mixed-precision bf16`, the grouped peer `bf16=True`).

Each path runs --repeats times, interleaved (a, b, c, a, b, c, ...), every run in a fresh Python
process (as a user's `moonlora experiment` is): medians and min-max are reported, with each run's
peak RSS (that process's VmHWM from just before the model loads to the end of training) and the
machine load (runs taken while it exceeded the core count are marked). A fresh process matters for
memory: run after run in one process, the heap left fragmented by an earlier path inflated a
later path's peak (4.9 GB in-process vs 3.7 GB fresh for the same checkpointed spread run).

    uv run python benchmarks/train_speed.py [--steps N] [--decoder-steps 30] [--repeats 3] [--length-spread] [--bf16]

--length-spread joins 1-4 utterances per clip (about 3-25 s, like the experiment plan's
manifests, mean 7-13 s) instead of single utterances (3-8 s).

--memory runs only ours, all-stack, with the encoder's gradient checkpointing off and on (forced
for every batch; `auto` checkpoints batches over 60 s of audio): peak RSS and the speed that
recomputing the encoder costs.
--longest N keeps the N longest clips only (with N = batch size every step is the worst batch).

    uv run python benchmarks/train_speed.py --memory --length-spread --steps 5
    uv run python benchmarks/train_speed.py --memory --length-spread --steps 3 --longest 8 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from moonlora.data.audio import AudioConfig, load_audio
from moonlora.configs import LoraSettings, TrainConfig
from moonlora.model.lora import attach_lora
from moonlora.data.manifest import load_manifest, write_manifest
from moonlora.model.loading import load_model
from moonlora.data.synth.build import build_domain
from moonlora.train.loop import IntervalEval, TrainStream, label_ids, train

sys.path.insert(0, str(Path(__file__).parent))
from machine import current_rss_mib, interleaved, median_spread, peak_rss_mib, print_load, release_memory, reset_peak_rss  # noqa: E402

ALL, DECODER = LoraSettings(), LoraSettings(target_modules=("decoder",))


def grouped_sampling() -> dict:
    """The group-by-length switch under this transformers version's name for it."""
    from transformers import Seq2SeqTrainingArguments

    names = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names else {"group_by_length": True}


def peer_trainer(clips, steps: int, batch_size: int, lr: float, seed: int, work: Path, lora: LoraSettings,
                 group_by_length: bool, bf16: bool = False) -> tuple[float, list[float]]:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    loaded = load_model(device="cpu")
    model = attach_lora(loaded.model, lora, seed)
    fe, tok = loaded.feature_extractor, loaded.tokenizer
    eos = model.config.eos_token_id
    # The length-grouped sampler reads each row's length as len(row[processing_class.model_input_names[0]]),
    # i.e. the audio samples of "input_values" (no length column needed for a plain list).
    rows = [{"input_values": load_audio(u.audio_filepath), "text": u.text} for u in clips]

    def collate(batch):
        inputs = fe([b["input_values"] for b in batch], sampling_rate=16000, return_tensors="pt", padding=True,
                    return_attention_mask=True)
        return {"input_values": inputs["input_values"], "attention_mask": inputs["attention_mask"],
                "labels": label_ids(tok, [b["text"] for b in batch], eos)}

    args = Seq2SeqTrainingArguments(
        output_dir=str(work / "peer"), per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=lr, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0,
        logging_steps=10_000, save_strategy="no", report_to=[], seed=seed, dataloader_num_workers=0,
        remove_unused_columns=False, use_cpu=True, disable_tqdm=True, bf16=bf16,
        **(grouped_sampling() if group_by_length else {}),
    )
    step_begins: list[float] = []
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step_begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=rows, data_collator=collate, processing_class=fe,
                             callbacks=[StepClock()])
    trainer.train()
    # From the first step's start to the last step's end: the trainer's setup is not timed, as
    # moonlora's train_seconds leave its own setup out.
    return step_ends[-1] - step_begins[0], step_ends


def ours(clips, steps: int, batch_size: int, lr: float, seed: int, work: Path, lora: LoraSettings,
         checkpointing: str = "auto", precision: str = "no") -> tuple[float, list[float]]:
    loaded = load_model(device="cpu")
    loaded.model = attach_lora(loaded.model, lora, seed)
    config = TrainConfig(max_steps=steps, learning_rate=lr, batch_size=batch_size, grad_accum=1,
                         eval_interval=steps, seed=seed, mixed_precision=precision, gradient_checkpointing=checkpointing)
    step_ends: list[float] = []

    def clock(name: str, value: float, step: int) -> None:  # called right after each update, before any eval
        if name == "train/loss":
            step_ends.append(time.perf_counter())

    state = train(loaded, TrainStream(clips, [], config), config, AudioConfig(),
                  evaluate=lambda model, step: IntervalEval(0.0, None, {}), run_dir=work / "ours", progress=False,
                  log=clock).state
    return state.train_seconds, step_ends  # training steps only: no evaluation, no checkpoint save


def steady_rate(step_ends: list[float], clips: int, batch_size: int) -> dict | None:
    """Samples/s over the steps after every clip had been drawn once (step k, 1-based, draws positions
    (k-1)*batch .. k*batch-1), i.e. once moonlora's caches hold every clip; None if the run ends first.
    A peer has no cache: its rate over those same steps is its flat per-step rate."""
    first = -(-clips // batch_size) + 1  # the first step wholly in the second pass over the clips
    if first < 2 or len(step_ends) < first:
        return None
    steps = len(step_ends) - first + 1
    return {"from_step": first, "steps": steps,
            "samples_per_second": steps * batch_size / (step_ends[-1] - step_ends[first - 2])}


def measured_path(run: Callable[[], tuple[float, list[float]]], samples: int, clips: int, batch_size: int) -> Callable[[], dict]:
    """A path that reports its seconds, samples/s (whole run and steady state) and peak RSS (MiB,
    reset just before it)."""

    def path() -> dict:
        release_memory()
        start_rss = current_rss_mib()
        reset_peak_rss()
        seconds, step_ends = run()
        return {"seconds": seconds, "samples_per_second": samples / seconds, "peak_rss_mib": peak_rss_mib(),
                "steady": steady_rate(step_ends, clips, batch_size),
                "start_rss_mib": start_rss}

    return path


CHILD_MARK = "TRAIN-SPEED-CHILD-RESULT "


def in_fresh_process(name: str, clips_manifest: Path) -> Callable[[], dict]:
    """The path `name` as a run of this script in a new process on the clips of `clips_manifest`."""

    def path() -> dict:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--clips-manifest", str(clips_manifest)]
        done = subprocess.run(command, capture_output=True, text=True)
        for line in done.stdout.splitlines():
            if line.startswith(CHILD_MARK):
                return json.loads(line[len(CHILD_MARK):])
        raise RuntimeError(f"{name}: the child run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")

    return path


def spread_lengths(clips, work: Path, seed: int = 0):
    """Clips of 1-4 joined utterances (0.3 s apart), written as new wavs with their manifest."""
    import random

    import numpy as np
    import soundfile as sf

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


def build_paths(clips, args, work: Path) -> dict[str, tuple[Callable[[], dict], str]]:
    """name -> (measured path, group); a group's paths run the same steps and are compared together."""
    common = (args.batch_size, args.learning_rate, 0)
    all_samples, decoder_samples = args.steps * args.batch_size, args.decoder_steps * args.batch_size
    counter = iter(range(10**6))

    def folder() -> Path:
        return work / f"run{next(counter)}"

    def measured(run, samples):
        return measured_path(run, samples, len(clips), args.batch_size)

    def peer(steps, lora, grouped, bf16=False):
        return lambda: peer_trainer(clips, steps, *common, folder(), lora, grouped, bf16)

    def our(steps, lora, checkpointing="auto", precision="no"):
        return lambda: ours(clips, steps, *common, folder(), lora, checkpointing, precision)

    if args.memory:
        return {f"ours: moonlora.train.loop, gradient checkpointing {setting}": (
            measured(our(args.steps, ALL, setting), all_samples), "all") for setting in ("off", "on")}
    paths = {
        "peer: Seq2SeqTrainer + PEFT": (measured(peer(args.steps, ALL, False), all_samples), "all"),
        "peer: Seq2SeqTrainer + PEFT, group_by_length": (measured(peer(args.steps, ALL, True), all_samples), "all"),
        "ours: moonlora.train.loop": (measured(our(args.steps, ALL), all_samples), "all"),
    }
    if args.bf16:  # bf16 autocast on both sides: the peer's `bf16=True`, ours `--mixed-precision bf16`
        paths["peer: Seq2SeqTrainer + PEFT, group_by_length, bf16"] = (
            measured(peer(args.steps, ALL, True, bf16=True), all_samples), "all")
        paths["ours: moonlora.train.loop --mixed-precision bf16"] = (
            measured(our(args.steps, ALL, precision="bf16"), all_samples), "all")
    if args.decoder_steps > 0:
        paths["peer: Seq2SeqTrainer + PEFT, group_by_length, decoder targets"] = (
            measured(peer(args.decoder_steps, DECODER, True), decoder_samples), "decoder")
        paths["ours: moonlora.train.loop --target-modules decoder"] = (
            measured(our(args.decoder_steps, DECODER), decoder_samples), "decoder")
    return paths


def summarize(runs: dict[str, list[dict]], groups: dict[str, str]) -> dict:
    """Medians and spreads per path, each path's speed against the best all-stack peer and against
    the best peer of its own group (same targets, same steps)."""
    table = {}
    for name, rows in runs.items():
        table[name] = {"group": groups[name],
                       "seconds": median_spread([r["seconds"] for r in rows]),
                       "samples_per_second": median_spread([r["samples_per_second"] for r in rows]),
                       "peak_rss_mib": median_spread([r["peak_rss_mib"] for r in rows]),
                       "start_rss_mib": [r["start_rss_mib"] for r in rows],
                       "load1": [r["load1"] for r in rows], "busy": any(r["busy"] for r in rows),
                       "steady": median_or_none([r["steady"] and r["steady"]["samples_per_second"] for r in rows]),
                       "steady_window": rows[0]["steady"] and {k: rows[0]["steady"][k] for k in ("from_step", "steps")}}

    def best_peer(group: str) -> float | None:
        return max((row["samples_per_second"]["median"] for name, row in table.items()
                    if name.startswith("peer") and row["group"] == group), default=None)

    for row in table.values():  # no ratio where no peer ran (--memory, --only)
        rate = row["samples_per_second"]["median"]
        row["speed_vs_best_all_stack_peer"] = rate / best_peer("all") if best_peer("all") else None
        row["speed_vs_best_peer_same_targets"] = rate / best_peer(row["group"]) if best_peer(row["group"]) else None
    # Steady state (epochs 2+, every clip cached) against the best all-stack peer's rate over its epoch,
    # and against the best same-targets peer over the same steps.
    for row in table.values():
        same = max((other["steady"]["median"] for name, other in table.items()
                    if name.startswith("peer") and other["group"] == row["group"] and other["steady"]), default=None)
        row["steady_vs_best_all_stack_peer"] = (row["steady"]["median"] / best_peer("all")
                                                if row["steady"] and best_peer("all") else None)
        row["steady_vs_best_peer_same_targets"] = row["steady"]["median"] / same if row["steady"] and same else None
    return table


def median_or_none(values: list[float | None]) -> dict | None:
    return median_spread(values) if values and all(v is not None for v in values) else None


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(table: dict) -> None:
    print("| trainer | steps group | median seconds (min-max) | samples/s | vs best all-stack peer | "
          "vs best peer, same targets | peak RSS MiB (min-max) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in table.items():
        seconds, rss = row["seconds"], row["peak_rss_mib"]
        busy = " (BUSY)" if row["busy"] else ""
        print(f"| {name}{busy} | {row['group']} | {seconds['median']:.1f} ({seconds['min']:.1f}-{seconds['max']:.1f}) | "
              f"{row['samples_per_second']['median']:.2f} | {ratio(row['speed_vs_best_all_stack_peer'])} | "
              f"{ratio(row['speed_vs_best_peer_same_targets'])} | {rss['median']:.0f} ({rss['min']:.0f}-{rss['max']:.0f}) |")
    if not any(row["steady"] for row in table.values()):
        return
    print("\n| trainer (steps after every clip was drawn once) | steps | samples/s (min-max) | "
          "vs best all-stack peer (its epoch) | vs best peer, same targets, same steps |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in table.items():
        steady, window = row["steady"], row["steady_window"]
        if not steady:
            continue
        print(f"| {name} | {window['from_step']}-{window['from_step'] + window['steps'] - 1} | "
              f"{steady['median']:.2f} ({steady['min']:.2f}-{steady['max']:.2f}) | "
              f"{ratio(row['steady_vs_best_all_stack_peer'])} | {ratio(row['steady_vs_best_peer_same_targets'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0,
                        help="optimizer steps of the all-stack paths (0: one epoch, every clip once)")
    parser.add_argument("--decoder-steps", type=int, default=30,
                        help="steps of the decoder-only paths, whole epochs best (0: skip them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length-spread", action="store_true", help="clips of 1-4 joined utterances")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per path; medians reported")
    parser.add_argument("--memory", action="store_true",
                        help="only ours, all-stack, encoder gradient checkpointing off and on")
    parser.add_argument("--bf16", action="store_true",
                        help="add bf16-autocast paths: ours (--mixed-precision bf16) and the peers (bf16=True)")
    parser.add_argument("--longest", type=int, default=0, help="keep only the N longest clips (0: all)")
    parser.add_argument("--only", nargs="*", default=None, help="run only paths whose name contains one of these")
    parser.add_argument("--out", default=None, help="JSON results (default: next to this script)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one path here, print its result
    parser.add_argument("--clips-manifest", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="moonlora-train-bench-"))
    if args.child:
        clips = load_manifest(args.clips_manifest).utterances
        args.steps = args.steps or len(clips) // args.batch_size
        run_one = build_paths(clips, args, work)[args.child][0]
        result = run_one()
        shutil.rmtree(work, ignore_errors=True)  # this run's folders; the clips belong to the parent
        print(CHILD_MARK + json.dumps(result), flush=True)
        return
    load_at_start = print_load("start")
    synth = build_domain("atc", n=120 if not args.length_spread else 300, seed=1, out_dir=work / "atc", progress=False)
    clips = load_manifest(synth.train_manifest).utterances
    if args.length_spread:
        clips = spread_lengths(clips, work)
    if args.longest:
        clips = sorted(clips, key=lambda u: u.duration, reverse=True)[: args.longest]
    clips = clips[: len(clips) // args.batch_size * args.batch_size]  # whole batches: an epoch is the same clips for all
    args.steps = args.steps or len(clips) // args.batch_size
    clips_manifest = write_manifest([u.to_dict() for u in clips],
                                    work / "clips.jsonl")
    durations = sorted(u.duration for u in clips)
    name = "train_speed" + ("_memory" if args.memory else "") + ("_spread" if args.length_spread else "")
    out = args.out or str(Path(__file__).with_name(name + (f"_longest{args.longest}" if args.longest else "") + ".json"))
    paths = build_paths(clips, args, work)
    if args.only:
        paths = {name: path for name, path in paths.items() if any(part in name for part in args.only)}
    paths = {name: (in_fresh_process(name, clips_manifest), group) for name, (_, group) in paths.items()}
    runs = interleaved({name: path for name, (path, _) in paths.items()}, args.repeats)
    table = summarize(runs, {name: group for name, (_, group) in paths.items()})
    shutil.rmtree(work, ignore_errors=True)  # the synthesized clips and the children's manifest
    load_at_end = print_load("end")
    report = {"memory_mode": args.memory, "bf16_paths": args.bf16, "longest": args.longest, "steps": args.steps, "decoder_steps": args.decoder_steps, "batch_size": args.batch_size,
              "repeats": args.repeats, "clips": len(clips), "threads": args.threads,
              "clip_seconds_min_mean_max": [durations[0], sum(durations) / len(durations), durations[-1]],
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "load_at_start": load_at_start, "load_at_end": load_at_end, "results": table}
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nall-stack paths {args.steps} steps, decoder-only paths {args.decoder_steps} steps, x batch "
          f"{args.batch_size}; {len(clips)} clips ({durations[0]:.1f}-{durations[-1]:.1f} s, mean "
          f"{sum(durations) / len(durations):.1f} s), {args.threads} threads, bundled:base-en, "
          f"{args.repeats} interleaved repeats\n")
    print_table(table)


if __name__ == "__main__":
    main()
