"""Moonshine Streaming to the runtime's five graphs: moonlora's own exporter of a merged streaming model.

The moonshine-voice runtime does not load one streaming model: it loads five ORT graphs that split the
work the way streaming needs it, binds their inputs and outputs by name, and reads their settings
from ONNX metadata (JSON strings) and `streaming_config.json`. The interface, as the official
fine-tuner's exporter (`moonshine_voice/lora/export.py`) documents it:

| graph | inputs -> outputs | weights it holds |
| --- | --- | --- |
| `frontend` | `audio_chunk` (1, n), `sample_buffer` (1, frame-1), `sample_len` (1,), `conv1_buffer` (1, H, 4), `conv2_buffer` (1, 2H, 4), `frame_count` (1,) -> `features` (1, f, H) and the five states `*_out` | embedder (CMVN, asinh, frame linear, two causal convs) |
| `encoder` | `features` -> `encoded` (1, f, H) | encoder layers, final norm; sliding windows baked in |
| `adapter` | `encoded`, `pos_offset` (1,) -> `memory` (1, f, D) | decoder position embedding, projection |
| `cross_kv` | `memory` -> `k_cross`, `v_cross` (layers, 1, heads, f, head_dim) | cross-attention k/v projections |
| `decoder_kv` | `token` (1, t), `k_self`, `v_self` (layers, 1, heads, cached, head_dim), `out_k_cross`, `out_v_cross` -> `logits`, `out_k_self`, `out_v_self`, `out_k_cross`, `out_v_cross` (passed through) | embedding, self-attention, cross q/o, MLPs, norms, output layer |

So which graphs an adapter changes follows from its target modules (`graphs_of`): the decoder preset
(decoder self-attention q/k/v) changes `decoder_kv` alone; cross-attention k/v change `cross_kv`;
encoder sites change `encoder`. The export is deterministic, so a graph whose weights an adapter
does not touch is byte-identical to the identity export's (tests/test_streaming_export.py).

Where moonlora's graphs differ from the official exporter's, on purpose:
- Window bounds. transformers' `sliding_window_mask_function`, which moonlora trains and scores with
  (and the official fine-tuner trains with: it calls the same model), reads a layer's (left, right)
  window as exclusive: (16, 4) sees itself, 15 frames behind and 3 ahead; (16, 0) itself and 15
  behind. The official exporter bakes them as inclusive bounds (itself, 16 behind, 4 ahead), one frame
  more on each side than the model it exports was trained with. moonlora bakes transformers' mask
  (calling that very function), so the exported graph computes the model that was measured, and
  `total_lookahead` is the lookahead of that mask (sum of right - 1: 12 frames for the tiny windows,
  16 in the official export). Which convention the published checkpoints were trained with cannot be
  decided offline (no streaming weights here); the metadata records ours (`window_bounds`).
- The frontend is exact for any chunk length: it carries the last four frames before each strided
  convolution and reads `frame_count` to keep the stride-2 phase (the official graph carries the
  newest four and is exact only when every chunk holds a multiple of 4 frames, 320 samples).
- A trailing partial frame never becomes a frame (its samples wait in `sample_buffer`); moonlora's
  torch path drops it the same way (`moonlora.model.streaming_encoder.clip_inputs`).

All five graphs use the TorchScript exporter (opset 18, with an `Asinh` symbolic: the tracer has none);
its `.onnx` bytes are deterministic, onnxruntime's ORT-format converter's are not (a table's order varies
from run to run), so conversions are memoized by the `.onnx` hash (`convert_memoized`, in moonlora's
cache): an unchanged graph gets the very bytes of its earlier export.
`int8` quantizes the weights of every graph but those an `Int8Scheme` keeps float (onnxruntime's
dynamic quantizer: symmetric int8 weights, one scale per tensor or per output column, activations
quantized to uint8 at run time); `stochastic` rounding first moves each MatMul weight onto the int8
grid the quantizer will use, rounding up with probability equal to the fraction (seeded by the
weight's name, so an export is reproducible), and the quantizer's nearest rounding then keeps those
levels. Which scheme is the default, and why, is measured in docs/benchmarks.md ("Moonshine Streaming
int8: which scheme keeps the adaptation"). Then every graph is converted to ORT format; the folder
keeps the five `NAME.ort`, `streaming_config.json` and `tokenizer.bin` (the runtime refuses the
`.onnx` files).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moonlora.errors import InputError, ToolError
from moonlora.ship.onnx_export import _attend, _heads, _rotate, _tool, convert_to_ort

GRAPHS = ("frontend", "encoder", "adapter", "cross_kv", "decoder_kv")  # the runtime's names, in pipeline order
CONFIG_FILE = "streaming_config.json"
TOKENIZER_FILE = "tokenizer.bin"
MODEL_FILES = (*(f"{name}.ort" for name in GRAPHS), CONFIG_FILE, TOKENIZER_FILE)  # also the artifact hash's order
OPSET = 18
CONV_CARRY = 4  # frames carried before each causal convolution (kernel 5 - 1)
WINDOW_BOUNDS = "exclusive (transformers sliding_window_mask_function): (left, right) sees itself, left-1 behind, right-1 ahead"
PRECISIONS = ("int8", "float32")
ROUNDINGS = ("nearest", "stochastic")


@dataclass(frozen=True)
class Int8Scheme:
    """How an int8 export quantizes (onnxruntime quantize_dynamic, weights QInt8 symmetric)."""

    per_channel: bool = False  # one scale per output column of each MatMul weight, else one per tensor
    rounding: str = "nearest"  # or "stochastic": MatMul weights pre-rounded onto the int8 grid, unbiased
    float_graphs: tuple[str, ...] = ("frontend",)  # graphs kept float32

    def __post_init__(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise InputError(f"--rounding {self.rounding}: pick one of {', '.join(ROUNDINGS)}")
        unknown = sorted(set(self.float_graphs) - set(GRAPHS))
        if unknown:
            raise InputError(f"float graphs {', '.join(unknown)}: pick from {', '.join(GRAPHS)}")

    def describe(self) -> str:
        return (f"onnxruntime quantize_dynamic QInt8, per {'channel' if self.per_channel else 'tensor'}, "
                f"{self.rounding} rounding; float32: {', '.join(self.float_graphs)}")


DEFAULT_SCHEME = Int8Scheme(per_channel=True)  # the measured choice (docs/benchmarks.md)

# Which graph holds a weight, by its name in the merged model (first match wins).
_WEIGHT_GRAPHS = (
    (r"model\.encoder\.embedder\.", "frontend"),
    (r"model\.encoder\.", "encoder"),
    (r"model\.decoder\.(pos_emb|proj)\b", "adapter"),
    (r"model\.decoder\.layers\.\d+\.encoder_attn\.(k_proj|v_proj)\b", "cross_kv"),
    (r"(model\.decoder\.|proj_out\b)", "decoder_kv"),
)


def graph_of(name: str) -> str:
    """The graph holding the weight or module `name` (of the merged model; a PEFT prefix is ignored)."""
    name = re.sub(r"^(base_model\.model\.)", "", name)
    for pattern, graph in _WEIGHT_GRAPHS:
        if re.match(pattern, name):
            return graph
    raise ValueError(f"{name}: not a weight of a Moonshine Streaming model")


def graphs_of(names) -> list[str]:
    """The graphs holding any of `names` (module or weight names), in GRAPHS order."""
    touched = {graph_of(name) for name in names}
    return [graph for graph in GRAPHS if graph in touched]


def _mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def _register_asinh() -> None:
    """ONNX has Asinh since opset 9; the TorchScript exporter has no symbolic for it."""
    torch.onnx.register_custom_op_symbolic("aten::asinh", lambda g, x: g.op("Asinh", x), 9)


# ----------------------------------------------------------------------------------------------
# The five graphs, written from the model's own submodules


class Frontend(nn.Module):
    """Audio chunk -> encoder input features, carrying samples and convolution context across chunks."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.frame = embedder.frame_len

    def forward(self, audio_chunk, sample_buffer, sample_len, conv1_buffer, conv2_buffer, frame_count):
        e = self.embedder
        samples = torch.cat([sample_buffer[:, : sample_len[0]], audio_chunk], dim=1)
        frames = samples.shape[1] // self.frame
        used = frames * self.frame
        hidden = F.silu(e.linear(e.comp(e.cmvn(samples[:, :used].reshape(1, frames, self.frame)))))
        # Conv input t of the whole clip is frame 2t-4..2t: after an odd number of frames, the next
        # output starts one frame later than the carried four.
        conv1_in = torch.cat([conv1_buffer, hidden.transpose(1, 2)], dim=2)
        conv1_out = F.silu(F.conv1d(conv1_in[:, :, frame_count[0] % 2:], e.conv1.weight, e.conv1.bias,
                                    stride=e.conv1.stride[0]))
        conv2_in = torch.cat([conv2_buffer, conv1_out], dim=2)
        conv1_done = (frame_count[0] + 1) // 2  # conv1 outputs of the earlier chunks
        features = F.conv1d(conv2_in[:, :, conv1_done % 2:], e.conv2.weight, e.conv2.bias, stride=e.conv2.stride[0])
        rest = samples[:, used:]
        kept = torch.cat([rest, torch.zeros_like(sample_buffer)], dim=1)[:, : sample_buffer.shape[1]]
        rest_len = torch.ones_like(rest[0], dtype=torch.int64).sum().reshape(1)
        return (features.transpose(1, 2), kept, rest_len, conv1_in[:, :, -CONV_CARRY:], conv2_in[:, :, -CONV_CARRY:],
                frame_count + frames)


