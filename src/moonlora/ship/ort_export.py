"""Route (a) of shipping a merged model: patch its weights into copies of the bundled `.ort` graphs.

The moonshine-voice runtime (C++ over onnxruntime) loads a folder holding `encoder_model.ort`,
`decoder_model_merged.ort` and `tokenizer.bin`. `write_merged_ort` writes such a folder for a
merged (LoRA merged into base) Moonshine base model: the graphs are byte-for-byte copies of the
bundled ones except for the bytes of the weight initializers, which are overwritten in place, so
file names, graph inputs/outputs, operators and the quantization scheme stay exactly as shipped.

The bundled quantization scheme, found by inspecting the files (`convert.py` reads them the same way):

* Every linear and conv weight (51 in the encoder: conv1-3 and q/k/v/o/fc1/fc2 of 8 layers; 81 in
  the merged decoder: self- and cross-attention q/k/v/o and fc1/fc2 of 8 layers, plus the token
  embedding) is an INT8 initializer `<name>_quantized` with the weight's shape, dequantized by the
  chain `Cast(to float) -> Mul(<name>_scale) -> Add(<name>_zero_point)`:  w = float(q) * s + z.
  Biases and norm weights are plain float32 initializers.
* `s` and `z` are float32 tensors of shape [1]: one scale per tensor (no per-channel scales).
* Asymmetric: `z` is a float, but on all 132 tensors `z == float32(k * s)` bit for bit with k an
  integer in [-65, 25]. That is uint8-style min/max quantization stored as int8:
  w = (q + 128 - zp) * s with integer zero point zp = 128 - k in [0, 255].
* Every tensor uses the full int8 range: min(q) = -128 and max(q) = 127, each reached by 1 to 3
  values (the weight's extremes), and every dequantized range contains 0. So s = (max(w, 0) - min(w, 0)) / 255 with
  zp = round(-min(w, 0) / s), as onnxruntime's and most min/max quantizers compute it.
* The merged decoder keeps all quantized initializers and their Cast/Mul/Add chains in its main
  graph; both If branches read the dequantized values from there (only the no-cache branch reads
  the cross-attention K/V projections). The embedding's dequantized value feeds the Gather and,
  through a Transpose, `/proj_out/MatMul`: the output layer is tied to the embedding.

Re-quantization of a merged weight W with the old (s, z): q = clip(round((W - z) / s), -128, 127).
When no value rounds outside [-128, 127] the old scale is kept: every weight is then within one
step of W (half a step with nearest rounding), and an unchanged weight (which is exactly a
dequantized value) gives back its original bytes.

Rounding is stochastic by default (seeded per tensor name, so an export is reproducible). The
shipped weights sit exactly on the grid, so nearest rounding of W = shipped + LoRA delta rounds the
delta alone and drops every entry under half a step. Measured on the recorded ATC run (100 steps,
99 held-out clips, docs/training.md): torch-merged WER 0.0338; int8 export with nearest rounding
0.1441 (+0.110 [+0.073, +0.151], 57/99 identical texts: most of the adaptation lost); with
stochastic rounding 0.0326 (-0.001 [-0.004, 0.000], 96/99 identical texts).
Otherwise a new scale and zero point are computed as above (both [1]-float32, same byte length) and
overwritten too. Every byte range is written once; two consumers of one initializer that need
different bytes (the tied embedding and output layer, the decoder's two If branches, a shared
scale) raise a ValueError.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on sys.path)
import torch
from ort_flatbuffers_py import fbs

from moonlora.errors import InputError, ToolError
from moonlora.model import bundled
from moonlora.model.convert import OrtGraph, OrtScope, moonshine_base_config, ort_weight_sources

ENCODER_FILE = "encoder_model.ort"
DECODER_FILE = "decoder_model_merged.ort"
TOKENIZER_FILE = "tokenizer.bin"
class GraphPatchError(ToolError, ValueError):
    """The bundled graphs are not what route (a) patches, or the weights do not fit them (one line, naming the graph)."""


ROUTE_A_ERROR = "route (a) needs the bundled base-en graphs"

_INT8 = fbs.TensorDataType.TensorDataType.INT8
_FLOAT = fbs.TensorDataType.TensorDataType.FLOAT
_RAW_DATA_FIELD = 12  # vtable offset of Tensor.raw_data in the ORT flatbuffer schema (see fbs/Tensor.py)
_QMIN, _QMAX = -128, 127
# The configuration fields that decide whether a model fits the bundled graphs.
_SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "encoder_num_hidden_layers", "decoder_num_hidden_layers",
    "encoder_num_attention_heads", "decoder_num_attention_heads", "encoder_num_key_value_heads",
    "decoder_num_key_value_heads", "encoder_hidden_act", "decoder_hidden_act",
)
# Extra weight sources beyond convert's: the output layer, tied to the embedding in the graph.
_DECODER_EXTRA = {"proj_out.weight": ("/proj_out/MatMul", None, True)}


# ----------------------------------------------------------------------------------------------
# Reading: where each weight's bytes live in the flatbuffer


@dataclass(frozen=True)
class _Blob:
    """One initializer's raw bytes inside the file buffer."""

    name: str
    start: int
    length: int
    dtype: type
    dims: tuple[int, ...]

    def read(self, buf: bytes | bytearray) -> np.ndarray:
        return np.frombuffer(buf, dtype=self.dtype, count=self.length // np.dtype(self.dtype).itemsize,
                             offset=self.start).reshape(self.dims)


