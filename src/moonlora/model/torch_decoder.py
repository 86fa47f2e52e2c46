"""The torch `Decoder` (`moonlora.model.decoder`): a transformers Moonshine, or a PeftModel around it.

Adapter parity (the seed plan's H1) holds by construction: `generate` calls `generate` on the
model object it is handed, so a PEFT model decodes with its active adapter; nothing here unwraps
it. Clips share batches (longest first); each clip's encoder states are exact whatever its batch
(`moonlora.model.encoder`), and each clip keeps its own token cap (`PerClipTokenCap`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from moonlora.configs import DecodeConfig
from moonlora.errors import ConfigError
from moonlora.model.decoder import batch_order, repetition_cut
from moonlora.model.device import DTYPES
from moonlora.model.encoder import encode_exact
from moonlora.model.families import MOONSHINE, family_for


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


class RepetitionGuard(LogitsProcessor):
    """Force end-of-sequence once a hypothesis ends in a loop (`repetition_cut`); the generated tokens
    are cut back to the loop's first copy afterwards (`TorchDecoder.generate`)."""

    def __init__(self, min_phrase: int, eos_token_id: int, prompt_length: int):
        self.min_phrase, self.eos_token_id, self.prompt_length = min_phrase, eos_token_id, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, tokens in enumerate(input_ids[:, self.prompt_length:].tolist()):
            if tokens and tokens[-1] != self.eos_token_id and repetition_cut(tokens, self.min_phrase) is not None:
                scores[row] = torch.finfo(scores.dtype).min
                scores[row, self.eos_token_id] = 0.0
        return scores


def guarded(tokens: list[int], min_phrase: int) -> list[int]:
    """The tokens cut back to a loop's first copy when the guard is on (min_phrase > 0) and they end in one."""
    cut = repetition_cut(tokens, min_phrase) if min_phrase else None
    return tokens if cut is None else tokens[:cut]


def encoder_mode(config: DecodeConfig, model, exact_padded_batches: bool = True) -> str:
    """"per-clip" or "batched": DecodeConfig.encoder, with "auto" resolved by the model's device.

    Both give the same states (<= 1e-4) and transcripts; only speed differs. On 2 CPU cores
    per-clip encoding is faster (docs/benchmarks.md, eval speed); on an accelerator one pass
    per batch keeps the device busy (benchmarks/gpu_check.py measures both). A family without an
    exact padded-batch encoder (`ModelFamily.exact_padded_batches`) always encodes clip by clip.
    """
    if config.encoder != "auto":
        return config.encoder
    on_cpu = next(model.parameters()).device.type == "cpu"
    return "per-clip" if on_cpu or not exact_padded_batches else "batched"


def _strip_special(ids: list[int], special: set[int]) -> list[int]:
    return [token for token in ids if token not in special]


class TorchDecoder:
    """Batched decoding with transformers `generate`: greedy or beam search (`DecodeConfig.num_beams`)."""

    def __init__(self, model, feature_extractor, tokenizer):
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.sampling_rate = feature_extractor.sampling_rate
        # the batch policy is the family's: a padded batch is only allowed where it is exact
        model_type = getattr(getattr(model, "config", None), "model_type", MOONSHINE.model_type)
        family = family_for(model_type)
        self.exact_padded_batches = family.exact_padded_batches
        self.encoder_path = family.encoder_path()

    def check(self, config: DecodeConfig) -> None:
        """Every DecodeConfig is decodable here, except a batched encoder the family cannot make exact."""
        if config.encoder == "batched" and not self.exact_padded_batches:
            raise ConfigError("--encoder batched: this model family has no exact padded-batch encoder; "
                              "use --encoder per-clip or auto")

    def batches(self, durations: Sequence[float], config: DecodeConfig) -> list[list[int]]:
        return batch_order(durations, config)

    def encode(self, waveforms: list[np.ndarray], config: DecodeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(states, frame mask) of the padded batch; per-clip or batched exact (`encoder_mode`)."""
        batched = encoder_mode(config, self.model, self.exact_padded_batches) == "batched"
        encode = self.encoder_path.encode_batched_exact if batched else encode_exact
        with torch.inference_mode():
            return encode(self.model, self.feature_extractor, waveforms, DTYPES[config.dtype])

    def generate(self, encoded: tuple[torch.Tensor, torch.Tensor], caps: list[int],
                 config: DecodeConfig) -> list[list[int]]:
        states, mask = encoded
        generation_config = self.model.generation_config
        eos_id = generation_config.eos_token_id
        eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
        processors = [PerClipTokenCap(caps, eos_id, prompt_length=1, num_beams=config.num_beams)]
        if config.repetition_guard:
            processors.append(RepetitionGuard(config.repetition_guard, eos_id, prompt_length=1))
        with torch.inference_mode():
            sequences = self.model.generate(
                encoder_outputs=self.encoder_path.output_class(last_hidden_state=states, attention_mask=mask),
                attention_mask=mask,  # only tells generate the batch is padded; the encoder is not rerun
                max_new_tokens=max(caps),
                num_beams=config.num_beams,
                do_sample=False,
                logits_processor=LogitsProcessorList(processors),
            )
        special = {eos_id, generation_config.decoder_start_token_id, generation_config.pad_token_id}
        return [guarded(_strip_special(row, special), config.repetition_guard) for row in sequences.tolist()]

    def detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
