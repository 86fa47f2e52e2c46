"""Probes behind the "what changed" notes of docs/benchmarks.md's Moonshine Streaming section.

Not races against the official tool (benchmarks/streaming_train.py is): small in-process measurements
on the same random-init tiny-architecture model and synthetic ATC clips, so each step-time claim can
be checked again. Run one job at a time; compare settings by interleaving runs yourself.

    uv run python benchmarks/streaming_probes.py step --sites decoder --steps 39 [--group-by-length] \\
        [--lora-dropout 0.05] [--no-reuse-memory] [--trim-mib 128] [--attn eager] [--training-attention sdpa] [--no-banded] [--per-step] [--profile]
    uv run python benchmarks/streaming_probes.py fill     # encoder states: clip by clip vs sorted batches of 8
    uv run python benchmarks/streaming_probes.py head [--rounds 10]   # the output layer: one product vs blocks

step: `moonlora.train.loop.train` (no-op evaluator) with batch 8, rank 8, lr 1e-3; prints train seconds,
samples/s, the mean and median step of the first epoch (the encoder cache fills) and the median step
after it (steady state) with the process's minor page faults over those steady steps. --no-reuse-memory
skips `reuse_freed_memory` (glibc keeps its defaults); --trim-mib sets the trim threshold it gives glibc;
--training-attention sets the decoder attention of the training forward (the family's
`training_attention`, eager for streaming); --no-banded runs training's encoder layers with the model's
masked attention instead of `banded_attention`; --attn sets the model's own implementation (decoding).
--per-step also prints each step's seconds and minor page faults; --profile runs torch.profiler over the
steps after the first epoch and prints each operator's ms a step and the rate of the encoder-sized products.
fill: every training clip's encoder states without gradients, clip by clip (`clip_states`) and in
length-sorted groups of 8 (`states_from_stems_batched`), twice each, interleaved, ms per clip; then the
decoder-only cache fill part by part (three rounds) and the rate of one large fp32 matrix product.
head: the training forward's output layer, one product against `moonlora.train.output_layer`'s blocks.

--work DIR holds the model folder and clips (built on first use, as streaming_train.py builds them;
a few minutes of speech synthesis).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import streaming_train  # noqa: E402

BATCH, RANK = streaming_train.BATCH, streaming_train.RANK


def work_folder(work: Path) -> tuple[str, str]:
    """(model folder, train manifest), built once into `work`."""
    if not (work / "data.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        streaming_train.build_model_folder(work / "model")
        (work / "data.json").write_text(json.dumps(streaming_train.build_clips(work, 170, 104, 104)))
    return str(work / "model"), json.loads((work / "data.json").read_text())["train"]


def step_probe(args) -> None:
    from moonlora.configs import LoraSettings, TrainConfig
    from moonlora.data.audio import AudioConfig
    from moonlora.data.manifest import load_manifest
    from moonlora.model.loading import load_model
    from moonlora.model.lora import attach_lora
    from moonlora.train import loop

    model_dir, manifest = work_folder(Path(args.work))
    if args.no_reuse_memory:
        loop.reuse_freed_memory = lambda: False
    if args.trim_mib is not None:
        from moonlora.model import device
        device._TRIM_THRESHOLD = args.trim_mib * 2**20
    if args.training_attention:
        from dataclasses import replace

        from moonlora.model import families
        families.FAMILIES["moonshine_streaming"] = replace(families.FAMILIES["moonshine_streaming"],
                                                           training_attention=args.training_attention)
    if args.no_banded:
        from moonlora.model import streaming_encoder
        model_layers = streaming_encoder.layers
        streaming_encoder.layers = lambda encoder, hidden, frame_mask, banded=False: model_layers(encoder, hidden, frame_mask)
    clips = load_manifest(manifest).utterances
    loaded = load_model(model_dir, device="cpu")
    if args.attn:
        loaded.model.set_attn_implementation(args.attn)
    targets = (("decoder",) if args.sites == "decoder"
               else streaming_train.our_targets(loaded.model, "both"))
    loaded.model = attach_lora(loaded.model, LoraSettings(r=RANK, target_modules=targets, dropout=args.lora_dropout), 0)
    config = TrainConfig(max_steps=args.steps, learning_rate=1e-3, batch_size=BATCH, grad_accum=1,
                         eval_interval=args.steps, seed=0, mixed_precision="no", device="cpu",
                         group_by_length=args.group_by_length)
    ends: list[float] = []
    faults: list[int] = []  # minor page faults of the process so far, at each step's end

    first = -(-len(clips) // BATCH)  # steps of the first epoch
    profiler = torch.profiler.profile(record_shapes=True) if args.profile else None

    def step_ended(name, value, step) -> None:
        if name == "train/loss":
            ends.append(time.perf_counter())
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
            if profiler is not None and len(ends) == first:
                profiler.start()  # the steps after the first epoch: the encoder cache, if any, is full

    started = time.perf_counter()
    state = loop.train(loaded, loop.TrainStream(clips, [], config), config, AudioConfig(),
                       evaluate=lambda model, step: loop.IntervalEval(0.0, None, {}),
                       run_dir=Path(tempfile.mkdtemp(prefix="probe-run-")), progress=False, log=step_ended).state
    if profiler is not None:
        profiler.stop()
        print_profile(profiler, len(ends) - first)
    steps = np.diff([started] + ends)
    steady = (f"{np.median(steps[first:]):.3f} minor faults {faults[-1] - faults[first - 1]}" if len(steps) > first
              else "- (run ends in the first epoch)")
    if args.per_step:
        for number, (seconds, faulted) in enumerate(zip(steps, np.diff([0] + faults)), start=1):
            print(f"step {number} {seconds:.3f} s minor faults {faulted if number > 1 else '-'}")
    print(f"train_seconds {state.train_seconds:.2f} samples/s {state.samples / state.train_seconds:.2f} "
          f"epoch1 mean step {steps[:first].mean():.3f} median {np.median(steps[:first]):.3f} "
          f"steady median step {steady}")


def print_profile(profiler, steps: int) -> None:
    """`step --profile`: torch.profiler's ms a step per operator over the profiled steps (the 15 largest), and
    the matrix products with over 1,000 rows (the encoder-sized ones) apart, with their GFLOP/s."""
    if steps < 1:
        raise SystemExit("--profile needs --steps beyond the first epoch")
    events = profiler.key_averages(group_by_input_shape=True)
    totals: dict[str, float] = {}
    large_ms = large_flop = 0.0
    for event in events:
        totals[event.key] = totals.get(event.key, 0.0) + event.self_cpu_time_total / 1e3 / steps
        if event.key in ("aten::mm", "aten::addmm"):
            shapes = [shape for shape in event.input_shapes if shape]
            left, right = (shapes[1], shapes[2]) if event.key == "aten::addmm" else (shapes[0], shapes[1])
            if left[0] > 1000:
                large_ms += event.self_cpu_time_total / 1e3 / steps
                large_flop += 2 * left[0] * left[1] * right[1] * event.count / steps
    print(f"profile over {steps} steps after the first epoch (ms a step, self CPU):")
    for key, ms in sorted(totals.items(), key=lambda item: -item[1])[:15]:
        print(f"  {ms:8.1f}  {key}")
    if large_ms:
        print(f"  matrix products over 1,000 rows: {large_ms:.1f} ms a step, {large_flop / large_ms / 1e6:.0f} GFLOP/s")


def fill_probe(args) -> None:
    from moonlora.data.audio import AudioConfig, load_audio
    from moonlora.data.manifest import load_manifest
    from moonlora.model.encoder import encoder_path_of, to_model
    from moonlora.model.loading import load_model
    from moonlora.model.streaming_encoder import batch_pays, states_from_stems_batched
    from moonlora.train.loop import EncoderCache

    model_dir, manifest = work_folder(Path(args.work))
    loaded = load_model(model_dir, device="cpu")
    model = loaded.model.eval()
    encoder, path = model.get_encoder(), encoder_path_of(model)
    utterances = load_manifest(manifest).utterances
    inputs = [to_model(path.clip_inputs(encoder, loaded.feature_extractor, load_audio(u.audio_filepath, AudioConfig())),
                       torch.device("cpu"), torch.float32) for u in utterances]
    order = sorted(range(len(inputs)), key=lambda i: inputs[i]["input_values"].shape[1])
    groups = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]

    def clip_by_clip():
        return [path.clip_states(encoder, x) for x in inputs]

    def sorted_batches():
        for group in groups:
            stems = [path.stem(encoder, inputs[i]) for i in group]
            if not batch_pays(stems):
                raise SystemExit("a sorted group pads more than BATCHED_LAYERS_MAX_PADDING")
            states_from_stems_batched(encoder, stems)

    def sorted_batches_by_part():
        """The decoder-only cache fill of training, part by part: reading and framing the audio, the stems,
        the layers (banded, one padded pass), the cross-attention keys and values."""
        seconds = dict.fromkeys(("read", "frame", "stem", "layers", "cross K/V"), 0.0)
        cache = EncoderCache(2**31)

        def timed(part, work):
            started = time.perf_counter()
            result = work()
            seconds[part] += time.perf_counter() - started
            return result

        for group in groups:
            waves = timed("read", lambda: [load_audio(utterances[i].audio_filepath, AudioConfig()) for i in group])
            clip_inputs = timed("frame", lambda: [to_model(path.clip_inputs(encoder, loaded.feature_extractor, wave),
                                                           torch.device("cpu"), torch.float32) for wave in waves])
            stems = timed("stem", lambda: [path.stem(encoder, x) for x in clip_inputs])
            states = timed("layers", lambda: states_from_stems_batched(encoder, stems))
            timed("cross K/V", lambda: cache.batch_cross_kv(model.get_decoder(), path, [str(i) for i in group], states))
        print("fill by part: " + ", ".join(f"{part} {total / len(inputs) * 1000:.1f}" for part, total in seconds.items())
              + f" ms/clip (total {sum(seconds.values()) / len(inputs) * 1000:.1f})")

    def matmul_rate():
        """fp32 GFLOP/s of one large product on these threads, laid out as the model's linear layers run it
        (an (out, in) weight): the rate the fill's arithmetic is set against."""
        frames, weight = torch.randn(2128, 320), torch.randn(1280, 320)
        torch.nn.functional.linear(frames, weight)
        started = time.perf_counter()
        for _ in range(50):
            torch.nn.functional.linear(frames, weight)
        print(f"linear 2128x320 -> 1280: {2 * 2128 * 320 * 1280 * 50 / (time.perf_counter() - started) / 1e9:.0f} GFLOP/s")

    with torch.no_grad():
        clip_by_clip()  # warm-up
        for run in (sorted_batches, clip_by_clip) * 2:
            started = time.perf_counter()
            run()
            print(f"{run.__name__}: {(time.perf_counter() - started) / len(inputs) * 1000:.1f} ms/clip")
        for _ in range(3):
            sorted_batches_by_part()
        matmul_rate()


