"""Moonshine Streaming's encoder, one clip at a time: the exact path shared by decoding and training.

The streaming model reads raw 16 kHz samples in 5 ms frames (80 samples): frame CMVN, asinh
compression, a linear frame embedding and two causal stride-2 convolutions (the "embedder", our
stem), then transformer layers whose attention is limited to a per-layer sliding window, then a
final norm. Three facts of the transformers implementation decide how moonlora runs it:
- The sliding windows exist only when the encoder is handed an attention mask: without one every
  layer attends to the whole clip, which is not the model that was trained (the official
  fine-tuner passes a mask) nor the one the runtime streams. So every clip gets a sample mask,
  even alone.
- A padded batch is not exact: the convolutions mark an output frame valid when any sample of its
  window is real, so in a batch a clip gains one or two frames (made partly of padding) that it
  does not have alone, and attention sees them. tests/test_streaming_encoder.py measures the
  difference; `ModelFamily.exact_padded_batches` is False for this family and decoding encodes
  each clip alone. The decoder still runs batched. What is exact is a batch over the layers only:
  each clip's embedder output computed alone, padded, and masked out of attention
  (`states_from_stems_batched`); training uses it for batches of similar lengths
  (`--group-by-length`), where it is faster than clip by clip.
- The decoder adds its position embedding to the encoder states in place
  (`encoder_hidden_states += ...`): states handed to the model are always a fresh padded copy
  (`pad_states`), never a cached tensor.

Training runs the layers with banded attention (`banded_attention`): the same windows, computed on the
window only. The model's masked forward scores every frame against every frame and masks all but the
19 or 16 in a frame's window, so on 3-8 s clips (150-400 frames) it does ten to twenty times the
attention arithmetic it needs; decoding keeps the model's own forward (the eval contract's pipeline).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AttentionInterface
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.moonshine_streaming.modeling_moonshine_streaming import (
    MoonshineStreamingEncoderModelOutput, repeat_kv, sliding_window_mask_function)

from moonlora.model.attention import attention_implementation
from moonlora.model.encoder import EncoderPath


def frame_samples(encoder) -> int:
    """Samples per encoder input frame (80: 5 ms at 16 kHz)."""
    return encoder.embedder.frame_len


def clip_inputs(encoder, feature_extractor, waveform: np.ndarray) -> dict[str, torch.Tensor]:
    """One clip as the model reads it: the feature extractor's raw samples cut to whole frames, and a mask
    over them ((1, samples) each). A trailing partial frame is dropped, as the runtime's frontend graph
    drops it (its samples wait for a next chunk that never comes): given to the model zero-padded and
    masked, it would still add a frame to the causal convolutions' output for about half the clips
    (`moonlora.ship.streaming_export` then could not equal this path)."""
    values = feature_extractor(waveform, sampling_rate=feature_extractor.sampling_rate,
                               return_tensors="pt")["input_values"][0]
    frame = frame_samples(encoder)
    if values.shape[0] < frame:
        raise ValueError(f"a clip of {values.shape[0]} samples is shorter than one encoder frame ({frame} samples)")
    width = values.shape[0] // frame * frame
    return {"input_values": values[None, :width].clone(), "attention_mask": torch.ones(1, width, dtype=torch.long)}


def stem(encoder, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedder on one clip: (1, frames, hidden) and its (1, frames) bool frame mask."""
    return encoder.embedder(inputs["input_values"], padding_mask=inputs["attention_mask"])


def layers(encoder, hidden: torch.Tensor, frame_mask: torch.Tensor, banded: bool = False) -> torch.Tensor:
    """The transformer layers with each layer's sliding window, then the final norm: mirrors the second
    half of `MoonshineStreamingEncoder.forward` (tests check stem + layers against it). Layers that share a
    window share its mask (the tiny architecture has two distinct windows for six layers): building the
    masks is a large share of encoding one clip on the CPU. `banded`: attention on each window only
    (`banded_attention`, within 1e-5 of the model's masked attention, gradients included)."""
    masks = {}
    with attention_implementation(encoder.config, BANDED if banded else None):
        for index, layer in enumerate(encoder.layers):
            window = tuple(encoder.config.sliding_windows[index])
            if window not in masks:
                masks[window] = (band_bias(frame_mask, window, hidden.dtype) if banded else create_bidirectional_mask(
                    config=encoder.config, inputs_embeds=hidden, attention_mask=frame_mask,
                    and_mask_function=sliding_window_mask_function(window),
                ))
            hidden = layer(hidden, attention_mask=masks[window])
    return encoder.final_norm(hidden)


BANDED = "moonlora_banded"
# Query frames per block of `banded_attention`: each block scores BAND_BLOCK + window - 1 keys. 16 was the
# fastest of 8-64 on 2 CPU cores for 8 clips of ~300 frames (forward and backward 14.7-19.2 ms a layer against
# 35-41 ms for the masked scaled_dot_product_attention; a scratch microbenchmark).
BAND_BLOCK = 16


def band_reach(window: tuple[int, int]) -> tuple[int, int]:
    """(frames before, frames after) a query frame attends to under `sliding_window_mask_function(window)`:
    key k is in query q's window when 0 <= q - k < left or 0 < k - q < right."""
    left, right = window
    return left - 1, max(right - 1, 0)