class Encoder(nn.Module):
    """Features -> encoded states, each layer's sliding window baked in with transformers' own mask function."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        from transformers.models.moonshine_streaming.modeling_moonshine_streaming import sliding_window_mask_function

        self.encoder = encoder
        config = encoder.config
        self.windows = [sliding_window_mask_function(tuple(w)) for w in config.sliding_windows]
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads

    def forward(self, features):
        hidden = features
        positions = torch.arange(hidden.shape[1])
        for layer, window in zip(self.encoder.layers, self.windows):
            mask = _mask(window(0, 0, positions[:, None], positions[None, :]), hidden.dtype)
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = _heads(attn.q_proj(normed), self.heads, attn.head_dim)
            key = _heads(attn.k_proj(normed), self.kv_heads, attn.head_dim)
            value = _heads(attn.v_proj(normed), self.kv_heads, attn.head_dim)
            hidden = hidden + attn.o_proj(_attend(query, key, value, attn.scaling, self.heads // self.kv_heads, mask))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.encoder.final_norm(hidden)


class Adapter(nn.Module):
    """Encoded states -> decoder memory: the decoder's position embedding from `pos_offset`, then its projection."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.pos_emb, self.proj = decoder.pos_emb, decoder.proj

    def forward(self, encoded, pos_offset):
        positions = torch.arange(encoded.shape[1]) + pos_offset[0]
        return self.proj(encoded + self.pos_emb(positions)[None])


