"""Moonshine Streaming's five runtime graphs through onnxruntime: loaded, checked, and decoded clip by clip.

A streaming folder in the runtime's layout (what `moonlora.ship.streaming_export` writes):
`frontend.ort`, `encoder.ort`, `adapter.ort`, `cross_kv.ort`, `decoder_kv.ort`,
`streaming_config.json` and `tokenizer.bin`. `StreamingOrtModel` runs them the way the runtime does:
the frontend over the clip (whole, or in chunks carrying its sample and convolution state), the
encoder over the clip's features, the adapter from position 0, the cross-attention K/V once, then
greedy `decoder_kv` steps with the self-attention cache (start `bos_id`, end `eos_id` from the config),
under the same per-clip token cap as the torch path. It has the `encode`/`greedy` members
`moonlora.model.ort.OrtDecoder` drives, so the same `Decoder` scores both ORT layouts.

What the moonshine-voice runtime does differently (read from its source, core/transcriber.cpp,
`Transcriber::transcribe_segment_with_streaming_model`, and pinned by tests/test_edge_runtime.py): it
cuts the audio into voice-activity lines and hands each line's samples to the frontend in chunks of
`RUNTIME_CHUNK` (1280 samples, 80 ms), whole chunks only; a completed line is not called again, so the
last `len % 1280` samples of every line (under 80 ms) never reach the model (`runtime_samples`). Its
token cap is still ceil(6.5 x the whole line's seconds), at most 256. This backend feeds the whole clip,
as the torch path does, so `export_parity` compares the same audio; on a line the two differ by that tail.

Recorded in the eval contract: runtime onnxruntime with the graphs' precision (int8 when any graph
is), model type `moonshine_streaming`, and `model_sha256` = sha256 of the five graphs,
`streaming_config.json` and `tokenizer.bin` concatenated in that order.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moonlora.errors import ModelSourceError
from moonlora.model.decoder import repetition_cut
from moonlora.model.ort import _require_io, _session, graph_precision

GRAPHS = ("frontend", "encoder", "adapter", "cross_kv", "decoder_kv")
CONFIG_FILE = "streaming_config.json"
TOKENIZER_FILE = "tokenizer.bin"
MODEL_FILES = (*(f"{name}.ort" for name in GRAPHS), CONFIG_FILE, TOKENIZER_FILE)  # also the artifact hash's order
MODEL_TYPE = "moonshine_streaming"
_IO = {  # what each graph must take and give (the runtime binds these names)
    "frontend": (("audio_chunk", "sample_buffer", "sample_len", "conv1_buffer", "conv2_buffer", "frame_count"),
                 ("features", "sample_buffer_out", "sample_len_out", "conv1_buffer_out", "conv2_buffer_out",
                  "frame_count_out")),
    "encoder": (("features",), ("encoded",)),
    "adapter": (("encoded", "pos_offset"), ("memory",)),
    "cross_kv": (("memory",), ("k_cross", "v_cross")),
    "decoder_kv": (("token", "k_self", "v_self", "out_k_cross", "out_v_cross"),
                   ("logits", "out_k_self", "out_v_self", "out_k_cross", "out_v_cross")),
}
_CONFIG_KEYS = ("depth", "nheads", "head_dim", "bos_id", "eos_id", "frontend_state_shapes")
_STATES = ("sample_buffer", "sample_len", "conv1_buffer", "conv2_buffer", "frame_count")
RUNTIME_CHUNK = 1280  # samples moonshine-voice hands its streaming frontend per call (80 ms at 16 kHz)


def runtime_samples(waveform: np.ndarray) -> np.ndarray:
    """The samples of one line that moonshine-voice's streaming transcriber feeds the frontend: its whole
    RUNTIME_CHUNK-sample chunks (`chunk_count = new_audio_length / chunk_size`); the rest never is."""
    return waveform[: len(waveform) // RUNTIME_CHUNK * RUNTIME_CHUNK]


def is_streaming_folder(folder: Path) -> bool:
    """A folder in the runtime's streaming layout (any of its graphs, or its config)."""
    return (folder / CONFIG_FILE).is_file() or any((folder / f"{name}.ort").is_file() for name in GRAPHS)