def band_bias(frame_mask: torch.Tensor, window: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The additive mask `banded_attention` takes: (batch, 1, blocks, BAND_BLOCK, keys per block), 0 where the
    key is in the query's window and a valid frame, the dtype's minimum elsewhere (as transformers' masks:
    a query with no valid key gets a finite uniform softmax, never NaN)."""
    before, after = band_reach(window)
    frames = frame_mask.shape[1]
    blocks = -(-frames // BAND_BLOCK)
    width = BAND_BLOCK + before + after
    key_valid = torch.nn.functional.pad(frame_mask.bool(), (before, blocks * BAND_BLOCK - frames + after))
    key_valid = key_valid.unfold(1, width, BAND_BLOCK)  # (batch, blocks, width)
    offset = torch.arange(width, device=frame_mask.device)[None, :] - torch.arange(BAND_BLOCK, device=frame_mask.device)[:, None]
    allowed = ((offset >= 0) & (offset <= before + after))[None, None] & key_valid[:, :, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=frame_mask.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[:, None]


def banded_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor,
                     scaling: float, dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function (registered as BANDED) for the streaming encoder: each block of
    BAND_BLOCK query frames scores only the keys its windows can reach, with `band_bias` as the mask.
    query/key/value (batch, heads, frames, head dim) -> (batch, frames, heads, head dim), as
    transformers' eager attention returns."""
    batch, heads, frames, head_dim = query.shape
    before, after = band_reach(tuple(module.config.sliding_windows[module.layer_idx]))
    blocks = attention_mask.shape[2]
    tail = blocks * BAND_BLOCK - frames
    width = BAND_BLOCK + before + after

    def key_blocks(states: torch.Tensor) -> torch.Tensor:  # (batch, heads, blocks, width, head dim)
        states = repeat_kv(states, module.num_key_value_groups)
        padded = torch.nn.functional.pad(states, (0, 0, before, tail + after))
        return padded.unfold(2, width, BAND_BLOCK).transpose(-1, -2)

    query_blocks = torch.nn.functional.pad(query, (0, 0, 0, tail)).view(batch, heads, blocks, BAND_BLOCK, head_dim)
    scores = torch.matmul(query_blocks, key_blocks(key).transpose(-1, -2)) * scaling + attention_mask
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, key_blocks(value)).view(batch, heads, blocks * BAND_BLOCK, head_dim)
    return output[:, :, :frames].transpose(1, 2).contiguous(), None


AttentionInterface.register(BANDED, banded_attention)


def clip_states(encoder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(valid frames, hidden) encoder states of one clip: the embedder, then the windowed layers (the model's
    own masked forward, tests/test_streaming_encoder.py); masked trailing frames are dropped (the decoder
    would mask them; the valid frames are a prefix, so positions do not move)."""
    hidden, frame_mask = stem(encoder, inputs)
    return layers(encoder, hidden, frame_mask)[0, frame_mask[0].bool()]


def states_from_stem(encoder, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """`clip_states` from a cached stem output, for training: banded attention (within 1e-5 of it)."""
    return layers(encoder, hidden, frame_mask, banded=True)[0, frame_mask[0].bool()]


def states_from_stems_batched(encoder, stems: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """`states_from_stem` of several clips with their transformer layers run as one padded batch.

    Exact where a padded batch of raw samples is not (see the module docstring): each clip's stem comes
    from the clip alone, so it has its own frames and frame mask; padded frames are masked out of every
    layer's attention, so a valid frame attends to the same frames as alone, and every other operation is
    per frame (tests/test_streaming_encoder.py: within 1e-5, gradients included). One pass over the layers
    pays for a batch of similar lengths (`--group-by-length`); `BATCHED_LAYERS_MAX_PADDING` decides.
    """
    hidden = pad_sequence([stem_output[0] for stem_output, _ in stems], batch_first=True)
    frame_mask = pad_sequence([mask[0] for _, mask in stems], batch_first=True)
    states = layers(encoder, hidden, frame_mask, banded=True)
    return [states[row, : mask.shape[1]][mask[0].bool()] for row, (_, mask) in enumerate(stems)]


# Padded frames a batch of layers may carry, as a share of its valid frames. On 2 CPU cores 8 random 3.5-8 s
# clips (1.65x padding) took 0.238 s in one pass against 0.217 s clip by clip; length-sorted groups of 8 take
# 56-63 ms a clip against 73-76 ms (`benchmarks/streaming_probes.py fill`).
BATCHED_LAYERS_MAX_PADDING = 0.25


def batch_pays(stems: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """True when `states_from_stems_batched` is worth it for these stems: more than one clip, and padding
    within BATCHED_LAYERS_MAX_PADDING of the valid frames."""
    frames = [mask.shape[1] for _, mask in stems]
    return len(frames) > 1 and max(frames) * len(frames) <= (1 + BATCHED_LAYERS_MAX_PADDING) * sum(frames)


def stem_modules(encoder) -> list[torch.nn.Module]:
    return [encoder.embedder]


def memory(decoder, states: torch.Tensor) -> torch.Tensor:
    """What the streaming decoder's cross-attention projects: the states plus a learned position embedding,
    through `proj` (identity where encoder and decoder widths match); mirrors the top of
    `MoonshineStreamingDecoder.forward`, without its in-place add."""
    positions = torch.arange(states.shape[0], device=states.device)
    return decoder.proj(states + decoder.pos_emb(positions).to(states.dtype))


def memory_modules(decoder) -> list[torch.nn.Module]:
    return [decoder.pos_emb, decoder.proj]


STREAMING_PATH = EncoderPath(
    name="moonshine_streaming",
    clip_inputs=clip_inputs,
    clip_states=clip_states,
    stem=stem,
    states_from_stem=states_from_stem,
    stem_modules=stem_modules,
    states_from_stems_batched=states_from_stems_batched,
    batch_pays=batch_pays,
    output_class=MoonshineStreamingEncoderModelOutput,
    encode_batched_exact=None,
    memory=memory,
    memory_modules=memory_modules,
)