class CrossKV(nn.Module):
    """Memory -> every layer's cross-attention keys and values, stacked (layers, 1, heads, frames, head_dim)."""

    def __init__(self, decoder: nn.Module, kv_heads: int):
        super().__init__()
        self.attns = nn.ModuleList(layer.encoder_attn for layer in decoder.layers)
        self.kv_heads = kv_heads

    def forward(self, memory):
        keys = [_heads(a.k_proj(memory), self.kv_heads, a.head_dim) for a in self.attns]
        values = [_heads(a.v_proj(memory), self.kv_heads, a.head_dim) for a in self.attns]
        return torch.stack(keys), torch.stack(values)


class DecoderKV(nn.Module):
    """One decoder step over `token` with the self-attention cache; the cross K/V pass through unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder, self.proj_out = model.model.decoder, model.proj_out
        self.heads = model.config.num_attention_heads

    def forward(self, token, k_self, v_self, out_k_cross, out_v_cross):
        decoder = self.decoder
        hidden = decoder.embed_tokens(token)
        cached, length = k_self.shape[3], hidden.shape[1]
        positions = torch.arange(length) + cached
        rotary = decoder.rotary_emb
        freqs = positions.to(torch.float32).unsqueeze(1) * rotary.inv_freq.to(torch.float32)
        cos, sin = freqs.cos() * rotary.attention_scaling, freqs.sin() * rotary.attention_scaling
        causal = _mask(torch.arange(cached + length)[None, :] <= positions[:, None], hidden.dtype)
        keys, values = [], []
        for index, layer in enumerate(decoder.layers):
            attn, cross = layer.self_attn, layer.encoder_attn
            normed = layer.input_layernorm(hidden)
            query = _rotate(_heads(attn.q_proj(normed), self.heads, attn.head_dim), cos, sin)
            key = _rotate(_heads(attn.k_proj(normed), self.heads, attn.head_dim), cos, sin)
            key = torch.cat([k_self[index], key], dim=2)
            value = torch.cat([v_self[index], _heads(attn.v_proj(normed), self.heads, attn.head_dim)], dim=2)
            keys.append(key)
            values.append(value)
            hidden = hidden + attn.o_proj(_attend(query, key, value, attn.scaling, 1, causal))
            query = _heads(cross.q_proj(layer.post_attention_layernorm(hidden)), self.heads, cross.head_dim)
            hidden = hidden + cross.o_proj(_attend(query, out_k_cross[index], out_v_cross[index], cross.scaling, 1))
            hidden = hidden + layer.mlp(layer.final_layernorm(hidden))
        logits = self.proj_out(decoder.norm(hidden))
        return logits, torch.stack(keys), torch.stack(values), out_k_cross, out_v_cross


# ----------------------------------------------------------------------------------------------
# Settings the runtime reads


def dimensions(model: nn.Module) -> dict:
    """The sizes every graph, the config file and the backend agree on."""
    config, encoder_config = model.config, model.config.encoder_config
    windows = [list(w) for w in encoder_config.sliding_windows]
    heads = config.num_attention_heads
    return {
        "encoder_dim": encoder_config.hidden_size, "decoder_dim": config.hidden_size,
        "depth": config.num_hidden_layers, "nheads": heads,
        "head_dim": model.model.decoder.layers[0].self_attn.head_dim, "vocab_size": config.vocab_size,
        "bos_id": config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id,
        "eos_id": config.eos_token_id, "frame_len": model.model.encoder.embedder.frame_len,
        "windows": windows, "total_lookahead": sum(max(right - 1, 0) for _, right in windows),
    }


def state_shapes(dims: dict) -> dict[str, list[int]]:
    """The frontend's carried state, which the runtime allocates (zeros) per stream."""
    return {"sample_buffer": [1, dims["frame_len"] - 1], "sample_len": [1],
            "conv1_buffer": [1, dims["encoder_dim"], CONV_CARRY],
            "conv2_buffer": [1, 2 * dims["encoder_dim"], CONV_CARRY], "frame_count": [1]}


