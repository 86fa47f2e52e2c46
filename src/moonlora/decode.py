"""The one decode path: every transcription moonlora makes goes through `decode_clips`.

Adapter parity (the seed plan's H1) holds by construction: `decode_clips` calls `generate` on
the model object it is handed, so a PEFT model decodes with its active adapter; nothing here
unwraps it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DecodeConfig:
    """How Moonshine turns audio into text. Only `result_fields` can change a transcript."""

    num_beams: int = 1  # 1 = greedy search
    # Per-clip cap on generated tokens: ceil(tokens_per_second * seconds) + extra_tokens.
    # 6.5/s is Moonshine's runtime default; it stops the model's repeat-the-last-words loops.
    tokens_per_second: float = 6.5
    extra_tokens: int = 2
    dtype: str = "float32"  # model weights and inputs; bfloat16/float16 only on accelerators
    batch_size: int = 32  # eval_speed.py --sweep on 2 CPU cores: 30.5x real time vs 8.8x at batch 1
    sort_by_length: bool = True  # batch clips of similar length: less padding, same output
    device: str = "auto"  # auto | cpu | cuda | mps

    result_fields = ("num_beams", "tokens_per_second", "extra_tokens", "dtype")

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.tokens_per_second > 0 or self.extra_tokens < 1:
            raise ValueError("tokens_per_second must be > 0 and extra_tokens >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")

    def token_cap(self, seconds: float) -> int:
        return math.ceil(self.tokens_per_second * seconds) + self.extra_tokens

    def to_dict(self) -> dict:
        return asdict(self)

    def result_dict(self) -> dict:
        """The settings that can change a transcript (batching and device cannot)."""
        return {name: getattr(self, name) for name in self.result_fields}


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class PerClipTokenCap(LogitsProcessor):
    """Force end-of-sequence once a clip has generated its own cap (minus the EOS itself).

    `generate` takes one max_new_tokens per batch; this keeps each clip's cap its own, so a
    clip decodes the same in any batch.
    """

    def __init__(self, caps: list[int], eos_token_id: int, prompt_length: int, num_beams: int):
        self.caps = torch.tensor(caps).repeat_interleave(num_beams)
        self.eos_token_id = eos_token_id
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_length
        at_cap = (generated >= self.caps.to(scores.device) - 1).nonzero().flatten()
        if at_cap.numel():
            scores[at_cap] = torch.finfo(scores.dtype).min
            scores[at_cap, self.eos_token_id] = 0.0
        return scores


@dataclass(frozen=True)
class DecodedClip:
    text: str
    token_ids: list[int]  # generated tokens, without start, end or padding
    token_cap: int
    # The clip ran into its cap instead of ending by itself. A natural end exactly at the
    # cap is indistinguishable and counted as a hit.
    token_cap_hit: bool


def batch_order(durations: Sequence[float], config: DecodeConfig) -> list[list[int]]:
    """Indices of the clips in each batch, longest first when sorting."""
    order = list(range(len(durations)))
    if config.sort_by_length:
        order.sort(key=lambda i: -durations[i])
    return [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]


def _strip_special(ids: list[int], special: set[int]) -> list[int]:
    return [token for token in ids if token not in special]


def encoder_stem(encoder, input_values: torch.Tensor) -> torch.Tensor:
    """Moonshine's conv stem on one unpadded clip: (1, samples) -> (1, frames, hidden).

    Mirrors the first half of `MoonshineEncoder.forward`; tests check stem + layers against it.
    """
    hidden = torch.tanh(encoder.conv1(input_values.unsqueeze(1)))
    hidden = encoder.groupnorm(hidden)
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden))
    hidden = torch.nn.functional.gelu(encoder.conv3(hidden))
    return hidden.permute(0, 2, 1)


def encoder_layers(encoder, stem: torch.Tensor) -> torch.Tensor:
    """The encoder's transformer layers on one clip's stem output: (1, frames, hidden)."""
    position_ids = torch.arange(stem.shape[1], device=stem.device).unsqueeze(0)
    position_embeddings = encoder.rotary_emb(stem, position_ids=position_ids)
    hidden = stem
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=position_embeddings)
    return encoder.layer_norm(hidden)


def stem_is_frozen(model) -> bool:
    """True when no stem weight trains (LoRA targets only the transformer layers)."""
    encoder = model.get_encoder()
    return not any(p.requires_grad for m in (encoder.conv1, encoder.groupnorm, encoder.conv2, encoder.conv3)
                   for p in m.parameters())


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-clip encoder states (frames, hidden) into a batch with a frame mask."""
    device = states[0].device
    lengths = torch.tensor([state.shape[0] for state in states], device=device)
    mask = (torch.arange(int(lengths.max()), device=device)[None, :] < lengths[:, None]).long()
    return pad_sequence(states, batch_first=True), mask