def head_probe(args) -> None:
    """The output layer's forward product as training computes it, (target positions, 320) by the streaming
    tiny architecture's (32768, 320) weight: one product (`torch.nn.functional.linear`) against
    `moonlora.train.output_layer`'s blocks of VOCABULARY_BLOCK rows, interleaved, under training's allocator
    settings; checks the two give the same bits and prints the median ms a call of each."""
    from moonlora.model.device import reuse_freed_memory
    from moonlora.train.output_layer import output_logits

    reuse_freed_memory()
    torch.manual_seed(0)
    layer = torch.nn.Linear(320, 32768, bias=False).requires_grad_(False)
    batches = [torch.randn(positions, 320) for positions in (105, 128, 146, 168, 180)]
    if not all(torch.equal(layer(hidden), output_logits(layer, hidden)) for hidden in batches):
        raise SystemExit("the blocked product differs from the plain one")
    seconds = {"one product": [], "blocked": []}
    ways = {"one product": lambda hidden: torch.nn.functional.linear(hidden, layer.weight),
            "blocked": lambda hidden: output_logits(layer, hidden)}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, way in ways.items():
                started = time.perf_counter()
                for hidden in batches:
                    way(hidden)
                seconds[name].append((time.perf_counter() - started) / len(batches))
    print("output layer forward, 105-180 positions: " + ", ".join(
        f"{name} {np.median(values) * 1000:.1f} ms" for name, values in seconds.items()) + " (median a call; same bits)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["step", "fill", "head"])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "moonlora-streaming-probes"))
    parser.add_argument("--sites", choices=["decoder", "both"], default="decoder")
    parser.add_argument("--steps", type=int, default=39)
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--no-reuse-memory", action="store_true")
    parser.add_argument("--trim-mib", type=int, default=None,
                        help="glibc's trim threshold under reuse_freed_memory (its default: 1024)")
    parser.add_argument("--attn", default=None, help="attention implementation for the whole model (eager, sdpa)")
    parser.add_argument("--training-attention", default=None, help="decoder attention in the training forward")
    parser.add_argument("--no-banded", action="store_true", help="training's encoder layers without banded attention")
    parser.add_argument("--per-step", action="store_true", help="step: each step's seconds and minor page faults")
    parser.add_argument("--profile", action="store_true",
                        help="step: torch.profiler over the steps after the first epoch, ms a step per operator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="head: interleaved rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"step": step_probe, "fill": fill_probe, "head": head_probe}[args.probe](args)


if __name__ == "__main__":
    main()
