"""Moonshine's ONNX Runtime (`.ort`) graphs, as moonshine ships them: loaded, checked, and decoded.

A model folder in the layout of the moonshine-cpp wheel's `base-en` folder:

- `encoder_model.ort` — waveform (1, samples) -> `last_hidden_state`; it takes no attention mask,
  so every clip is encoded on its own (as the torch path does too);
- `decoder_model_merged.ort` — one decoder step with a KV cache (`use_cache_branch`);
- `tokenizer.bin` — the vocabulary; detokenised with the same tokenizer moonlora builds for the
  bundled model (`moonlora.model.tokenizer.build_hf_tokenizer`).

`OrtDecoder` is the onnxruntime `Decoder` (`moonlora.model.decoder`) of this layout and of the runtime's
Moonshine Streaming layout (`moonlora.model.ort_streaming.StreamingOrtModel` has the same `encode` and
`greedy`): greedy (start token 1, end 2)
with the same per-clip token cap as the torch path (`DecodeConfig.token_cap`, enforced like
`torch_decoder.PerClipTokenCap`: end-of-sequence is forced once a clip has generated cap - 1
tokens), so `evaluate_manifest` scores an ORT folder with the same manifest, audio pipeline,
decode settings and metrics.

Recorded in the eval contract: `runtime = {"name": "onnxruntime", "precision": ...}`, where the
precision is read from the graphs (`graph_precision`), and `model_sha256` = the artifact hash,
sha256 of `encoder_model.ort`, `decoder_model_merged.ort` and `tokenizer.bin` concatenated in
that order (`cat encoder_model.ort decoder_model_merged.ort tokenizer.bin | sha256sum`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moonlora.configs import DecodeConfig
from moonlora.errors import ModelSourceError
from moonlora.model.decoder import one_clip_at_a_time, repetition_cut

RUNTIME_NAME = "onnxruntime"
ENCODER_FILE = "encoder_model.ort"
DECODER_FILE = "decoder_model_merged.ort"
TOKENIZER_FILE = "tokenizer.bin"
MODEL_FILES = (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE)  # also the artifact hash's order
DECODER_START_ID, EOS_ID = 1, 2  # <s> and </s> in tokenizer.bin; Moonshine's start and end tokens
# Operators that run on quantized tensors; any of them, or any int8/uint8 weight, makes a graph int8.
QUANTIZED_OPS = frozenset({"DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
                           "ConvInteger", "QLinearConv", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})


@dataclass
class OrtModel:
    """The two ONNX Runtime sessions of one model folder; `OrtDecoder` decodes with them."""

    folder: Path
    encoder: object  # onnxruntime.InferenceSession
    decoder: object  # onnxruntime.InferenceSession
    precision: str  # int8 | float16 | float32, from the graphs
    artifact_sha256: str
    past_shapes: dict  # decoder KV-cache input -> its empty (1, heads, 0, head_dim) shape

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """(1, frames, hidden) encoder states of one 16 kHz clip."""
        inputs = np.ascontiguousarray(waveform, dtype=np.float32)[None, :]
        (hidden,) = self.encoder.run(["last_hidden_state"], {"input_values": inputs})
        return hidden

    def greedy(self, encoder_hidden: np.ndarray, cap: int, guard: int = 0) -> list[int]:
        """Generated tokens (end-of-sequence included) for one clip, capped like PerClipTokenCap:
        after cap - 1 tokens without an end, the end is forced (and not computed); with the repetition
        guard on (`guard` > 0) a loop ends the clip too, cut back to its first copy."""
        past_names = list(self.past_shapes)
        past = {name: np.zeros(shape, dtype=np.float32) for name, shape in self.past_shapes.items()}
        output_names = [o.name for o in self.decoder.get_outputs()]
        tokens, token = [], DECODER_START_ID
        for step in range(cap - 1):
            feed = {"input_ids": np.array([[token]], dtype=np.int64), "encoder_hidden_states": encoder_hidden,
                    "use_cache_branch": np.array([step > 0]), **past}
            outputs = dict(zip(output_names, self.decoder.run(output_names, feed)))
            token = int(outputs["logits"][0, -1].argmax())
            tokens.append(token)
            if token == EOS_ID:
                return tokens
            if guard and (cut := repetition_cut(tokens, guard)) is not None:
                return [*tokens[:cut], EOS_ID]
            for name in past_names:
                # Cached steps return empty cross-attention K/V: keep the ones computed at step 0.
                if ".decoder." in name or step == 0:
                    past[name] = outputs[name.replace("past_key_values.", "present.")]
        return [*tokens, EOS_ID]


def _past_shapes(decoder, path: Path) -> dict[str, tuple[int, ...]]:
    """Each KV-cache input's empty shape (1, heads, 0, head_dim), from its (batch, heads, length,
    head_dim) declaration."""
    shapes = {}
    for item in decoder.get_inputs():
        if item.name.startswith("past_key_values."):
            shape = list(item.shape or [])
            if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[1], shape[3])):
                raise ModelSourceError(f"{path}: KV-cache input {item.name!r} has shape {shape}, expected "
                                       "(batch, heads, length, head_dim) with fixed heads and head_dim")
            shapes[item.name] = (1, shape[1], 0, shape[3])
    if not shapes:
        raise ModelSourceError(f"{path}: not a merged Moonshine decoder with a KV cache (no past_key_values inputs)")
    return shapes


def is_ort_folder(folder: Path) -> bool:
    """A folder holding Moonshine ORT graphs (loaded through onnxruntime when no prefix says so)."""
    return (folder / ENCODER_FILE).is_file() or (folder / DECODER_FILE).is_file()


def artifact_sha256(folder: Path) -> str:
    """sha256 of the model files concatenated in MODEL_FILES order."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _graph_ops_and_types(graph, ops: set[str], types: set[int]) -> None:
    for i in range(graph.InitializersLength()):
        types.add(graph.Initializers(i).DataType())
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        ops.add(node.OpType().decode())
        for j in range(node.AttributesLength()):
            subgraph = node.Attributes(j).G()
            if subgraph is not None:
                _graph_ops_and_types(subgraph, ops, types)