def streaming_config(dims: dict) -> dict:
    keys = ("encoder_dim", "decoder_dim", "depth", "nheads", "head_dim", "vocab_size", "bos_id", "eos_id",
            "frame_len", "total_lookahead")
    return {**{key: dims[key] for key in keys}, "d_model_frontend": dims["encoder_dim"],
            "c1": 2 * dims["encoder_dim"], "c2": dims["encoder_dim"], "frontend_state_shapes": state_shapes(dims)}


def metadata(graph: str, dims: dict) -> dict:
    """The ONNX metadata the runtime reads from each graph (values stored as JSON)."""
    depth, heads, head_dim = dims["depth"], dims["nheads"], dims["head_dim"]
    return {
        "frontend": {"frontend_config": {"mode": "incremental", "frame_len": dims["frame_len"],
                                         "d_model": dims["encoder_dim"], "c1": 2 * dims["encoder_dim"],
                                         "c2": dims["encoder_dim"], "state_shapes": state_shapes(dims)}},
        "encoder": {"encoder_config": {"encoder_dim": dims["encoder_dim"], "total_lookahead": dims["total_lookahead"],
                                       "windows": dims["windows"], "window_bounds": WINDOW_BOUNDS}},
        "adapter": {"adapter_config": {"encoder_dim": dims["encoder_dim"], "decoder_dim": dims["decoder_dim"]}},
        "cross_kv": {"cross_kv_config": {"depth": depth, "nheads": heads, "head_dim": head_dim,
                                         "decoder_dim": dims["decoder_dim"]}},
        "decoder_kv": {"decoder_config": {"depth": depth, "nheads": heads, "head_dim": head_dim,
                                          "vocab_size": dims["vocab_size"], "decoder_dim": dims["decoder_dim"],
                                          "bos_id": dims["bos_id"], "eos_id": dims["eos_id"]},
                       "cache_shapes": {name: [depth, 1, heads, 0, head_dim] for name in ("k_self", "v_self")}},
    }[graph]


