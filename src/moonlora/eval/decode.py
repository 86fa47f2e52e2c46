"""The one decode path: every transcription moonlora makes goes through `decode_clips`.

It talks only to the `Decoder` protocol (`moonlora.model.decoder`): the decoder says which clips
share a batch, encodes them and generates their tokens under each clip's own cap; this module
loads the audio batch by batch, times the decoding and keeps the results in input order. Which
runtime runs the model is the decoder's business (`LoadedModel.decoder()`), never asked here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from moonlora.configs import DecodeConfig
from moonlora.model.decoder import DecodedClip, Decoder


def decode_batch(decoder: Decoder, waveforms: list[np.ndarray], config: DecodeConfig) -> list[DecodedClip]:
    """Transcribe one batch of waveforms, each clip under its own token cap."""
    caps = [config.token_cap(len(w) / decoder.sampling_rate) for w in waveforms]
    token_ids = decoder.generate(decoder.encode(waveforms, config), caps, config)
    return [DecodedClip(decoder.detokenize(ids), ids, cap, len(ids) >= cap - 1) for ids, cap in zip(token_ids, caps)]


def decode_clips(
    decoder: Decoder,
    durations: Sequence[float],
    load_waveform: Callable[[int], np.ndarray],
    config: DecodeConfig,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[DecodedClip], float]:
    """Decode every clip in the decoder's batches; return results in input order and the decode seconds.

    Waveforms are loaded batch by batch through `load_waveform(index)`, so a long manifest is
    never held in memory at once. `on_batch(n)` is called with each batch's size (progress).
    """
    decoder.check(config)
    results: list[DecodedClip | None] = [None] * len(durations)
    decode_seconds = 0.0
    for indices in decoder.batches(durations, config):
        waveforms = [load_waveform(i) for i in indices]
        started = time.perf_counter()
        for index, clip in zip(indices, decode_batch(decoder, waveforms, config)):
            results[index] = clip
        decode_seconds += time.perf_counter() - started
        if on_batch is not None:
            on_batch(len(indices))
    return results, decode_seconds