@dataclass(frozen=True)
class _Store:
    """Where a weight is stored: a float32 initializer, or an int8 one with its scale and zero point."""

    data: _Blob
    scale: _Blob | None = None
    zero_point: _Blob | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None


def _blob(tensor: fbs.Tensor.Tensor, path: Path) -> _Blob:
    name = tensor.Name().decode()
    dtype = {_INT8: np.int8, _FLOAT: np.float32}.get(tensor.DataType())
    if dtype is None or tensor.RawDataIsNone() or tensor.ExternalDataOffset() >= 0:
        raise GraphPatchError(f"{path}: initializer {name!r} is not int8/float32 raw data; cannot patch it in place")
    offset = tensor._tab.Offset(_RAW_DATA_FIELD)
    start, length = tensor._tab.Vector(offset), tensor._tab.VectorLen(offset)
    dims = tuple(int(d) for d in tensor.DimsAsNumpy()) if tensor.DimsLength() else ()
    if length != int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise GraphPatchError(f"{path}: initializer {name!r} holds {length} bytes, not its shape {dims}")
    return _Blob(name, start, length, dtype, dims)


def _inputs(node: fbs.Node.Node) -> list[str]:
    return [node.Inputs(j).decode() for j in range(node.InputsLength())]


class _GraphFile(OrtGraph):
    """An .ort file (read by `convert.OrtGraph`) and where each weight's bytes are stored."""

    def __init__(self, path: Path) -> None:
        try:
            super().__init__(path)
        except ValueError as error:
            raise GraphPatchError(f"{error}; {ROUTE_A_ERROR}") from None

    def trace(self, scope: OrtScope, name: str) -> tuple[_Store, bool] | None:
        """The store behind value `name` and whether the value is its transpose; None if not a weight."""
        found = scope.lookup(name)
        if found is None:
            return None
        _, tensor, node = found
        if tensor is not None:
            if tensor.DataType() != _FLOAT:
                return None
            return _Store(_blob(tensor, self.path)), False
        op = node.OpType().decode()
        if op == "Transpose":
            inner = self.trace(scope, _inputs(node)[0])
            return None if inner is None else (inner[0], not inner[1])
        if op == "Add":
            return self._dequantized(scope, node)
        return None

    def _dequantized(self, scope: OrtScope, add: fbs.Node.Node) -> tuple[_Store, bool] | None:
        """Match Add(Mul(Cast(int8 q), scale), zero_point) with all three initializers."""
        def producer(name, op):
            found = scope.lookup(name)
            if found is not None and found[2] is not None and found[2].OpType().decode() == op:
                return found[2]
            return None

        def initializer(name):
            found = scope.lookup(name)
            return None if found is None else found[1]

        for mul_in, zp_in in (_inputs(add), _inputs(add)[::-1]):
            mul, zero_point = producer(mul_in, "Mul"), initializer(zp_in)
            if mul is None or zero_point is None:
                continue
            for cast_in, scale_in in (_inputs(mul), _inputs(mul)[::-1]):
                cast, scale = producer(cast_in, "Cast"), initializer(scale_in)
                if cast is None or scale is None:
                    continue
                quantized = initializer(_inputs(cast)[0])
                if quantized is None or quantized.DataType() != _INT8:
                    continue
                store = _Store(_blob(quantized, self.path), _blob(scale, self.path), _blob(zero_point, self.path))
                if store.scale.dtype != np.float32 or store.zero_point.dtype != np.float32 or \
                        store.scale.dims != (1,) or store.zero_point.dims != (1,):
                    raise GraphPatchError(f"{self.path}: {store.data.name!r} is not quantized per tensor with "
                                     "float32 scale and zero point; this scheme is not supported")
                return store, False
        return None

    def weight_inputs(self, node_name: str, index: int | None) -> list[tuple[_Store, bool]]:
        """The stored weight feeding node `node_name`, once per occurrence (If branches repeat nodes)."""
        found = []
        for scope, node in self.nodes.get(node_name, []):
            names = _inputs(node)
            if index is not None:
                traced = [self.trace(scope, names[index])] if index < len(names) else []
            else:
                traced = [self.trace(scope, n) for n in names]
                traced = [t for t in traced if t is not None and int(np.prod(t[0].data.dims)) > 1]
            traced = [t for t in traced if t is not None]
            if len(traced) != 1:
                raise GraphPatchError(f"{self.path}: node {node_name!r} has {len(traced)} stored weight inputs, "
                                 f"expected 1; {ROUTE_A_ERROR}")
            found.append(traced[0])
        if not found:
            raise GraphPatchError(f"{self.path}: no node named {node_name!r}; {ROUTE_A_ERROR}")
        return found


