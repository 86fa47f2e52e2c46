"""Moonshine Streaming: moonlora vs the official fine-tuner `moonshine_voice.lora` (moonshine-voice 0.1.5), in one run.

Same local model folder (a random-init Moonshine Streaming with the tiny architecture, saved with
the Moonshine tokenizer and a raw 16 kHz feature extractor), same clips (synthetic ATC speech,
~5 s), same rank (8), same targets, batch 8, CPU, same number of optimizer steps (whole epochs):

  (a) decoder LoRA   official `sites="decoder"` (self-attention q/k/v of every decoder layer, one
                     A shared by q/k/v of a layer) vs moonlora with `--target-modules` naming exactly
                     those 18 projections (separate A per projection, PEFT)
  (b) enc+dec LoRA   official `sites="both"` vs moonlora with the same q/k/v of the encoder's and
                     the decoder's self-attention (36 projections)
  (c) eval           moonlora's decoder (`decode_clips`, what `moonlora transcribe` runs: the
                     streaming encoder clip by clip, the decoder batched over length-sorted
                     batches) vs the official `transcribe(model, processor, waves, "cpu",
                     batch_size=16)` (length-sorted padded batches through `generate`); RTFx and
                     how many transcripts are identical

The official side is called through its Python API: `build_cache` (its int16 audio blob from a
JSONL manifest of {audio, text}) and `fit_adapter(..., replay_index=None, replay_ratio=0,
dev_hours=0, output_dir=None)`. No hub access: no replay, no dev slice (so its dev-loss
evaluations score nothing and cost nothing), no `--eval` (its WER normalizer downloads a file
from the hub; this script scores nothing with it). Its code is not patched: its module-level
`collate` is wrapped to read the clock at its first training batch, and a global optimizer-step
hook reads the clock after every update, so its time runs from the first step's start to the
last step's end. moonlora runs `moonlora.train.loop.train` with a no-op evaluator; its time is
`TrainState.train_seconds` (training steps only). Setup (model load, data load, the official
audio cache, LoRA attachment, optimizer creation) is excluded on both sides. moonlora's
decoder-only training encodes each clip once per run (the frozen encoder's output cache); that
fill happens inside its first epoch's steps and IS counted in its time. A second rate over the
steps after every clip was drawn once ("steady state", cache full) is reported as well.

Each training path runs --repeats times interleaved (a, b, c, d, a, b, ...), every run in a
fresh Python process; medians and min-max are reported with each run's peak RSS (VmHWM from just
before the model loads to the end of training) and the machine load before it. The eval child
loads the model once, warms both paths up untimed, then times them --repeats times interleaved.

    uv run --with pyarrow --with scipy python benchmarks/streaming_train.py [--repeats 3] [--clips 104] \
        [--decoder-epochs 8] [--both-epochs 8] [--eval-clips 104] [--eval-single] [--lora-dropout 0] [--random-batches]
    uv run --with pyarrow --with scipy python benchmarks/streaming_train.py --clips 16 --synth-n 30 \
        --repeats 1 --decoder-epochs 1 --both-epochs 1 --eval-clips 8          # smoke

Settings matched to the official tool's (defaults; the flags turn them back to moonlora's own): no LoRA
dropout (the official LoRA has none; moonlora's default is 0.05) and length-grouped batches (its
`make_batches` sorts clips by length; moonlora `--group-by-length`, which also lets the streaming
encoder train in exact padded batches). Epochs default to 8, the experiment plan's H2 regime.

(`--with pyarrow --with scipy`: the official package imports them, its `[finetune]` extra; moonlora's
lock does not pin them, and neither is used on this script's path.)

Writes benchmarks/streaming_train.json (or --out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import current_rss_mib, interleaved, machine_load, median_spread, peak_rss_mib, print_load, release_memory, reset_peak_rss  # noqa: E402

CHILD_MARK = "STREAMING-TRAIN-CHILD-RESULT "
RANK, BATCH = 8, 8
QKV = ("q_proj", "k_proj", "v_proj")


# ---------------------------------------------------------------------------------------------
# setup (parent): model folder, clips, manifests


def tiny_streaming_config():
    """The tiny Moonshine Streaming architecture (transformers' defaults; FACTS.md: pass num_key_value_heads)."""
    from transformers import MoonshineStreamingConfig

    return MoonshineStreamingConfig(num_key_value_heads=8, vocab_size=32768, pad_token_id=2, bos_token_id=1,
                                    eos_token_id=2, decoder_start_token_id=1)


def build_model_folder(folder: Path) -> int:
    """A random-init tiny-architecture Moonshine Streaming, the Moonshine tokenizer and a raw 16 kHz
    feature extractor, saved with save_pretrained (as tests/conftest.py's tiny_streaming_dir)."""
    import torch
    from transformers import MoonshineStreamingForConditionalGeneration

    from moonlora.model import bundled
    from moonlora.model.loading import bundled_feature_extractor
    from moonlora.model.tokenizer import build_hf_tokenizer

    torch.manual_seed(0)
    model = MoonshineStreamingForConditionalGeneration(tiny_streaming_config()).eval()
    model.save_pretrained(folder)
    build_hf_tokenizer(bundled.tokenizer_bin_path()).save_pretrained(folder)
    bundled_feature_extractor().save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def build_clips(work: Path, n: int, train_clips: int, eval_clips: int) -> dict:
    """Synthetic ATC speech (moonlora synth): train clips (whole batches) in moonlora's and the
    official manifest format, and eval clips (the held-out test voices first, then train clips)."""
    from moonlora.data.manifest import load_manifest, write_manifest
    from moonlora.data.synth.build import build_domain

    synth = build_domain("atc", n=n, seed=1, out_dir=work / "atc", progress=False)
    train = load_manifest(synth.train_manifest).utterances
    test = load_manifest(synth.test_manifest).utterances
    if len(train) < train_clips:
        raise SystemExit(f"only {len(train)} train clips synthesized, {train_clips} asked: raise --synth-n")
    train = train[: train_clips // BATCH * BATCH]
    evaluated = (test + train)[:eval_clips]
    ours = write_manifest([u.to_dict() for u in train], work / "train.jsonl")
    official = work / "train_official.jsonl"  # the official reader's {audio, text} (+ seconds)
    official.write_text("".join(json.dumps({"audio": str(u.audio_filepath), "text": u.text, "seconds": u.duration}) + "\n"
                                for u in train))
    eval_manifest = write_manifest([u.to_dict() for u in evaluated], work / "eval.jsonl")
    return {"train": str(ours), "train_official": str(official), "eval": str(eval_manifest),
            "train_seconds": [u.duration for u in train], "eval_seconds": [u.duration for u in evaluated]}


# ---------------------------------------------------------------------------------------------
# targets


def official_sites(model, sites: str) -> list[str]:
    """Module names (model-relative, e.g. `decoder.layers.0.self_attn.q_proj`) the official `sites` wraps."""
    stacks = {"decoder": ("decoder",), "encoder": ("encoder",), "both": ("decoder", "encoder")}[sites]
    return [f"{stack}.layers.{i}.self_attn.{role}" for stack in stacks
            for i in range(len(getattr(model.model, stack).layers)) for role in QKV]


def our_targets(model, sites: str) -> tuple[str, ...]:
    """moonlora `--target-modules` for the same projections: their full names (PEFT matches a list entry by
    name suffix, and `model.decoder.layers.0.self_attn.q_proj` names exactly one module)."""
    return tuple(f"model.{name}" for name in official_sites(model, sites))


def adapted_names(peft_model) -> list[str]:
    """Names (as in `official_sites`) of the modules that got a LoRA adapter."""
    names = []
    for name, module in peft_model.named_modules():
        if len(getattr(module, "lora_A", ())):
            found = re.search(r"(encoder|decoder)\.layers\..*", name)
            names.append(found.group(0) if found else name)
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# training children


def official_child(args, sites: str, steps: int) -> dict:
    import torch
    from transformers import AutoProcessor, MoonshineStreamingForConditionalGeneration

    from torch.optim.optimizer import register_optimizer_step_post_hook

    import moonshine_voice.lora.train as official
    from moonshine_voice.lora.data import build_cache, file_source, hours_of, open_blob
    from moonshine_voice.lora.manifest import load_manifest as official_manifest

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="official-cache-"))
    processor = AutoProcessor.from_pretrained(args.model_dir)
    rows = official_manifest(args.clips_manifest)
    index = build_cache("bench", work, hours_of(rows) + 1.0, lambda hours: file_source(rows, hours, "none"),
                        lambda text: official.encode_text(processor, text))
    if index["count"] != len(rows):
        raise RuntimeError(f"official cache holds {index['count']} of {len(rows)} clips")
    blob = open_blob(work, "bench", index)
    release_memory()
    start_rss = current_rss_mib()
    reset_peak_rss()
    model = MoonshineStreamingForConditionalGeneration.from_pretrained(args.model_dir).to("cpu")

    first_batch: list[float] = []
    step_ends: list[float] = []
    original_collate = official.collate

    def clocked_collate(*a, **k):  # fit_adapter looks `collate` up in its module at each call
        if not first_batch:
            first_batch.append(time.perf_counter())
        return original_collate(*a, **k)

    official.collate = clocked_collate
    hook = register_optimizer_step_post_hook(
        lambda optimizer, a, k: step_ends.append(time.perf_counter()))
    called = time.perf_counter()
    model = official.fit_adapter(
        args.model_dir, processor, index, blob, replay_index=None, replay_audio=None, train_hours=None,
        dev_hours=0.0, replay_ratio=0.0, rank=RANK, alpha=None, lr=official.default_lr("lora", sites),
        batch_size=BATCH, max_steps=steps, eval_every=10**9, patience=10**9, seed=0, device="cpu",
        model=model, output_dir=None, sites=sites, adapt="lora")
    returned = time.perf_counter()
    hook.remove()
    official.collate = original_collate
    peak = peak_rss_mib()
    shutil.rmtree(work, ignore_errors=True)
    if len(step_ends) != steps:
        raise RuntimeError(f"official ran {len(step_ends)} optimizer steps, {steps} asked")
    seconds = step_ends[-1] - first_batch[0]
    samples = steps * BATCH  # every batch is full: the clips are whole batches
    probe = MoonshineStreamingForConditionalGeneration(tiny_streaming_config())
    from moonshine_voice.lora.adapter import adapter_parameters, add_lora

    trainable = sum(p.numel() for p in adapter_parameters(add_lora(probe, rank=RANK, sites=sites)))
    return {"seconds": seconds, "samples": samples, "samples_per_second": samples / seconds,
            "fit_adapter_call_seconds": returned - called, "step_ends": [t - first_batch[0] for t in step_ends],
            "peak_rss_mib": peak, "start_rss_mib": start_rss, "trainable_parameters": trainable,
            "adapted": sorted(official_sites(probe, sites))}


