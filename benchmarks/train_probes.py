"""One-off probes behind the "tried and not kept" notes of docs/benchmarks.md (training speed).

Not races against a peer: small measurements that explain where a training step's time goes, so
the ideas they rule in or out can be checked again. Each probe prints its numbers; run one job at
a time (2 threads by default).

    uv run python benchmarks/train_probes.py kernels   # bf16 vs fp32 matmul, LoRA dropout masks, a cross-attention K/V projection
    uv run python benchmarks/train_probes.py encoder   # one all-stack step: per-clip vs masked padded vs packed encoding
    uv run python benchmarks/train_probes.py decoder   # one decoder-only step (encoder outputs cached): time and profile
    uv run python benchmarks/train_probes.py audio     # reading a training clip from disk

encoder: base + all-stack LoRA, 4 batches of 8 synthetic ATC clips (random, then length-sorted),
stems cached as moonlora.train.loop does; each step is forward + backward of the teacher-forced loss;
3 interleaved rounds, medians. "packed" concatenates the clips' stems into one unpadded sequence
(per-clip rotary positions), runs the linear layers once and attention clip by clip through an
attention function registered with transformers' AttentionInterface.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from moonlora.data.audio import load_audio
from moonlora.configs import LoraSettings
from moonlora.model.encoder import MOONSHINE_PATH, encoder_layers, masked_encoder_layers, pad_states
from moonlora.model.lora import attach_lora
from moonlora.data.manifest import load_manifest
from moonlora.model.loading import load_model
from moonlora.data.synth.build import build_domain
from moonlora.train.loop import StemCache, clip_inputs, label_ids

sys.path.insert(0, str(Path(__file__).parent))
from machine import print_load  # noqa: E402


def milliseconds(run, repeats: int = 30) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return 1000 * (time.perf_counter() - started) / repeats


def kernels() -> None:
    """Matmul precision, dropout-mask cost and the K/V projection on decoder-only shapes."""
    states = torch.randn(8, 228, 416)  # 8 clips x ~5.5 s of encoder frames x hidden
    for dtype in (torch.float32, torch.bfloat16):
        a, w = torch.randn(2000, 416, dtype=dtype), torch.randn(1664, 416, dtype=dtype)
        print(f"linear 2000x416 @ 416x1664, {dtype}: {milliseconds(lambda: torch.nn.functional.linear(a, w)):.2f} ms")
    print(f"nn.functional.dropout(p=0.05) on 8x228x416: {milliseconds(lambda: torch.nn.functional.dropout(states, 0.05, True)):.2f} ms")

    def rand_mask_dropout(x, p=0.05):
        mask = torch.rand_like(x)
        mask.ge_(p).mul_(1 / (1 - p))
        return mask.mul_(x)

    print(f"rand_like mask, in place, on 8x228x416: {milliseconds(lambda: rand_mask_dropout(states)):.2f} ms")
    weight = torch.randn(416, 416)
    print(f"one cross-attention K or V projection of 8x228x416: {milliseconds(lambda: torch.nn.functional.linear(states, weight)):.2f} ms"
          " (x 16 per decoder step: k and v in 8 layers)")


def packed_attention(module, query, key, value, attention_mask, segment_lengths=None, **kwargs):
    """SDPA clip by clip over a packed sequence when `segment_lengths` is given, else plain SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segment_lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, q, k, v, None, **kwargs)[0] for q, k, v in
               zip(query.split(segment_lengths, 2), key.split(segment_lengths, 2), value.split(segment_lengths, 2))]
    return torch.cat(outputs, dim=1), None


def packed_layers(encoder, stems: list[torch.Tensor]) -> list[torch.Tensor]:
    lengths = [stem.shape[1] for stem in stems]
    hidden = torch.cat(stems, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    position_embeddings = encoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None, position_ids=position_ids,
                       position_embeddings=position_embeddings, segment_lengths=lengths)
    return list(encoder.layer_norm(hidden)[0].split(lengths, 0))