def graph_precision(path: Path) -> str:
    """"int8" when the graph holds int8/uint8 weights or quantized operators, else "float16" when
    it holds float16 weights, else "float32". Read from the ORT flatbuffer (no onnx needed)."""
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on sys.path)
    from ort_flatbuffers_py import fbs

    session = fbs.InferenceSession.InferenceSession.GetRootAs(Path(path).read_bytes(), 0)
    if session.Model() is None or session.Model().Graph() is None:
        raise ValueError("not an ONNX Runtime ORT-format model")
    ops, types = set(), set()
    _graph_ops_and_types(session.Model().Graph(), ops, types)
    kinds = fbs.TensorDataType.TensorDataType
    if ops & QUANTIZED_OPS or types & {kinds.INT8, kinds.UINT8}:
        return "int8"
    return "float16" if kinds.FLOAT16 in types else "float32"


def _session(path: Path):
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    # onnxruntime's own errors derive from Exception only, not from RuntimeError.
    load_errors = (OSError, RuntimeError, ValueError, state.Fail, state.InvalidArgument, state.InvalidGraph,
                   state.InvalidProtobuf, state.NoSuchFile, state.NotImplemented, state.RuntimeException)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except load_errors as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"{path}: onnxruntime cannot load it ({reason}); copy the model folder again") from None


def _require_io(session, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [f"input {n!r}" for n in inputs if n not in have_in]
    missing += [f"output {n!r}" for n in outputs if n not in have_out]
    if missing:
        raise ModelSourceError(f"{path}: not a Moonshine {path.name} graph (no {', '.join(missing)})")


def load_ort_model(folder: Path, spec: str):
    """(OrtModel, tokenizer) of an ORT model folder; every problem is a one-line ModelSourceError."""
    from moonlora.model.tokenizer import build_hf_tokenizer

    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise ModelSourceError(f"--model {spec}: {folder} {what}")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelSourceError(
            f"--model {spec}: {folder} lacks {', '.join(missing)}; an ORT model folder holds "
            f"{', '.join(MODEL_FILES)}"
        )
    encoder, decoder = _session(folder / ENCODER_FILE), _session(folder / DECODER_FILE)
    _require_io(encoder, folder / ENCODER_FILE, ("input_values",), ("last_hidden_state",))
    _require_io(decoder, folder / DECODER_FILE, ("input_ids", "encoder_hidden_states", "use_cache_branch"), ("logits",))
    precisions = []
    for name in (ENCODER_FILE, DECODER_FILE):
        try:
            precisions.append(graph_precision(folder / name))
        except (OSError, ValueError, IndexError, TypeError, struct.error, UnicodeDecodeError) as error:
            # a flatbuffer that onnxruntime read but the generated reader does not
            raise ModelSourceError(f"{folder / name}: cannot read its graph ({type(error).__name__}: {error})") \
                from None
    precision = next((p for p in ("int8", "float16") if p in precisions), "float32")
    try:
        tokenizer = build_hf_tokenizer(folder / TOKENIZER_FILE)
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"{folder / TOKENIZER_FILE}: not a Moonshine tokenizer.bin ({error})") from None
    model = OrtModel(folder, encoder, decoder, precision, artifact_sha256(folder),
                     _past_shapes(decoder, folder / DECODER_FILE))
    return model, tokenizer


class OrtDecoder:
    """The onnxruntime `Decoder`: clip by clip in input order (the encoder graph takes no attention
    mask), greedy, per-clip token cap. The waveform goes in raw: the graphs read samples."""

    def __init__(self, model: OrtModel, feature_extractor, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling_rate = feature_extractor.sampling_rate

    def check(self, config: DecodeConfig) -> None:
        if config.num_beams != 1:
            raise ModelSourceError(
                f"num_beams {config.num_beams}: the onnxruntime backend decodes greedily; use num_beams 1"
            )

    def batches(self, durations: Sequence[float], config: DecodeConfig) -> list[list[int]]:
        return one_clip_at_a_time(durations)

    def encode(self, waveforms: list[np.ndarray], config: DecodeConfig) -> list[np.ndarray]:
        return [self.model.encode(waveform) for waveform in waveforms]

    def generate(self, encoded: list[np.ndarray], caps: list[int], config: DecodeConfig) -> list[list[int]]:
        special = {DECODER_START_ID, EOS_ID}
        return [[token for token in self.model.greedy(hidden, cap, config.repetition_guard) if token not in special]
                for hidden, cap in zip(encoded, caps)]

    def detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