def ours_child(args, sites: str, steps: int) -> dict:
    import torch

    from moonlora.configs import LoraSettings, TrainConfig
    from moonlora.data.audio import AudioConfig
    from moonlora.data.manifest import load_manifest
    from moonlora.model.loading import load_model
    from moonlora.model.lora import attach_lora
    from moonlora.train.loop import IntervalEval, TrainStream, train

    import moonshine_voice.lora.train as official  # only for its default learning rate per sites

    torch.set_num_threads(args.threads)
    clips = load_manifest(args.clips_manifest).utterances
    release_memory()
    start_rss = current_rss_mib()
    reset_peak_rss()
    loaded = load_model(args.model_dir, device="cpu")
    targets = our_targets(loaded.model, sites)
    if sites == "decoder" and args.decoder_preset != "none":
        targets = (args.decoder_preset,)  # the family's preset; `adapted` below is checked against the official sites
    loaded.model = attach_lora(loaded.model, LoraSettings(r=RANK, target_modules=targets, dropout=args.lora_dropout), 0)
    adapted = adapted_names(loaded.model)
    trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    config = TrainConfig(max_steps=steps, learning_rate=official.default_lr("lora", sites), batch_size=BATCH,
                         grad_accum=1, eval_interval=steps, seed=0, mixed_precision="no", device="cpu",
                         group_by_length=not args.random_batches)
    step_ends: list[float] = []

    def clock(name: str, value: float, step: int) -> None:  # right after each update, before any eval
        if name == "train/loss":
            step_ends.append(time.perf_counter())

    run_dir = Path(tempfile.mkdtemp(prefix="ours-run-"))
    started = time.perf_counter()
    state = train(loaded, TrainStream(clips, [], config), config, AudioConfig(),
                  evaluate=lambda model, step: IntervalEval(0.0, None, {}), run_dir=run_dir, progress=False,
                  log=clock).state
    peak = peak_rss_mib()
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"seconds": state.train_seconds, "samples": state.samples,
            "samples_per_second": state.samples / state.train_seconds,
            "step_ends": [t - started for t in step_ends], "peak_rss_mib": peak, "start_rss_mib": start_rss,
            "trainable_parameters": trainable, "adapted": adapted, "targets": list(targets),
            "eval_seconds": state.eval_seconds, "checkpoint_seconds": state.checkpoint_seconds}