@dataclass
class StreamingOrtModel:
    """The five sessions of one streaming folder and its config; `OrtDecoder` decodes with them."""

    folder: Path
    sessions: dict  # graph name -> onnxruntime.InferenceSession
    config: dict  # streaming_config.json
    precision: str  # int8 if any graph is, else float16 / float32
    artifact_sha256: str

    def initial_state(self) -> dict[str, np.ndarray]:
        """The frontend's state at the start of a stream: zeros of the config's shapes."""
        shapes = self.config["frontend_state_shapes"]
        return {name: np.zeros(shapes[name], dtype=np.int64 if name in ("sample_len", "frame_count") else np.float32)
                for name in _STATES}

    def features(self, waveform: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """(1, frames, encoder_dim) features of one clip: the frontend over it whole (chunk None) or in chunks
        of `chunk` samples, its state carried from call to call. Samples after the last whole frame are
        left in the state, as the runtime leaves them."""
        samples = np.ascontiguousarray(waveform, dtype=np.float32)[None, :]
        step = samples.shape[1] if chunk is None else chunk
        state, pieces = self.initial_state(), []
        for start in range(0, samples.shape[1], max(step, 1)):
            outputs = self.sessions["frontend"].run(None, {"audio_chunk": samples[:, start:start + step], **state})
            pieces.append(outputs[0])
            state = dict(zip(_STATES, outputs[1:]))
        return np.concatenate(pieces, axis=1)

    def encode(self, waveform: np.ndarray, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cross-attention keys and values of one clip, (layers, 1, heads, frames, head_dim) each."""
        features = self.features(waveform, chunk)
        if features.shape[1] < 1:
            raise ValueError(f"a clip of {len(waveform)} samples gives no encoder frame")
        (encoded,) = self.sessions["encoder"].run(None, {"features": features})
        (memory,) = self.sessions["adapter"].run(None, {"encoded": encoded, "pos_offset": np.zeros(1, np.int64)})
        keys, values = self.sessions["cross_kv"].run(None, {"memory": memory})
        return keys, values

    def greedy(self, cross: tuple[np.ndarray, np.ndarray], cap: int, guard: int = 0) -> list[int]:
        """Generated tokens (end included) for one clip; after cap - 1 tokens without an end, the end is
        forced (and not computed), as `moonlora.model.torch_decoder.PerClipTokenCap` does; with the
        repetition guard on (`guard` > 0) a loop ends the clip too, cut back to its first copy."""
        depth, heads, head_dim = (self.config[key] for key in ("depth", "nheads", "head_dim"))
        empty = np.zeros((depth, 1, heads, 0, head_dim), dtype=np.float32)
        feed = {"k_self": empty, "v_self": empty, "out_k_cross": cross[0], "out_v_cross": cross[1]}
        tokens, token, eos = [], self.config["bos_id"], self.config["eos_id"]
        for _ in range(cap - 1):
            logits, feed["k_self"], feed["v_self"], _, _ = self.sessions["decoder_kv"].run(
                None, {**feed, "token": np.array([[token]], dtype=np.int64)})
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if token == eos:
                return tokens
            if guard and (cut := repetition_cut(tokens, guard)) is not None:
                return [*tokens[:cut], eos]
        return [*tokens, eos]


def artifact_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSourceError(f"{path}: not a streaming config ({type(error).__name__}: {error})") from None
    missing = [key for key in _CONFIG_KEYS if not isinstance(config, dict) or key not in config]
    if missing:
        raise ModelSourceError(f"{path}: lacks {', '.join(missing)}; export the folder again (moonlora export)")
    shapes = config["frontend_state_shapes"]
    if not isinstance(shapes, dict) or any(name not in shapes for name in _STATES):
        raise ModelSourceError(f"{path}: frontend_state_shapes must name {', '.join(_STATES)}")
    return config


def load_streaming_model(folder: Path, spec: str):
    """(StreamingOrtModel, tokenizer) of a streaming folder; every problem is a one-line ModelSourceError."""
    from moonlora.model.tokenizer import build_hf_tokenizer

    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelSourceError(f"--model {spec}: {folder} lacks {', '.join(missing)}; a streaming ORT folder holds "
                               f"{', '.join(MODEL_FILES)}")
    config = _read_config(folder)
    sessions, precisions = {}, []
    for name in GRAPHS:
        path = folder / f"{name}.ort"
        sessions[name] = _session(path)
        _require_io(sessions[name], path, *_IO[name])
        try:
            precisions.append(graph_precision(path))
        except (OSError, ValueError, IndexError, TypeError, struct.error, UnicodeDecodeError) as error:
            raise ModelSourceError(f"{path}: cannot read its graph ({type(error).__name__}: {error})") from None
    precision = next((p for p in ("int8", "float16") if p in precisions), "float32")
    try:
        tokenizer = build_hf_tokenizer(folder / TOKENIZER_FILE)
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"{folder / TOKENIZER_FILE}: not a Moonshine tokenizer.bin ({error})") from None
    return StreamingOrtModel(folder, sessions, config, precision, artifact_sha256(folder)), tokenizer
