"""The one decode path: every transcription moonlora makes goes through `decode_clips`.

Adapter parity (the seed plan's H1) holds by construction: `decode_clips` calls `generate` on
the model object it is handed, so a PEFT model decodes with its active adapter; nothing here
unwraps it. An ONNX Runtime model (`runtime == "onnxruntime"`, `moonlora.eval.ort_decoder`) is
decoded by that backend with the same DecodeConfig, token cap and DecodedClip results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput

from moonlora.configs import DecodeConfig
from moonlora.model.device import DTYPES
from moonlora.model.encoder import encode_batched_exact, encode_exact


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


def encoder_mode(config: DecodeConfig, model) -> str:
    """"per-clip" or "batched": DecodeConfig.encoder, with "auto" resolved by the model's device.

    Both give the same states (<= 1e-4) and transcripts; only speed differs. On 2 CPU cores
    per-clip encoding is faster (docs/benchmarks.md, eval speed); on an accelerator one pass
    per batch keeps the device busy (benchmarks/gpu_check.py measures both).
    """
    if config.encoder != "auto":
        return config.encoder
    return "per-clip" if next(model.parameters()).device.type == "cpu" else "batched"


def encode_for_decoding(model, feature_extractor, waveforms: list[np.ndarray], config: DecodeConfig):
    encode = encode_batched_exact if encoder_mode(config, model) == "batched" else encode_exact
    return encode(model, feature_extractor, waveforms, DTYPES[config.dtype])


def decode_batch(model, feature_extractor, tokenizer, waveforms: list[np.ndarray], config: DecodeConfig) -> list[DecodedClip]:
    """Transcribe one batch of 16 kHz waveforms with `model.generate` (adapter-aware)."""
    caps = [config.token_cap(len(w) / feature_extractor.sampling_rate) for w in waveforms]
    generation_config = model.generation_config
    eos_id = generation_config.eos_token_id
    eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    cap = PerClipTokenCap(caps, eos_id, prompt_length=1, num_beams=config.num_beams)
    with torch.inference_mode():
        states, mask = encode_for_decoding(model, feature_extractor, waveforms, config)
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
    if getattr(model, "runtime", "torch") == "onnxruntime":
        from moonlora.eval.ort_decoder import decode_clips_ort

        clips, seconds = decode_clips_ort(model, tokenizer, durations, load_waveform, config, on_batch)
        return [DecodedClip(*clip) for clip in clips], seconds
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