# ---------------------------------------------------------------------------------------------
# eval child


def eval_child(args) -> dict:
    import torch

    from moonlora.configs import DecodeConfig
    from moonlora.data.audio import load_audio
    from moonlora.data.manifest import load_manifest
    from moonlora.eval.decode import decode_clips
    from moonlora.model.loading import load_model
    from transformers import AutoProcessor

    import moonshine_voice.lora.train as official

    torch.set_num_threads(args.threads)
    utterances = load_manifest(args.clips_manifest).utterances
    waves = [load_audio(u.audio_filepath) for u in utterances]  # loaded once, outside every timer
    durations = [len(w) / 16000 for w in waves]
    loaded = load_model(args.model_dir, device="cpu")
    model = loaded.model.eval()  # both paths decode with this one model object: the same weights
    processor = AutoProcessor.from_pretrained(args.model_dir)
    # One cap for every clip on both sides. moonlora's cap C = ceil(tokens_per_second * s) + extra_tokens
    # counts the forced EOS: C - 1 text tokens, then EOS. The official `max_new_tokens` counts text
    # tokens only (a random-init model never emits EOS by itself), so it gets C - 1: the same text
    # tokens, moonlora one more (EOS) decoder step per clip.
    cap = args.eval_cap
    ours_config = DecodeConfig(device="cpu", tokens_per_second=1e-9, extra_tokens=cap - 1)
    assert all(ours_config.token_cap(d) == cap for d in durations)

    def ours():
        clips, _ = decode_clips(loaded.decoder(), durations, lambda i: waves[i], ours_config)
        return [clip.text for clip in clips]

    def theirs(batch_size=16):
        return [t.strip() for t in official.transcribe(model, processor, waves, "cpu", batch_size=batch_size,
                                                        max_new_tokens=cap - 1)]

    def timed(run):
        started = time.perf_counter()
        texts = run()
        return {"seconds": time.perf_counter() - started, "texts": texts}

    ours_config_label = f"moonlora decode_clips (per-clip streaming encoder, batch {ours_config.batch_size})"
    official_label = "official transcribe (padded batch 16)"
    # warm-ups, untimed
    decode_clips(loaded.decoder(), durations[:4], lambda i: waves[i], ours_config)
    official.transcribe(model, processor, waves[:4], "cpu", batch_size=16, max_new_tokens=cap - 1)
    runs = interleaved({ours_config_label: lambda: timed(ours), official_label: lambda: timed(theirs)}, args.repeats)
    audio_seconds = sum(durations)
    ours_texts, official_texts = runs[ours_config_label][0]["texts"], runs[official_label][0]["texts"]
    # The official code at batch size 1 (each clip alone, no padding): untimed, to tell whether a
    # difference comes from padding or from the two decoders.
    single = theirs(batch_size=1) if args.eval_single else None
    result = {"audio_seconds": audio_seconds, "clips": len(waves), "cap_tokens": cap, "paths": {}}
    for name, rows in runs.items():
        seconds = median_spread([r["seconds"] for r in rows])
        result["paths"][name] = {"seconds": seconds, "rtfx": audio_seconds / seconds["median"],
                                 "same_texts_every_repeat": all(r["texts"] == rows[0]["texts"] for r in rows),
                                 "load1": [r["load1"] for r in rows], "busy": any(r["busy"] for r in rows)}
    result["identical_texts"] = sum(a == b for a, b in zip(ours_texts, official_texts))
    if single is not None:
        result["identical_ours_vs_official_batch1"] = sum(a == b for a, b in zip(ours_texts, single))
        result["identical_official_batch16_vs_batch1"] = sum(a == b for a, b in zip(official_texts, single))
    differing = [i for i, (a, b) in enumerate(zip(ours_texts, official_texts)) if a != b]
    result["differing_examples"] = [{"clip": i, "seconds": durations[i], "samples_mod_80": len(waves[i]) % 80,
                                     "ours": ours_texts[i][:120], "official": official_texts[i][:120]}
                                    for i in differing[:3]]
    result["differing_samples_mod_80"] = [len(waves[i]) % 80 for i in differing]
    return result