# ----------------------------------------------------------------------------------------------
# Quantizing


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """float32 Cast -> Mul -> Add, in the graph's order, as onnxruntime evaluates it."""
    return q.astype(np.float32) * scale.astype(np.float32) + zero_point.astype(np.float32)


ROUNDINGS = ("nearest", "stochastic")


def _round_to_levels(w: np.ndarray, scale: np.float32, zero_point: np.float32,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Nearest int8 level; with `rng`, stochastic rounding (up with probability = the fraction).

    Why stochastic: a merged weight is the shipped int8 weight (exactly on the grid) plus the LoRA
    delta, so nearest rounding rounds the delta alone and drops every entry under half a step — a
    bias towards the base model. Stochastic rounding is unbiased (E[level] = exact value); an
    unchanged weight has fraction 0 and keeps its bytes.
    """
    exact = (w.astype(np.float64) - np.float64(zero_point)) / np.float64(scale)
    if rng is None:
        return np.rint(exact)
    exact = np.where(np.abs(exact - np.rint(exact)) < 1e-3, np.rint(exact), exact)  # on the grid (float error): stay
    low = np.floor(exact)
    return low + (rng.random(exact.shape) < (exact - low))


def min_max_scale(w: np.ndarray) -> tuple[np.float32, np.float32]:
    """The bundled scheme's (scale, zero point offset) for w: uint8 min/max range including 0,
    integer zero point, stored as int8 with offset z = (128 - zp) * scale."""
    rmin, rmax = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = np.float32((rmax - rmin) / (_QMAX - _QMIN)) if rmax > rmin else np.float32(1.0)
    for _ in range(64):  # float32 rounding of the scale may push an end one level out: widen by an ulp
        zp = int(np.clip(np.rint(-rmin / float(scale)), 0, _QMAX - _QMIN))
        zero_point = np.float32(np.float64(-_QMIN - zp) * np.float64(scale))
        levels = _round_to_levels(np.array([rmin, rmax]), scale, zero_point)
        if levels[0] >= _QMIN and levels[1] <= _QMAX:
            return scale, zero_point
        scale = np.nextafter(scale, np.float32(np.inf))
    raise AssertionError("no float32 scale covers the range")  # unreachable for finite weights


@dataclass
class _Quantized:
    q: np.ndarray
    scale: np.float32
    zero_point: np.float32
    new_scale: bool


def requantize(w: np.ndarray, scale: np.float32, zero_point: np.float32,
               rng: np.random.Generator | None = None) -> _Quantized:
    """int8 levels for w: with the old scale if every value rounds inside [-128, 127], else a new one
    (nearest rounding, or stochastic with `rng`)."""
    if not np.isfinite(w).all():
        raise InputError("a merged weight holds NaN or infinity: the adapter diverged; train it again with a lower "
                         "--learning-rate")
    levels = _round_to_levels(w, scale, zero_point, rng)
    new_scale = bool(levels.min() < _QMIN or levels.max() > _QMAX)
    if new_scale:
        scale, zero_point = min_max_scale(w)
        levels = _round_to_levels(w, scale, zero_point, rng)
    q = np.clip(levels, _QMIN, _QMAX).astype(np.int8)
    return _Quantized(q, np.float32(scale), np.float32(zero_point), new_scale)


# ----------------------------------------------------------------------------------------------
# Writing


class _Patch:
    """In-place writes into a copy of one file; each byte range is written once, consistently."""

    def __init__(self, graph: _GraphFile) -> None:
        self.path = graph.path
        self.buffer = bytearray(graph.data)
        self._written: dict[int, tuple[bytes, str]] = {}

    def write(self, blob: _Blob, values: np.ndarray, who: str) -> None:
        data = np.ascontiguousarray(values, dtype=blob.dtype).tobytes()
        if len(data) != blob.length:
            raise GraphPatchError(f"{self.path}: {who} has {len(data)} bytes for {blob.name!r} of {blob.length}")
        if blob.start in self._written:
            previous, previous_who = self._written[blob.start]
            if previous != data:
                raise GraphPatchError(f"{self.path}: initializer {blob.name!r} is shared by {previous_who} and {who}, "
                                 "which need different values; the graph cannot hold both")
            return
        self._written[blob.start] = (data, who)
        self.buffer[blob.start:blob.start + blob.length] = data

    def bytes_changed(self, original: bytes) -> int:
        a = np.frombuffer(original, dtype=np.uint8)
        b = np.frombuffer(bytes(self.buffer), dtype=np.uint8)
        return int((a != b).sum())


def _group(key: str) -> str:
    """A tensor group name for error statistics: encoder.attention, decoder.mlp, decoder.embed_tokens..."""
    side = "encoder" if ".encoder." in key else "decoder"
    for pattern, group in ((r"\.conv\d", "conv"), (r"self_attn", "self_attn" if side == "decoder" else "attention"),
                           (r"encoder_attn", "cross_attn"), (r"\.mlp\.", "mlp"),
                           (r"embed_tokens|proj_out", "embed_tokens")):
        if re.search(pattern, key):
            return f"{side}.{group}"
    return f"{side}.other"


def check_route_a(config) -> None:
    """Refuse (one-line ValueError) a model whose architecture is not the bundled Moonshine base."""
    base = moonshine_base_config()
    if config is None or getattr(config, "model_type", None) != "moonshine":
        raise InputError(f"{ROUTE_A_ERROR}: the model is not a Moonshine model")
    for name in _SHAPE_FIELDS:
        if getattr(config, name, None) != getattr(base, name):
            raise InputError(f"{ROUTE_A_ERROR}: the model is not Moonshine base "
                             f"({name} is {getattr(config, name, None)}, base-en has {getattr(base, name)})")


def check_export_model(spec: str, export: str = "ort") -> None:
    """Refuse (InputError, one line) a --model whose merged weights the bundled graphs cannot take, before any
    run: `experiment --export ort` patches the bundled base-en graphs (route (a)). A model whose configuration
    cannot be read here is left to the model loader, which names the problem."""
    if spec.startswith(("bundled:", "ort:")):
        return  # bundled:base-en is route (a) by construction; the loaders refuse anything else
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError):
        return
    from moonlora.model.families import FAMILIES, check_family_settings

    family = FAMILIES.get(config.model_type)
    if family is not None:  # a family without an export route is refused whole; the loader names other types
        check_family_settings(family, export, flag="--export")
        if "streaming-graphs" in family.export_routes:
            return  # its own exporter (moonlora.ship.streaming_export) takes any shape of the family
    try:
        check_route_a(config)
    except InputError as error:
        raise InputError(f"--export {export} --model {spec}: {error}; drop --export and run moonlora export "
                         "RUN --format ort after the run (it takes moonlora's ONNX route)") from None


def _check_model(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The merged float32 state of `model`, after checking it is Moonshine base."""
    if hasattr(model, "merge_and_unload"):  # a PeftModel: merge a copy, leave the caller's model as is
        model = copy.deepcopy(model).merge_and_unload()
    check_route_a(getattr(model, "config", None))
    return {k: v.detach().to(device="cpu", dtype=torch.float32).numpy() for k, v in model.state_dict().items()}


def _patch_file(graph: _GraphFile, sources: dict, state: dict[str, np.ndarray], stats: dict,
                rounding: str = "stochastic") -> _Patch:
    patch = _Patch(graph)
    # Collect every (store, layout) each transformers key reaches, grouped by stored initializer.
    wanted: dict[int, tuple[_Store, list[tuple[str, np.ndarray]]]] = {}
    for key, (node_name, index, transpose) in sources.items():
        if key not in state:
            raise InputError(f"{ROUTE_A_ERROR}: the model has no weight {key!r}")
        for store, store_is_transposed in graph.weight_inputs(node_name, index):
            value = state[key]
            if transpose != store_is_transposed:
                value = value.T
            if value.shape != store.data.dims:
                if value.size != int(np.prod(store.data.dims)) or \
                        [d for d in value.shape if d != 1] != [d for d in store.data.dims if d != 1]:
                    raise InputError(f"{ROUTE_A_ERROR}: {key!r} has shape {tuple(state[key].shape)}, the graph "
                                     f"stores {store.data.name!r} as {store.data.dims}")
                value = value.reshape(store.data.dims)
            wanted.setdefault(store.data.start, (store, []))[1].append((key, value))
    for store, uses in wanted.values():
        keys = [k for k, _ in uses]
        who = " and ".join(dict.fromkeys(keys))
        value = uses[0][1]
        for key, other in uses[1:]:
            if not np.array_equal(other, value):
                raise GraphPatchError(f"{graph.path}: {store.data.name!r} holds both {keys[0]!r} and {key!r} (tied in "
                                 "the graph), but the model's values differ; the graph cannot hold both")
        if not store.quantized:
            patch.write(store.data, value, who)
            stats["float_tensors"] += 1
            continue
        old_q = store.data.read(graph.data)
        old_scale = store.scale.read(graph.data)[0]
        old_zero_point = store.zero_point.read(graph.data)[0]
        source = dequantize(old_q, np.array([old_scale]), np.array([old_zero_point]))
        rng = None if rounding == "nearest" else np.random.default_rng(zlib.crc32(store.data.name.encode()))
        result = requantize(value, old_scale, old_zero_point, rng)
        patch.write(store.data, result.q, who)
        patch.write(store.scale, np.array([result.scale], dtype=np.float32), who)
        patch.write(store.zero_point, np.array([result.zero_point], dtype=np.float32), who)
        error = np.abs(dequantize(result.q, np.array([result.scale]), np.array([result.zero_point])) - value)
        group = stats["groups"].setdefault(_group(keys[0]), {"tensors": 0, "max_abs_error": 0.0,
                                                             "max_error_in_steps": 0.0, "new_scale": 0,
                                                             "max_change_in_steps": 0.0})
        group["tensors"] += 1
        # How far the merged weight moved from the shipped one, in the shipped step: changes under half
        # a step round back to the shipped bytes (a small adapter can vanish entirely).
        group["max_change_in_steps"] = max(group["max_change_in_steps"],
                                           float(np.abs(value - source).max() / old_scale))
        group["max_abs_error"] = max(group["max_abs_error"], float(error.max()))
        group["max_error_in_steps"] = max(group["max_error_in_steps"], float(error.max() / result.scale))
        group["new_scale"] += int(result.new_scale)
        stats["requantized"] += 1
        stats["new_scale"] += int(result.new_scale)
        stats["differing_tensors"] += int(not np.array_equal(value, source))
        stats["changed_tensors"] += int(not np.array_equal(result.q, old_q))
        stats["changed_values"] += int((result.q != old_q).sum())
    return patch


def _write_atomically(path: Path, data: bytes | bytearray) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_merged_ort(model: torch.nn.Module, out_dir: Path, source_dir: Path | None = None,
                     rounding: str = "stochastic") -> dict:
    """Write `model` (a merged Moonshine base; a PeftModel is merged on a copy) as `.ort` graphs.

    `out_dir` receives patched copies of `source_dir`'s `encoder_model.ort` and `decoder_model_merged.ort`
    (default: the bundled base-en folder) and a copy of its `tokenizer.bin`. Returns the scheme and the
    re-quantization statistics: tensors re-quantized, those whose merged weight differs from the shipped
    one, those whose int8 bytes changed (a change under half a step rounds back: compare the two to see
    how much of an adapter survived), those that needed a new scale, and per tensor group the largest
    |dequantized - merged| (also in units of that tensor's step) and the largest change from the shipped
    weight in shipped steps; bytes changed per file, seconds.
    """
    started = time.perf_counter()
    if rounding not in ROUNDINGS:
        raise InputError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    state = _check_model(model)
    source_dir = Path(source_dir) if source_dir is not None else bundled.base_en_dir()
    out_dir = Path(out_dir)
    missing = [n for n in (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE) if not (source_dir / n).is_file()]
    if missing:
        raise InputError(f"{ROUTE_A_ERROR}: {source_dir} lacks {', '.join(missing)}")
    if out_dir.exists() and out_dir.resolve() == source_dir.resolve():
        raise InputError(f"write_merged_ort: out_dir {out_dir} is the source folder; choose another")
    encoder_sources, decoder_sources = ort_weight_sources(moonshine_base_config())
    stats = {"requantized": 0, "new_scale": 0, "differing_tensors": 0, "changed_tensors": 0, "changed_values": 0,
             "float_tensors": 0, "groups": {}}
    patches = {}
    for file_name, sources in ((ENCODER_FILE, encoder_sources), (DECODER_FILE, decoder_sources | _DECODER_EXTRA)):
        graph = _GraphFile(source_dir / file_name)
        patches[file_name] = (graph, _patch_file(graph, sources, state, stats, rounding))
    out_dir.mkdir(parents=True, exist_ok=True)
    bytes_changed = {}
    for file_name, (graph, patch) in patches.items():
        _write_atomically(out_dir / file_name, patch.buffer)
        bytes_changed[file_name] = patch.bytes_changed(graph.data)
    shutil.copyfile(source_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    return {
        "rounding": rounding,
        "scheme": {
            "weights": "int8, one float32 scale and one float32 zero point per tensor (shape [1])",
            "dequantize": "w = float(q) * scale + zero_point  (Cast -> Mul -> Add)",
            "zero_point": "zero_point = (128 - zp) * scale, integer zp in [0, 255] (uint8 min/max, stored as int8)",
            "new_scale": "scale = (max(w, 0) - min(w, 0)) / 255, zp = round(-min(w, 0) / scale)",
        },
        "quantized_tensors": stats["requantized"],
        "requantized": stats["requantized"],
        "differing_tensors": stats["differing_tensors"],  # merged weight != shipped dequantized weight
        "changed_tensors": stats["changed_tensors"],  # int8 bytes differ from the shipped ones
        "changed_values": stats["changed_values"],  # int8 values that differ
        "new_scale": stats["new_scale"],
        "float_tensors": stats["float_tensors"],
        "groups": stats["groups"],
        "max_error_in_steps": max((g["max_error_in_steps"] for g in stats["groups"].values()), default=0.0),
        "bytes_changed": bytes_changed,
        "seconds": round(time.perf_counter() - started, 3),
        "files": [ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE],
    }
