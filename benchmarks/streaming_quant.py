"""Moonshine Streaming int8: which quantization scheme keeps a LoRA adaptation (issue 21, item 4).

No trained streaming weights exist offline, so no WER study is possible here. What can be measured on a
seeded random-init Moonshine Streaming with the tiny architecture and a non-identity LoRA (B drawn at
random, scaled so every adapted weight's change has a chosen relative size rho = ||delta|| / ||W||):

(1) Weights, per scheme and rho, over every adapted MatMul weight (all modules pooled), with the
    exporter's own grid function (`streaming_export.int8_levels`, checked against the shipped graph):
      kept   = <Q(W + delta) - Q(W), delta> / ||delta||^2   the share of the delta that survives in its
                                                             own direction (1 = all of it)
      cos    = cosine(Q(W + delta) - Q(W), delta)
      noise  = ||Q(W + delta) - (W + delta)|| / ||delta||    quantization error against the delta's size
(2) Tokens: the merged model shipped under each scheme (`ship_graphs`, the exporter's path), greedy
    through onnxruntime vs torch greedy on the same merged model, on real synthetic clips (espeak-ng):
    identical clips, and the mean share of each clip's tokens before the first difference. A random
    model's top-two logits are often ~1e-3 apart, so this is a strict test of any numeric change.

The WER study needs published weights (UsefulSensors/moonshine-streaming-tiny): where the hub is
reachable, train with `moonlora experiment --model UsefulSensors/moonshine-streaming-tiny ... --export ort`
once per scheme (docs/benchmarks.md says how) and compare export_parity's export - torch WER CIs.

    uv run python benchmarks/streaming_quant.py [--rho 0.005 0.02 0.05] [--token-rho 0.02] [--presets decoder all]

Writes benchmarks/streaming_quant.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from machine import print_load
from moonlora.configs import LoraSettings
from moonlora.data.synth import espeak
from moonlora.model.loading import bundled_feature_extractor
from moonlora.model.lora import attach_lora
from moonlora.model.ort_streaming import load_streaming_model
from moonlora.model.streaming_encoder import clip_inputs
from moonlora.ship.streaming_export import (GRAPHS, Int8Scheme, export_float_graphs, graph_of, int8_levels,
                                            ship_graphs)

OUT = Path(__file__).with_name("streaming_quant.json")
PHRASES = ("cleared to land runway two seven", "contact departure one two four point five",
           "hold short of taxiway alpha", "climb and maintain flight level three five zero",
           "wind two four zero at eight knots", "traffic twelve o'clock five miles")
SMALL = ("frontend", "adapter", "cross_kv")
SCHEMES = {
    "per-tensor nearest": Int8Scheme(),
    "per-channel nearest": Int8Scheme(per_channel=True),
    "per-tensor stochastic": Int8Scheme(rounding="stochastic"),
    "per-channel stochastic": Int8Scheme(per_channel=True, rounding="stochastic"),
    "per-tensor nearest, adapter+cross_kv float": Int8Scheme(float_graphs=SMALL),
    "per-channel nearest, adapter+cross_kv float": Int8Scheme(per_channel=True, float_graphs=SMALL),
}


def tiny_arch_model():
    from transformers import MoonshineStreamingConfig, MoonshineStreamingForConditionalGeneration

    torch.manual_seed(0)
    return MoonshineStreamingForConditionalGeneration(MoonshineStreamingConfig(
        num_key_value_heads=8, pad_token_id=2, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).eval()


def adapted(base, preset: str, rho: float):
    """(merged model, {module name: (W, delta)}) for a LoRA on `preset` whose every delta has ||delta|| = rho ||W||."""
    peft = attach_lora(copy.deepcopy(base), LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=(preset,)), seed=0)
    generator = torch.Generator().manual_seed(1)
    pairs = {}
    with torch.no_grad():
        for name, module in peft.named_modules():
            if not (hasattr(module, "lora_A") and module.lora_A):
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=generator))
            delta = (b @ a) * module.scaling["default"]
            weight = module.base_layer.weight
            b.mul_(rho * weight.norm() / delta.norm())
            pairs[name] = (weight.detach().clone().numpy(), ((b @ a) * module.scaling["default"]).numpy())
    return peft.merge_and_unload().eval(), pairs


def weight_metrics(pairs: dict, scheme: Int8Scheme) -> dict:
    """kept, cos and noise of one scheme over every adapted weight (pooled), on the (in, out) layout the
    graphs hold; stochastic draws are seeded alike for W and W + delta, as the exporter seeds by name."""
    dot = diff_sq = delta_sq = noise_sq = 0.0
    for name, (weight, delta) in pairs.items():
        w, d = weight.T.astype(np.float32), delta.T.astype(np.float32)
        merged = (w + d).astype(np.float32)
        if graph_of(name) in scheme.float_graphs:  # shipped float32: the delta is kept whole
            dot += float((d.astype(np.float64) ** 2).sum())
            diff_sq += float((d.astype(np.float64) ** 2).sum())
            delta_sq += float((d.astype(np.float64) ** 2).sum())
            continue
        seed = zlib.crc32(name.encode())
        rng = (lambda: np.random.default_rng(seed)) if scheme.rounding == "stochastic" else (lambda: None)
        levels_b, scale_b = int8_levels(w, scheme.per_channel, rng())
        levels_m, scale_m = int8_levels(merged, scheme.per_channel, rng())
        kept = levels_m * scale_m.astype(np.float64) - levels_b * scale_b.astype(np.float64)
        dot += float((kept * d).sum())
        diff_sq += float((kept ** 2).sum())
        delta_sq += float((d.astype(np.float64) ** 2).sum())
        noise_sq += float(((levels_m * scale_m.astype(np.float64) - merged) ** 2).sum())
    return {"kept": dot / delta_sq, "cos": dot / np.sqrt(diff_sq * delta_sq), "noise": np.sqrt(noise_sq / delta_sq),
            "modules": len(pairs)}


def check_grid(folder: Path, scheme: Int8Scheme, float_dir: Path) -> int:
    """Every quantized MatMul weight of the shipped decoder_kv equals int8_levels of its float weight
    (nearest schemes; stochastic ones were pre-rounded onto that grid). Returns how many were checked."""
    import onnx
    from onnx import numpy_helper

    def arrays(path: Path) -> dict:
        return {entry.name: numpy_helper.to_array(entry) for entry in onnx.load(str(path)).graph.initializer}

    quantized, floats = arrays(folder / "onnx" / "decoder_kv.onnx"), arrays(float_dir / "decoder_kv.onnx")
    checked = 0
    for name, q in quantized.items():
        if not name.endswith("_quantized") or q.dtype != np.int8 or q.ndim != 2:
            continue
        source = floats[source_name(name)]
        rng = np.random.default_rng(zlib.crc32(source_name(name).encode())) if scheme.rounding == "stochastic" \
            else None
        levels, _ = int8_levels(source, scheme.per_channel, rng)
        assert np.array_equal(levels.astype(np.int8), q), name
        checked += 1
    return checked


def source_name(quantized_name: str) -> str:
    return quantized_name[: -len("_quantized")]


def greedy(model, audio: np.ndarray, cap: int) -> list[int]:
    keys, values = model.encode(audio)
    depth, heads, head_dim = (model.config[key] for key in ("depth", "nheads", "head_dim"))
    empty = np.zeros((depth, 1, heads, 0, head_dim), dtype=np.float32)
    feed = {"k_self": empty, "v_self": empty, "out_k_cross": keys, "out_v_cross": values}
    tokens, token = [], 1
    for _ in range(cap):
        logits, feed["k_self"], feed["v_self"], _, _ = model.sessions["decoder_kv"].run(
            None, {**feed, "token": np.array([[token]], dtype=np.int64)})
        token = int(logits[0, -1].argmax())
        if token == 2:
            break
        tokens.append(token)
    return tokens


def torch_greedy(model, clips: list[np.ndarray]) -> list[list[int]]:
    extractor, out = bundled_feature_extractor(), []
    for audio in clips:
        with torch.no_grad():
            generated = model.generate(**clip_inputs(model.get_encoder(), extractor, audio),
                                       max_new_tokens=cap_of(audio), do_sample=False, num_beams=1)
        out.append([t for t in generated[0].tolist() if t not in (1, 2)])
    return out


def cap_of(audio: np.ndarray) -> int:
    return int(np.ceil(audio.size / 16000 * 6.5))


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    prefix = []
    for a, b in zip(ours, theirs):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(same / max(len(a), len(b), 1))
    return {"identical": sum(a == b for a, b in zip(ours, theirs)), "clips": len(ours),
            "mean_prefix_share": float(np.mean(prefix))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rho", type=float, nargs="+", default=[0.005, 0.02, 0.05],
                        help="relative delta sizes for the weight metrics")
    parser.add_argument("--token-rho", type=float, default=0.02, help="relative delta size of the token study")
    parser.add_argument("--presets", nargs="+", default=["decoder", "all"], help="LoRA target presets")
    parser.add_argument("--token-presets", nargs="+", default=["decoder", "all"],
                        help="presets shipped for the token study")
    args = parser.parse_args()

    start = print_load()
    began = time.time()
    base = tiny_arch_model()
    report = {"weights": {}, "tokens": {}, "load_at_start": start}
    for preset in args.presets:
        for rho in args.rho:
            _, pairs = adapted(base, preset, rho)
            rows = {name: weight_metrics(pairs, scheme) for name, scheme in SCHEMES.items()}
            report["weights"][f"{preset} rho={rho}"] = rows
            for name, row in rows.items():
                print(f"weights {preset:8s} rho={rho:<6} {name:45s} kept {row['kept']:.3f} cos {row['cos']:.3f} "
                      f"noise/delta {row['noise']:.2f} ({row['modules']} modules)", flush=True)
    clips = [espeak.synthesize(text, "en-us+m3").astype(np.float32) for text in PHRASES]
    with tempfile.TemporaryDirectory(prefix="streaming-quant-") as work:
        work = Path(work)
        for preset in args.token_presets:
            merged, pairs = adapted(base, preset, args.token_rho)
            reference = torch_greedy(merged, clips)
            float_dir = work / f"{preset}-float"
            dims = export_float_graphs(merged, float_dir)
            rows = {}
            for name, scheme in {"float32": None, **SCHEMES}.items():
                folder = work / f"{preset}-{len(rows)}"
                ship_graphs(float_dir, folder, dims, "float32" if scheme is None else "int8",
                            scheme or Int8Scheme(), keep_onnx=True)
                checked = check_grid(folder, scheme, float_dir) if scheme is not None else 0
                model, _ = load_streaming_model(folder, str(folder))
                ours = [greedy(model, audio, cap_of(audio)) for audio in clips]
                rows[name] = {**agreement(ours, reference), "grid_checked": checked,
                              "bytes": sum((folder / f"{graph}.ort").stat().st_size for graph in GRAPHS)}
                print(f"tokens  {preset:8s} rho={args.token_rho:<6} {name:45s} identical {rows[name]['identical']}/"
                      f"{len(clips)}, prefix share {rows[name]['mean_prefix_share']:.2f}, "
                      f"{rows[name]['bytes'] / 1e6:.1f} MB", flush=True)
            report["tokens"][f"{preset} rho={args.token_rho}"] = rows
    report.update({"load_at_end": print_load("end"), "seconds": time.time() - began,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "model": "random-init MoonshineStreamingConfig(num_key_value_heads=8), seed 0 (tiny architecture)",
                   "lora": "r 8, alpha 16, B ~ N(0,1) then scaled so ||delta|| = rho ||W|| per module, seed 0/1",
                   "clips": list(PHRASES)})
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