def encode_exact(model, feature_extractor, waveforms: list[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each clip on its own, then pad the encoder states and mask the padding.

    Moonshine's conv stem GroupNorm normalizes over the whole (padded) input, so encoding a
    padded batch changes every clip's features: on benchmarks/eval_speed.py's 101 clips, padded
    batches of 32 give WER 0.9173 against 0.9137 clip by clip. Encoding clip by clip keeps a
    clip's transcript the same in any batch, so batch size stays a speed setting outside the
    eval contract. The decoder (the expensive, autoregressive part) still runs batched.
    """
    device = next(model.parameters()).device
    encoder = model.get_encoder()  # on a PeftModel this is the adapted encoder
    states = []
    for waveform in waveforms:
        inputs = feature_extractor(waveform, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
        states.append(encoder(inputs["input_values"].to(device=device, dtype=dtype)).last_hidden_state[0])
    return pad_states(states)


def decode_batch(model, feature_extractor, tokenizer, waveforms: list[np.ndarray], config: DecodeConfig) -> list[DecodedClip]:
    """Transcribe one batch of 16 kHz waveforms with `model.generate` (adapter-aware)."""
    caps = [config.token_cap(len(w) / feature_extractor.sampling_rate) for w in waveforms]
    generation_config = model.generation_config
    eos_id = generation_config.eos_token_id
    eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    cap = PerClipTokenCap(caps, eos_id, prompt_length=1, num_beams=config.num_beams)
    with torch.inference_mode():
        states, mask = encode_exact(model, feature_extractor, waveforms, DTYPES[config.dtype])
        sequences = model.generate(
            encoder_outputs=MoonshineEncoderModelOutput(last_hidden_state=states, attention_mask=mask),
            attention_mask=mask,  # only tells generate the batch is padded; the encoder is not rerun
            max_new_tokens=max(caps),
            num_beams=config.num_beams,
            do_sample=False,
            logits_processor=LogitsProcessorList([cap]),
        )
    special = {eos_id, generation_config.decoder_start_token_id, generation_config.pad_token_id}
    clips = []
    for row, clip_cap in zip(sequences.tolist(), caps):
        ids = _strip_special(row, special)
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        clips.append(DecodedClip(text, ids, clip_cap, len(ids) >= clip_cap - 1))
    return clips


def decode_clips(
    model,
    feature_extractor,
    tokenizer,
    durations: Sequence[float],
    load_waveform: Callable[[int], np.ndarray],
    config: DecodeConfig,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[DecodedClip], float]:
    """Decode every clip in batches; return results in input order and the decode seconds.

    Waveforms are loaded batch by batch through `load_waveform(index)`, so a long manifest is
    never held in memory at once. `on_batch(n)` is called with each batch's size (progress).
    """
    results: list[DecodedClip | None] = [None] * len(durations)
    decode_seconds = 0.0
    for indices in batch_order(durations, config):
        waveforms = [load_waveform(i) for i in indices]
        started = time.perf_counter()
        for index, clip in zip(indices, decode_batch(model, feature_extractor, tokenizer, waveforms, config)):
            results[index] = clip
        decode_seconds += time.perf_counter() - started
        if on_batch is not None:
            on_batch(len(indices))
    return results, decode_seconds