# ----------------------------------------------------------------------------------------------
# Export


def check_streaming_model(model: nn.Module) -> None:
    """Refuse (InputError, one line) a model these graphs cannot express."""
    if hasattr(model, "peft_config"):
        raise TypeError("export_streaming takes a merged model: call merge_and_unload() on the PeftModel first")
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "moonshine_streaming":
        raise InputError(f"the streaming export takes a Moonshine Streaming model, not {type(model).__name__}")
    if config.num_key_value_heads != config.num_attention_heads:
        raise InputError(f"decoder num_key_value_heads {config.num_key_value_heads} != num_attention_heads "
                         f"{config.num_attention_heads}: the runtime's decoder cache has one head count")


def _graph_args(model: nn.Module, graph: str, dims: dict):
    """(module, example inputs, input names, output names, dynamic axes) of one graph. Example lengths are
    distinct from each other and from every model size, so no axis is frozen by a coincidence."""
    depth, heads, head_dim, enc = dims["depth"], dims["nheads"], dims["head_dim"], dims["encoder_dim"]
    shapes = state_shapes(dims)
    if graph == "frontend":
        args = (torch.randn(1, 3203), torch.zeros(*shapes["sample_buffer"]), torch.zeros(1, dtype=torch.int64),
                torch.zeros(*shapes["conv1_buffer"]), torch.zeros(*shapes["conv2_buffer"]),
                torch.zeros(1, dtype=torch.int64))
        names = ["audio_chunk", "sample_buffer", "sample_len", "conv1_buffer", "conv2_buffer", "frame_count"]
        return (Frontend(model.model.encoder.embedder), args, names, ["features", *(f"{n}_out" for n in names[1:])],
                {"audio_chunk": {1: "chunk_len"}, "features": {1: "feat_len"}})
    if graph == "encoder":
        return (Encoder(model.model.encoder), (torch.randn(1, 37, enc),), ["features"], ["encoded"],
                {"features": {1: "feat_len"}, "encoded": {1: "feat_len"}})
    if graph == "adapter":
        return (Adapter(model.model.decoder), (torch.randn(1, 37, enc), torch.zeros(1, dtype=torch.int64)),
                ["encoded", "pos_offset"], ["memory"], {"encoded": {1: "enc_len"}, "memory": {1: "enc_len"}})
    if graph == "cross_kv":
        return (CrossKV(model.model.decoder, heads), (torch.randn(1, 37, dims["decoder_dim"]),), ["memory"],
                ["k_cross", "v_cross"], {"memory": {1: "mem_len"}, "k_cross": {3: "mem_len"}, "v_cross": {3: "mem_len"}})
    args = (torch.tensor([[1, 100, 200]]), torch.randn(depth, 1, heads, 5, head_dim),
            torch.randn(depth, 1, heads, 5, head_dim), torch.randn(depth, 1, heads, 37, head_dim),
            torch.randn(depth, 1, heads, 37, head_dim))
    cache, memory = {3: "cache_len"}, {3: "mem_len"}
    return (DecoderKV(model), args, ["token", "k_self", "v_self", "out_k_cross", "out_v_cross"],
            ["logits", "out_k_self", "out_v_self", "out_k_cross", "out_v_cross"],
            {"token": {1: "token_len"}, "k_self": cache, "v_self": cache, "out_k_cross": memory, "out_v_cross": memory,
             "logits": {1: "token_len"}, "out_k_self": {3: "total_len"}, "out_v_self": {3: "total_len"}})


def _pass_through(model) -> None:
    """An input that is also an output keeps its one name. The TorchScript exporter renames such an input
    (`out_k_cross` -> `out_k_cross.1`) and copies it to the output through an Identity; the runtime binds
    the cross K/V by one name through every decode step, so give the input the output's name back and
    let the graph output be the input itself."""
    graph = model.graph
    inputs = {entry.name: entry for entry in graph.input}
    outputs = {entry.name for entry in graph.output}
    renames = {}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in inputs and node.output[0] in outputs:
            renames[node.input[0]] = node.output[0]
            graph.node.remove(node)
    for old, new in renames.items():
        inputs[old].name = new
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]


