"""The exact encoder paths, shared by decoding and training: a clip's states never depend on its batch.

Each model family has an `EncoderPath` (`ModelFamily.encoder_path()`): how one clip becomes model
inputs, its encoder states alone, its stem (the part no LoRA preset adapts, cached while frozen) and
the encoder-output type its model takes back. `encode_exact` and training use only that interface;
Moonshine's path is below, Moonshine Streaming's is `moonlora.model.streaming_encoder`.

Moonshine (v1):

Moonshine's conv stem normalizes with a GroupNorm over the whole input length, padding
included, so encoding a padded batch changes every clip's features (and its transcript):
the padding, not just the audio, decides the output. Two exact ways around it:
- `encode_exact` encodes clip by clip, then pads the encoder states and masks the padding;
- `encode_batched_exact` encodes the padded batch in one pass, with the GroupNorm's statistics
  taken over each clip's valid length and attention masked off padded frames: the same states
  (within 1e-4, tests/test_encoder_batched.py) with one pass per batch, for devices that a
  single clip leaves idle. `DecodeConfig.encoder` picks between them.
Training can also split the encoder into its stem and its transformer layers (`encoder_stem`,
`encoder_layers`) to cache the frozen stem's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput


@dataclass(frozen=True)
class EncoderPath:
    """How one model family's encoder runs a clip exactly (the same states in any batch).

    clip_inputs(encoder, feature_extractor, waveform) -> the model's inputs for one clip (batch of 1, CPU);
    clip_states(encoder, inputs) -> (frames, hidden) states of that clip, only its valid frames;
    stem(encoder, inputs) -> (stem output, frame mask or None): the front part no LoRA preset adapts;
    states_from_stem(encoder, stem output, frame mask) -> clip_states from a cached stem;
    stem_modules(encoder) -> the modules whose weights must be frozen for a stem cache to be exact;
    states_from_stems_batched(encoder, [(stem output, frame mask)]) -> [clip_states] of several clips in one
    padded pass, or None where the family has none; batch_pays(stems) -> whether that pass is worth it;
    output_class(last_hidden_state=, attention_mask=) -> what the model takes as `encoder_outputs`;
    encode_batched_exact(model, feature_extractor, waveforms, dtype) -> a one-pass padded batch with the
    per-clip states, or None where the family has none (`ModelFamily.exact_padded_batches`);
    memory(decoder, states) -> (frames, hidden) what the decoder's cross-attention projects into keys and
    values for one clip's states; memory_modules(decoder) -> the modules that computation uses besides
    the cross-attention key/value projections (frozen for a cross-attention cache to be exact).
    """

    name: str
    clip_inputs: Callable
    clip_states: Callable
    stem: Callable
    states_from_stem: Callable
    stem_modules: Callable
    states_from_stems_batched: Callable | None
    batch_pays: Callable | None
    output_class: type
    encode_batched_exact: Callable | None
    memory: Callable
    memory_modules: Callable


def encoder_path_of(model) -> EncoderPath:
    """The EncoderPath of a transformers model (or a PeftModel around one), by its config's model_type."""
    from moonlora.model.families import family_for

    return family_for(getattr(model.config, "model_type", None)).encoder_path()


def encoder_stem(encoder, input_values: torch.Tensor) -> torch.Tensor:
    """Moonshine's conv stem on one unpadded clip: (1, samples) -> (1, frames, hidden).

    Mirrors the first half of `MoonshineEncoder.forward`; tests check stem + layers against it.
    """
    hidden = torch.tanh(encoder.conv1(input_values.unsqueeze(1)))
    hidden = encoder.groupnorm(hidden)
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden))
    hidden = torch.nn.functional.gelu(encoder.conv3(hidden))
    return hidden.permute(0, 2, 1)


