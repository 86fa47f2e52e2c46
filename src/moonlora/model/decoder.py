"""What runs a model over audio: the `Decoder` protocol and the `DecodedClip` it yields (torch-free).

`moonlora.eval.decode.decode_clips` drives every transcription through this protocol and nothing
else: it asks the decoder how to group the clips (`batches`), encodes and decodes each group, and
wraps the token ids in `DecodedClip`s. It never asks which runtime runs the model. A `LoadedModel`
hands out the decoder that fits it (`LoadedModel.decoder()`); the eval contract records the
runtime by name, the decode path does not look at it.

Implementations: `moonlora.model.torch_decoder.TorchDecoder` (transformers `generate`, batched,
exact per-clip or batched encoder) and `moonlora.model.ort.OrtDecoder` (the deployed `.ort`
graphs, one clip at a time, greedy).

How to add a decoder backend (a runtime, or a model family whose decoding differs):
1. write a class in `moonlora/model/` with the five members of `Decoder` below; it needs no
   import of this module (the protocol is structural), and its constructor takes
   `(model, feature_extractor, tokenizer)` or is wrapped by a `decoder_factory` function;
2. make it honour the contract of each member: the per-clip token cap (`DecodeConfig.token_cap`,
   end forced after cap - 1 generated tokens), the repetition guard when it is on (`repetition_cut`
   after every token), no special tokens in the returned ids, and a clip's ids that do not depend on
   which other clips share its batch;
3. have the loader that builds the `LoadedModel` pass its factory (`decoder_factory=...`), as
   `moonlora.model.loading.load_ort` does; decode, evaluate and the verdict stay untouched;
4. add it to tests/test_decoder_protocol.py, which checks every implementation against `Decoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from moonlora.configs import DecodeConfig


@dataclass(frozen=True)
class DecodedClip:
    text: str
    token_ids: list[int]  # generated tokens, without start, end or padding
    token_cap: int
    # The clip ran into its cap instead of ending by itself. A natural end exactly at the
    # cap is indistinguishable and counted as a hit.
    token_cap_hit: bool


@runtime_checkable
class Decoder(Protocol):
    """Encode and decode clips of one model; `decode_clips` calls these, in this order."""

    sampling_rate: int  # Hz of the waveforms `encode` takes; the token cap counts seconds at this rate

    def check(self, config: DecodeConfig) -> None:
        """Refuse, in one line (ModelSourceError), decode settings this decoder cannot honour."""

    def batches(self, durations: Sequence[float], config: DecodeConfig) -> list[list[int]]:
        """The batch policy: indices of the clips decoded together, batch by batch; every index once."""

    def encode(self, waveforms: list[np.ndarray], config: DecodeConfig) -> object:
        """Encoder states of one batch, in whatever form `generate` takes them."""

    def generate(self, encoded: object, caps: list[int], config: DecodeConfig) -> list[list[int]]:
        """Each clip's generated token ids, special tokens removed; clip i ends by itself or is cut
        after caps[i] - 1 tokens (its end forced, as `DecodeConfig.token_cap` says)."""

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of one clip's token ids."""


def batch_order(durations: Sequence[float], config: DecodeConfig) -> list[list[int]]:
    """Indices of the clips in each batch of `config.batch_size`, longest first when sorting."""
    order = list(range(len(durations)))
    if config.sort_by_length:
        order.sort(key=lambda i: -durations[i])
    return [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]


def repetition_cut(tokens: Sequence[int], min_phrase: int) -> int | None:
    """The repetition guard (`DecodeConfig.repetition_guard`): when the tokens end in a loop, how many to
    keep (everything up to the end of the loop's first copy); None otherwise.

    A loop is a phrase of p tokens repeated back to back at the very end: two copies of a phrase of
    `min_phrase` or more tokens, or three or more copies that together hold `min_phrase` tokens (so
    "zero zero zero" in a clean transcript is never one). Checked after every generated token, a loop
    is caught at its first repeat, so the hypothesis keeps one copy and decoding stops there.
    """
    n = len(tokens)
    for period in range(1, n // 2 + 1):
        copies = 1
        while (copies + 1) * period <= n and \
                list(tokens[n - (copies + 1) * period : n - copies * period]) == list(tokens[n - period :]):
            copies += 1
        if (copies >= 2 and period >= min_phrase) or (copies >= 3 and copies * period >= min_phrase):
            return n - (copies - 1) * period
    return None


def one_clip_at_a_time(durations: Sequence[float]) -> list[list[int]]:
    """Every clip in its own batch, in input order: for graphs that take no attention mask."""
    return [[index] for index in range(len(durations))]