def encoder_probe(work: Path) -> None:
    from transformers import AttentionInterface
    from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput

    AttentionInterface.register("moonlora_packed", packed_attention)
    synth = build_domain("atc", n=40, seed=1, out_dir=work / "atc", progress=False)
    clips = load_manifest(synth.train_manifest).utterances
    loaded = load_model(device="cpu")
    model = attach_lora(loaded.model, LoraSettings(), 0)
    for module in model.modules():  # the encoder and decoder share one config; unpacked calls fall through to SDPA
        if getattr(module, "config", None) is not None and hasattr(module.config, "_attn_implementation"):
            module.config._attn_implementation = "moonlora_packed"
    encoder, cache = model.get_encoder(), StemCache()
    parameter = next(model.parameters())

    def loss(batch, mode: str) -> torch.Tensor:
        inputs = clip_inputs(MOONSHINE_PATH, encoder, loaded.feature_extractor,
                             [load_audio(u.audio_filepath) for u in batch], parameter)
        stems = [cache.stem(encoder, MOONSHINE_PATH, str(u.audio_filepath), x)[0] for u, x in zip(batch, inputs)]
        if mode == "per-clip":
            states, mask = pad_states([encoder_layers(encoder, stem)[0] for stem in stems])
        elif mode == "padded":
            padded, mask = pad_states([stem[0] for stem in stems])
            states = masked_encoder_layers(encoder, padded, mask) * mask[:, :, None]
        else:
            states, mask = pad_states(packed_layers(encoder, stems))
        labels = label_ids(loaded.tokenizer, [u.text for u in batch], model.config.eos_token_id)
        encoded = MoonshineEncoderModelOutput(last_hidden_state=states, attention_mask=mask)
        return model(encoder_outputs=encoded, attention_mask=mask, labels=labels).loss

    rng = random.Random(0)
    by_length = sorted(clips, key=lambda u: u.duration)
    for label, batches in (("random batches", [rng.sample(clips, 8) for _ in range(4)]),
                           ("length-sorted batches", [by_length[i:i + 8] for i in range(0, 32, 8)])):
        model.train()
        torch.manual_seed(1)
        reference = float(loss(batches[0], "per-clip").detach())
        for mode in ("padded", "packed"):
            torch.manual_seed(1)  # same dropout stream: equal when the masks are drawn in the same order
            print(f"{label}: training loss {mode} - per-clip = {float(loss(batches[0], mode).detach()) - reference:.2e}")
        seconds: dict[str, list[float]] = {"per-clip": [], "padded": [], "packed": []}
        for _ in range(3):
            for mode in seconds:
                for batch in batches:
                    started = time.perf_counter()
                    loss(batch, mode).backward()
                    model.zero_grad()
                    seconds[mode].append(time.perf_counter() - started)
        for mode, values in seconds.items():
            print(f"{label}: {mode} step {statistics.median(values):.2f} s median, {sum(values):.1f} s in all")


def decoder_probe(work: Path) -> None:
    """A decoder-only step on 8 short clips with their encoder outputs cached: its time, and the
    share of the ops that the dropout and K/V notes are about."""
    from torch.profiler import ProfilerActivity, profile

    from moonlora.train.loop import EncoderCache, batch_loss

    synth = build_domain("atc", n=40, seed=1, out_dir=work / "atc", progress=False)
    clips = load_manifest(synth.train_manifest).utterances[:8]
    loaded = load_model(device="cpu")
    model = attach_lora(loaded.model, LoraSettings(target_modules=("decoder",)), 0)
    model.train()
    waveforms, texts = [load_audio(u.audio_filepath) for u in clips], [u.text for u in clips]
    keys, cache = [str(u.audio_filepath) for u in clips], EncoderCache(2**30)

    def step() -> None:
        batch_loss(model, loaded.feature_extractor, loaded.tokenizer, waveforms, texts, keys, StemCache(), cache).backward()
        model.zero_grad()

    for _ in range(3):  # fills the cache, then warms up
        step()
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    print(f"decoder-only step, 8 clips ({sum(u.duration for u in clips):.1f} s of audio): "
          f"{statistics.median(seconds):.3f} s median of 5")
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        step()
    events = profiled.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    for name in ("aten::mm", "aten::bernoulli_", "aten::addmm", "aten::_log_softmax"):
        share = sum(e.self_cpu_time_total for e in events if e.key == name) / total
        print(f"{name}: {100 * share:.1f} % of the profiled step's self CPU time")


def audio_probe(work: Path) -> None:
    synth = build_domain("atc", n=40, seed=1, out_dir=work / "atc", progress=False)
    clips = load_manifest(synth.train_manifest).utterances
    started = time.perf_counter()
    for _ in range(5):
        for clip in clips:
            load_audio(clip.audio_filepath)
    print(f"load_audio: {1000 * (time.perf_counter() - started) / (5 * len(clips)):.2f} ms per clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=("kernels", "encoder", "decoder", "audio"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print_load("start")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="moonlora-train-probe-") as work:
        {"kernels": lambda: kernels(), "encoder": lambda: encoder_probe(Path(work)),
         "decoder": lambda: decoder_probe(Path(work)), "audio": lambda: audio_probe(Path(work))}[args.probe]()
    print_load("end")


if __name__ == "__main__":
    main()