# ---------------------------------------------------------------------------------------------
# parent


def in_fresh_process(args, kind: str, sites: str, steps: int, manifest: str) -> callable:
    def path() -> dict:
        command = [sys.executable, __file__, "--child", kind, "--sites", sites, "--steps", str(steps),
                   "--clips-manifest", manifest, "--model-dir", args.model_dir, "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--eval-cap", str(args.eval_cap)]
        command += ["--decoder-preset", args.decoder_preset, "--lora-dropout", str(args.lora_dropout)]
        if args.random_batches:
            command += ["--random-batches"]
        if args.eval_single:
            command += ["--eval-single"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        for line in done.stdout.splitlines():
            if line.startswith(CHILD_MARK):
                result = json.loads(line[len(CHILD_MARK):])
                print(f"  {kind} {sites}: done in {time.perf_counter() - started:.0f} s (process wall)"
                      + (f", {result['samples_per_second']:.2f} samples/s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                         f"load now {machine_load()['load1']:.2f}" if "samples_per_second" in result else ""),
                      flush=True)
                return result
        raise RuntimeError(f"{kind} {sites}: the child run failed (exit {done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")

    return path


def steady_rate(step_ends: list[float], clips: int) -> dict | None:
    """Samples/s over the steps after every clip was drawn once (moonlora's cache full); None if none."""
    first = math.ceil(clips / BATCH) + 1  # first step wholly in the second epoch
    if len(step_ends) < first:
        return None
    steps = len(step_ends) - first + 1
    return {"from_step": first, "steps": steps,
            "samples_per_second": steps * BATCH / (step_ends[-1] - step_ends[first - 2])}


def summarize(runs: dict[str, list[dict]], clips: int) -> dict:
    table = {}
    for name, rows in runs.items():
        steady = [steady_rate(r["step_ends"], clips) for r in rows]
        table[name] = {
            "seconds": median_spread([r["seconds"] for r in rows]),
            "samples": rows[0]["samples"],
            "samples_per_second": median_spread([r["samples_per_second"] for r in rows]),
            "steady_samples_per_second": (median_spread([s["samples_per_second"] for s in steady])
                                          if all(steady) else None),
            "steady_window": steady[0] and {k: steady[0][k] for k in ("from_step", "steps")},
            "peak_rss_mib": median_spread([r["peak_rss_mib"] for r in rows]),
            "start_rss_mib": [r["start_rss_mib"] for r in rows],
            "trainable_parameters": rows[0]["trainable_parameters"], "adapted": rows[0]["adapted"],
            "load1": [r["load1"] for r in rows], "busy": any(r["busy"] for r in rows),
            "step_ends": [r["step_ends"] for r in rows],  # seconds from the first step's start, per run
            "extra": {k: [r[k] for r in rows] for k in ("fit_adapter_call_seconds", "eval_seconds", "checkpoint_seconds",
                                                        "targets") if k in rows[0]},
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved fresh-process runs per path")
    parser.add_argument("--clips", type=int, default=104, help="training clips (trimmed to whole batches of 8)")
    parser.add_argument("--synth-n", type=int, default=170, help="utterances synthesized (2/3 train voices)")
    parser.add_argument("--decoder-epochs", type=int, default=8,
                        help="epochs of the decoder-LoRA paths (8: the experiment plan's H2 regime, ~2000 steps over "
                             "1000 clips)")
    parser.add_argument("--both-epochs", type=int, default=8, help="epochs of the encoder+decoder paths (0: skip)")
    parser.add_argument("--eval-clips", type=int, default=104, help="clips of the eval comparison (0: skip)")
    parser.add_argument("--eval-cap", type=int, default=35,
                        help="token cap of every eval clip, both sides (35 = moonlora's cap for a 5 s clip)")
    parser.add_argument("--eval-single", action="store_true",
                        help="also decode with the official code at batch 1 (untimed) to explain text differences")
    parser.add_argument("--decoder-preset", default="decoder",
                        help="moonlora --target-modules of the decoder paths: the streaming family's preset (default "
                             "`decoder`: self_attn q/k/v of the decoder layers), or none: the 18 module names")
    parser.add_argument("--lora-dropout", type=float, default=0.0,
                        help="moonlora's LoRA dropout (default 0: the official tool's LoRA has none; moonlora's own "
                             "default is 0.05)")
    parser.add_argument("--random-batches", action="store_true",
                        help="moonlora draws random batches (its default) instead of `--group-by-length` batches "
                             "(the official tool's make_batches sorts clips by length)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run only paths whose name contains one of these")
    parser.add_argument("--out", default=None, help="JSON results (default: next to this script)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sites", default="decoder", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--clips-manifest", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    missing = [name for name in ("pyarrow", "scipy") if importlib.util.find_spec(name) is None]
    if missing:  # moonshine_voice.lora imports them (its [finetune] extra); the lock does not pin them
        raise SystemExit(f"moonshine_voice.lora needs {', '.join(missing)}: run this script as "
                         "`uv run --with pyarrow --with scipy python benchmarks/streaming_train.py`")
    if args.child:
        run = {"official": lambda: official_child(args, args.sites, args.steps),
               "ours": lambda: ours_child(args, args.sites, args.steps), "eval": lambda: eval_child(args)}[args.child]
        print(CHILD_MARK + json.dumps(run()), flush=True)
        return

    load_at_start = print_load("start")
    work = Path(tempfile.mkdtemp(prefix="moonlora-streaming-bench-"))
    args.model_dir = str(work / "model")
    parameters = build_model_folder(Path(args.model_dir))
    data = build_clips(work, args.synth_n, args.clips, args.eval_clips)
    clips = len(data["train_seconds"])
    steps = {"decoder": args.decoder_epochs * clips // BATCH, "both": args.both_epochs * clips // BATCH}
    paths = {}
    for sites in ("decoder", "both"):
        if steps[sites] == 0:
            continue
        paths[f"official {sites}"] = in_fresh_process(args, "official", sites, steps[sites], data["train_official"])
        paths[f"ours {sites}"] = in_fresh_process(args, "ours", sites, steps[sites], data["train"])
    if args.only:
        paths = {name: path for name, path in paths.items() if any(part in name for part in args.only)}
    runs = interleaved(paths, args.repeats)
    table = summarize(runs, clips)
    for sites in ("decoder", "both"):
        ours_row, official_row = table.get(f"ours {sites}"), table.get(f"official {sites}")
        if ours_row and official_row:
            ours_row["ratio_vs_official"] = (ours_row["samples_per_second"]["median"]
                                             / official_row["samples_per_second"]["median"])
            if ours_row["steady_samples_per_second"] and official_row["steady_samples_per_second"]:
                ours_row["steady_ratio_vs_official"] = (ours_row["steady_samples_per_second"]["median"]
                                                        / official_row["steady_samples_per_second"]["median"])
            ours_row["same_adapted_modules"] = ours_row["adapted"] == official_row["adapted"]
    evaluation = None
    if args.eval_clips and (not args.only or any("eval" in part for part in args.only)):
        load = print_load("eval")
        evaluation = in_fresh_process(args, "eval", "-", 0, data["eval"])()
        evaluation["load_before"] = load
        names = list(evaluation["paths"])
        evaluation["rtfx_ratio"] = evaluation["paths"][names[0]]["rtfx"] / evaluation["paths"][names[1]]["rtfx"]
    load_at_end = print_load("end")
    shutil.rmtree(work, ignore_errors=True)
    import torch
    import transformers

    seconds = data["train_seconds"]
    report = {"clips": clips, "clip_seconds_min_mean_max": [min(seconds), sum(seconds) / len(seconds), max(seconds)],
              "steps": steps, "batch_size": BATCH, "rank": RANK, "repeats": args.repeats, "threads": args.threads,
              "ours_lora_dropout": args.lora_dropout, "ours_group_by_length": not args.random_batches,
              "model": "random-init MoonshineStreaming, tiny architecture", "parameters": parameters,
              "cpu": cpu_model(), "cores": load_at_start["cores"], "torch": torch.__version__,
              "transformers": transformers.__version__, "moonshine_voice": package_version("moonshine-voice"),
              "load_at_start": load_at_start, "load_at_end": load_at_end, "training": table, "eval": evaluation}
    out = Path(args.out or Path(__file__).with_name("streaming_train.json"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)


def cpu_model() -> str:
    """The CPU's model name, family and model numbers, and its widest vector extension (two machines named
    "AMD EPYC" here differed by AVX-512 and by a third in speed)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        flags = fields.get("flags", "").split()
        vector = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
        return f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector})"
    except (OSError, KeyError, ValueError):
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def print_tables(report: dict) -> None:
    print(f"\n{report['clips']} clips, steps {report['steps']}, batch {report['batch_size']}, rank {report['rank']}, "
          f"{report['threads']} threads, {report['repeats']} interleaved fresh-process repeats, {report['cpu']}\n")
    print("| path | steps | median s (min-max) | samples/s (min-max) | steady samples/s | ratio | steady ratio | "
          "peak RSS MiB (min-max) | trainable | load1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in report["training"].items():
        s, r, m = row["seconds"], row["samples_per_second"], row["peak_rss_mib"]
        steady = row["steady_samples_per_second"]
        steady_text = f"{steady['median']:.2f}" if steady else "-"
        ratio = f"{row['ratio_vs_official']:.2f}x" if "ratio_vs_official" in row else ""
        steady_ratio = f"{row['steady_ratio_vs_official']:.2f}x" if "steady_ratio_vs_official" in row else ""
        print(f"| {name}{' (BUSY)' if row['busy'] else ''} | {row['samples'] // report['batch_size']} | "
              f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
              f"{steady_text} | {ratio} | {steady_ratio} | {m['median']:.0f} ({m['min']:.0f}-{m['max']:.0f}) | "
              f"{row['trainable_parameters']} | {', '.join(f'{x:.2f}' for x in row['load1'])} |")
    evaluation = report["eval"]
    if evaluation:
        print(f"\neval: {evaluation['clips']} clips, {evaluation['audio_seconds']:.0f} s audio, cap {evaluation['cap_tokens']} tokens")
        for name, row in evaluation["paths"].items():
            s = row["seconds"]
            print(f"  {name}: {s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f}), RTFx {row['rtfx']:.1f}")
        print(f"  ratio {evaluation['rtfx_ratio']:.2f}x, identical texts {evaluation['identical_texts']}/{evaluation['clips']}"
              + (f", ours vs official batch 1: {evaluation['identical_ours_vs_official_batch1']}"
                 if "identical_ours_vs_official_batch1" in evaluation else ""))


if __name__ == "__main__":
    main()