def export_graph(model: nn.Module, graph: str, dims: dict, path: Path) -> Path:
    """One float32 graph as a self-contained .onnx with its metadata."""
    import onnx

    module, args, inputs, outputs, dynamic = _graph_args(model, graph, dims)
    _register_asinh()
    with torch.no_grad(), _tool("torch.onnx.export", f"exporting the {graph} graph"):
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    proto = onnx.load(str(path))
    _pass_through(proto)
    for key, value in metadata(graph, dims).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, sort_keys=True)
    onnx.save(proto, str(path))
    return path


def _graph_cache() -> Path:
    from moonlora.model.loading import cache_root

    return cache_root() / "ort-graphs"


def convert_memoized(onnx_dir: Path, out_dir: Path) -> None:
    """Every NAME.onnx of onnx_dir -> NAME.ort in out_dir, memoized by the sha256 of the .onnx bytes (and the
    onnxruntime version). onnxruntime's converter does not write the same bytes twice (the order of a table
    in the file varies from run to run), while the .onnx export is deterministic: reusing the earlier
    conversion of an unchanged graph is what makes a graph an adapter does not touch byte-identical to
    the identity export's."""
    import onnxruntime

    cache = _graph_cache()
    pending = onnx_dir.with_name(onnx_dir.name + "-pending")
    pending.mkdir()
    keys = {}
    for path in sorted(onnx_dir.glob("*.onnx")):
        digest = hashlib.sha256(path.read_bytes() + onnxruntime.__version__.encode()).hexdigest()
        keys[path.stem] = cache / f"{digest}.ort"
        if not keys[path.stem].is_file():
            shutil.copy2(path, pending / path.name)
    if any(pending.iterdir()):
        convert_to_ort(pending, pending)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for name, cached in keys.items():
                if (pending / f"{name}.ort").is_file():
                    temporary = cached.with_suffix(".partial")
                    shutil.copy2(pending / f"{name}.ort", temporary)
                    temporary.replace(cached)
        except OSError:
            pass  # no cache: the graphs are still right, only not byte-stable across exports
    for name, cached in keys.items():
        source = cached if cached.is_file() else pending / f"{name}.ort"
        shutil.copyfile(source, out_dir / f"{name}.ort")


