"""The exact encoder path, shared by decoding and training: each clip is encoded on its own.

Moonshine's conv stem normalizes with a GroupNorm over the whole input length, padding
included, so encoding a padded batch changes every clip's features (and its transcript):
the padding, not just the audio, decides the output. Encoding clip by clip, then padding the
encoder states and masking the padding, keeps a clip's result the same in any batch. Training
can also split the encoder into its stem and its transformer layers (`encoder_stem`,
`encoder_layers`) to cache the frozen stem's output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence


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