def encoder_layers(encoder, stem: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's transformer layers on stem outputs: (batch, frames, hidden); one unpadded clip
    needs no mask, a padded batch the one `masked_encoder_layers` builds."""
    position_ids = torch.arange(stem.shape[1], device=stem.device).unsqueeze(0)
    position_embeddings = encoder.rotary_emb(stem, position_ids=position_ids)
    hidden = stem
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=attention_mask, position_ids=position_ids,
                       position_embeddings=position_embeddings)
    return encoder.layer_norm(hidden)


def stem_is_frozen(model) -> bool:
    """True when no stem weight trains (LoRA targets only the transformer layers)."""
    encoder = model.get_encoder()
    return not any(p.requires_grad for m in encoder_path_of(model).stem_modules(encoder) for p in m.parameters())


def states_from_stems(encoder, path: EncoderPath, stems: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
    """Each clip's states from its stem: in one padded pass where the family has an exact one and it pays,
    else clip by clip."""
    if path.states_from_stems_batched is not None and path.batch_pays(stems):
        return path.states_from_stems_batched(encoder, stems)
    return [path.states_from_stem(encoder, *stem) for stem in stems]


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-clip encoder states (frames, hidden) into a batch with a frame mask."""
    device = states[0].device
    lengths = torch.tensor([state.shape[0] for state in states], device=device)
    mask = (torch.arange(int(lengths.max()), device=device)[None, :] < lengths[:, None]).long()
    return pad_sequence(states, batch_first=True), mask


def encode_exact(model, feature_extractor, waveforms: list[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each clip on its own (its family's `EncoderPath`), then pad the encoder states and mask the padding.

    Moonshine's conv stem GroupNorm normalizes over the whole (padded) input, so encoding a
    padded batch changes every clip's features: on benchmarks/eval_speed.py's 101 clips, padded
    batches of 32 give WER 0.9173 against 0.9137 clip by clip. Encoding clip by clip keeps a
    clip's transcript the same in any batch, so batch size stays a speed setting outside the
    eval contract. The decoder (the expensive, autoregressive part) still runs batched.
    """
    path = encoder_path_of(model)
    device = next(model.parameters()).device
    encoder = model.get_encoder()  # on a PeftModel this is the adapted encoder
    states = [path.clip_states(encoder, to_model(path.clip_inputs(encoder, feature_extractor, waveform), device, dtype))
              for waveform in waveforms]
    return pad_states(states)


def to_model(inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Clip inputs on the model's device; floating tensors (the samples) in its dtype, masks as they are."""
    return {name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()}


def moonshine_clip_inputs(encoder, feature_extractor, waveform: np.ndarray) -> dict[str, torch.Tensor]:
    """Moonshine reads one unpadded clip's raw samples: no mask needed."""
    values = feature_extractor(waveform, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    return {"input_values": values["input_values"]}


def moonshine_clip_states(encoder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return encoder(inputs["input_values"]).last_hidden_state[0]


def moonshine_stem(encoder, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
    return encoder_stem(encoder, inputs["input_values"]), None


def moonshine_states_from_stem(encoder, stem: torch.Tensor, frame_mask: None) -> torch.Tensor:
    return encoder_layers(encoder, stem)[0]


def moonshine_stem_modules(encoder) -> list[torch.nn.Module]:
    return [encoder.conv1, encoder.groupnorm, encoder.conv2, encoder.conv3]


def moonshine_memory(decoder, states: torch.Tensor) -> torch.Tensor:
    """Moonshine's cross-attention reads the encoder states as they are."""
    return states


def moonshine_memory_modules(decoder) -> list[torch.nn.Module]:
    return []


def conv_output_lengths(conv: torch.nn.Conv1d, lengths: torch.Tensor) -> torch.Tensor:
    """Output length of `conv` for each input length (PyTorch's Conv1d arithmetic)."""
    padding, dilation = conv.padding[0], conv.dilation[0]
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    return torch.div(lengths + 2 * padding - dilation * (kernel - 1) - 1, stride, rounding_mode="floor") + 1


def time_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) bool: True on each clip's first `length` steps."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def groupnorm_per_clip(norm: torch.nn.GroupNorm, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`norm` applied to each clip's valid steps alone (statistics over those steps only); padded steps are zeros.

    One native GroupNorm call per clip on its valid slice: the same kernel and numbers as a
    clip-alone run, and on 2 CPU cores 10x faster than masked sums over the padded batch.
    """
    normed = torch.zeros_like(hidden)
    for row, length in enumerate(lengths.tolist()):
        normed[row, :, :length] = norm(hidden[row : row + 1, :, :length])[0]
    return normed


def batched_stem(encoder, input_values: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv stem on a zero-padded batch (batch, samples) -> (states (batch, frames, hidden), frames per clip).

    Each clip's valid outputs equal a clip-alone run: the GroupNorm takes statistics over the
    clip's valid steps only, and padded steps are zeroed after every stage, so a conv's window
    that runs past a clip's end sees zeros, as the conv's own padding would show a clip alone
    (Moonshine's convs have no padding, so there valid windows never reach padded steps at all).
    """
    lengths1 = conv_output_lengths(encoder.conv1, samples)
    lengths2 = conv_output_lengths(encoder.conv2, lengths1)
    lengths3 = conv_output_lengths(encoder.conv3, lengths2)
    if int(lengths3.min()) < 1:  # a clip alone would fail in its conv too
        raise ValueError(f"a clip of {int(samples.min())} samples is too short for the encoder's conv stem")
    hidden = torch.tanh(encoder.conv1(input_values.unsqueeze(1)))
    hidden = groupnorm_per_clip(encoder.groupnorm, hidden, lengths1)
    for conv, lengths in ((encoder.conv2, lengths2), (encoder.conv3, lengths3)):
        hidden = torch.nn.functional.gelu(conv(hidden))
        hidden = hidden * time_mask(lengths, hidden.shape[-1])[:, None, :]
    return hidden.permute(0, 2, 1), lengths3


def masked_encoder_layers(encoder, stem: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """The encoder's transformer layers on a padded batch, attention kept off padded frames.

    The mask is built the way `MoonshineEncoder.forward` builds it from an attention mask, so it
    suits whichever attention implementation the model was loaded with.
    """
    mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=stem, attention_mask=frame_mask,
                                     encoder_hidden_states=stem)
    return encoder_layers(encoder, stem, mask)


def encode_batched_exact(model, feature_extractor, waveforms: list[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a padded batch in one pass with the same valid states as `encode_exact`.

    The padding cannot reach a clip's states: the stem normalizes over each clip's own valid
    length (`batched_stem`) and attention never looks at padded frames. Padded frames are zeros
    and the mask marks them, as `pad_states` does. One pass per batch instead of one per clip:
    it pays where a single clip leaves the device idle (GPUs); benchmarks/eval_speed.py measures it.
    """
    device = next(model.parameters()).device
    encoder = model.get_encoder()  # on a PeftModel this is the adapted encoder
    rate = feature_extractor.sampling_rate
    clips = [feature_extractor(w, sampling_rate=rate, return_tensors="pt")["input_values"][0] for w in waveforms]
    samples = torch.tensor([clip.shape[0] for clip in clips], device=device)
    input_values = pad_sequence(clips, batch_first=True).to(device=device, dtype=dtype)
    stem, frames = batched_stem(encoder, input_values, samples)
    frame_mask = time_mask(frames, stem.shape[1]).long()
    states = masked_encoder_layers(encoder, stem, frame_mask)
    return states * frame_mask[:, :, None].to(states.dtype), frame_mask


MOONSHINE_PATH = EncoderPath(
    name="moonshine",
    clip_inputs=moonshine_clip_inputs,
    clip_states=moonshine_clip_states,
    stem=moonshine_stem,
    states_from_stem=moonshine_states_from_stem,
    stem_modules=moonshine_stem_modules,
    states_from_stems_batched=None,  # encode_batched_exact batches the whole encoder
    batch_pays=None,
    output_class=MoonshineEncoderModelOutput,
    encode_batched_exact=encode_batched_exact,
    memory=moonshine_memory,
    memory_modules=moonshine_memory_modules,
)