def int8_levels(w: np.ndarray, per_channel: bool, rng: np.random.Generator | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(levels, scale) of a MatMul weight w (in, out) on onnxruntime's dynamic int8 grid: symmetric, scale
    max|w| / 127 per tensor or per output column, float32 (onnxruntime.quantization.quant_utils
    compute_scale_zp); nearest rounding, or stochastic with `rng` (up with probability = the fraction; a
    value on the grid stays, so the extremes keep the scale)."""
    absmax = np.abs(w.astype(np.float64)).max(axis=0 if per_channel else None, keepdims=per_channel)
    scale = (absmax / 127.0).astype(np.float32)
    scale = np.where(scale < np.finfo(np.float32).tiny, np.float32(1.0), scale).astype(np.float32)
    if rng is None:
        levels = np.rint(w.astype(np.float32) / scale)  # float32 division, as onnxruntime's quantize_nparray
    else:
        exact = w.astype(np.float64) / scale.astype(np.float64)
        exact = np.where(np.abs(exact - np.rint(exact)) < 1e-3, np.rint(exact), exact)
        low = np.floor(exact)
        levels = low + (rng.random(exact.shape) < (exact - low))
    return np.clip(levels, -127, 127), scale


def _pre_round(path: Path, per_channel: bool) -> None:
    """Move every MatMul weight of an .onnx onto its int8 grid by stochastic rounding, in place."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    initializers = {entry.name: entry for entry in proto.graph.initializer}
    done = set()
    for node in proto.graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if name not in initializers or name in done:
            continue
        w = numpy_helper.to_array(initializers[name])
        if w.ndim != 2 or w.dtype != np.float32:
            continue
        levels, scale = int8_levels(w, per_channel, np.random.default_rng(zlib.crc32(name.encode())))
        initializers[name].CopyFrom(numpy_helper.from_array((levels * scale).astype(np.float32), name))
        done.add(name)
    onnx.save(proto, str(path))


def quantize_graph(source: Path, target: Path, scheme: Int8Scheme) -> Path:
    """One float .onnx -> its dynamically int8-quantized .onnx under `scheme`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if scheme.rounding == "stochastic":
        _pre_round(source, scheme.per_channel)
    with _tool("onnxruntime.quantization.quantize_dynamic", f"quantizing {source.name} to int8"):
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=scheme.per_channel)
    return target


def export_float_graphs(model: nn.Module, folder: Path) -> dict:
    """The five float32 NAME.onnx of a merged streaming model into `folder`; returns the dimensions."""
    check_streaming_model(model)
    model = model.eval().float().cpu()
    dims = dimensions(model)
    folder.mkdir(parents=True, exist_ok=True)
    for graph in GRAPHS:
        export_graph(model, graph, dims, folder / f"{graph}.onnx")
    return dims


def ship_graphs(float_dir: Path, out_dir: Path, dims: dict, precision: str = "int8",
                scheme: Int8Scheme = DEFAULT_SCHEME, tokenizer_bin: str | Path | None = None,
                keep_onnx: bool = False) -> dict:
    """The runtime's folder from five float .onnx graphs (export_float_graphs): quantized under `scheme`
    (int8) or not, converted to ORT format, with streaming_config.json and tokenizer.bin."""
    from moonlora.model import bundled

    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: pick one of {', '.join(PRECISIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    floats = GRAPHS if precision == "float32" else scheme.float_graphs
    with tempfile.TemporaryDirectory(prefix="moonlora-streaming-") as work:
        work = Path(work)
        (work / "float").mkdir()
        (work / "final").mkdir()
        for graph in GRAPHS:
            source = shutil.copy2(Path(float_dir) / f"{graph}.onnx", work / "float" / f"{graph}.onnx")
            if graph in floats:
                shutil.copy2(source, work / "final" / f"{graph}.onnx")
            else:
                quantize_graph(Path(source), work / "final" / f"{graph}.onnx", scheme)
        convert_memoized(work / "final", out_dir)
        if keep_onnx:
            shutil.copytree(work / "final", out_dir / "onnx", dirs_exist_ok=True)
    for leftover in out_dir.glob("*required_operators*.config"):
        leftover.unlink()
    (out_dir / CONFIG_FILE).write_text(json.dumps(streaming_config(dims), indent=2) + "\n", encoding="utf-8")
    shutil.copy2(Path(tokenizer_bin) if tokenizer_bin is not None else bundled.tokenizer_bin_path(),
                 out_dir / TOKENIZER_FILE)
    missing = [name for name in MODEL_FILES if not (out_dir / name).is_file()]
    if missing:
        raise ToolError(f"onnxruntime.tools.convert_onnx_models_to_ort: {', '.join(missing)} not written in {out_dir}")
    return {"folder": str(out_dir), "precision": precision, "opset": OPSET, "graphs": list(GRAPHS),
            "float_graphs": [graph for graph in GRAPHS if graph in floats],
            "quantizer": None if precision == "float32" else scheme.describe(),
            "rounding": None if precision == "float32" else scheme.rounding,
            "per_channel": None if precision == "float32" else scheme.per_channel,
            "window_bounds": WINDOW_BOUNDS}


def export_streaming(model: nn.Module, out_dir: str | Path, precision: str = "int8",
                     tokenizer_bin: str | Path | None = None, keep_onnx: bool = False,
                     scheme: Int8Scheme = DEFAULT_SCHEME) -> dict:
    """The runtime's streaming folder for a merged Moonshine Streaming model: five NAME.ort graphs,
    streaming_config.json and tokenizer.bin. Returns a summary (precision, opset, float graphs, quantizer)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: pick one of {', '.join(PRECISIONS)}")
    check_streaming_model(model)
    with tempfile.TemporaryDirectory(prefix="moonlora-streaming-float-") as work:
        dims = export_float_graphs(model, Path(work))
        return ship_graphs(Path(work), Path(out_dir), dims, precision, scheme, tokenizer_bin, keep_onnx)
