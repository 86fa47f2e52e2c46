"""Correct and Try: one take transcribed by the base model or a run's adapter, through the one decode path.

A run's adapter is loaded under the run's own base model, audio and decode settings (`adapters.resolve_adapter`,
the rule `moonlora transcribe --adapter` follows). Loaded models are kept (a few at most), so the second
take does not pay for a load; torch loads on the first transcription, never at import.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moonlora.adapters import resolve_adapter
from moonlora.configs import AudioConfig, DecodeConfig, ScoringConfig
from moonlora.data.audio import normalize_rms

BASE = "base"
KEPT_MODELS = 3


@dataclass(frozen=True)
class Choice:
    """What transcribes: a base model, and an adapter folder with the run's settings (or none)."""

    label: str  # "base" or the run's path under the root
    model: str
    adapter: str | None
    audio: AudioConfig
    decode: DecodeConfig
    scoring: ScoringConfig


def choose(label: str, run_dir: Path | None, base_model: str, device: str) -> Choice:
    if run_dir is None:
        return Choice(BASE, base_model, None, AudioConfig(), DecodeConfig(batch_size=1, device=device),
                      ScoringConfig())
    resolved = resolve_adapter(run_dir)
    run = resolved.config
    decode = DecodeConfig(**{**run.decode.result_dict(), "batch_size": 1, "device": device}) if run else \
        DecodeConfig(batch_size=1, device=device)
    return Choice(label, run.model if run else base_model, str(resolved.adapter_dir),
                  run.audio if run else AudioConfig(), decode, run.scoring if run else ScoringConfig())


class ModelShelf:
    """Loaded models by (model, adapter, device, dtype), least recently used dropped first; one decode at a time."""

    def __init__(self, kept: int = KEPT_MODELS):
        self.kept, self.models, self.lock = kept, OrderedDict(), threading.Lock()

    def transcribe(self, choice: Choice, waveform: np.ndarray) -> dict:
        from moonlora.eval.decode import decode_batch
        from moonlora.model.loading import load_model

        key = (choice.model, choice.adapter, choice.decode.device, choice.decode.dtype)
        with self.lock:
            started = time.perf_counter()
            loaded = self.models.pop(key, None)
            if loaded is None:
                loaded = load_model(choice.model, device=choice.decode.device, dtype=choice.decode.dtype,
                                    adapter=choice.adapter)
            self.models[key] = loaded
            while len(self.models) > self.kept:
                self.models.popitem(last=False)
            load_seconds = time.perf_counter() - started
            audio = choice.audio
            heard = waveform if audio.rms_target_dbfs is None else normalize_rms(
                waveform, audio.rms_target_dbfs, audio.silence_floor_dbfs)
            started = time.perf_counter()
            decoder = loaded.decoder()
            decoder.check(choice.decode)
            clip = decode_batch(decoder, [heard], choice.decode)[0]
            seconds = time.perf_counter() - started
        return {"model": choice.label, "text": clip.text, "decode_seconds": round(seconds, 3),
                "load_seconds": round(load_seconds, 3), "token_cap_hit": clip.token_cap_hit,
                "audio_seconds": round(len(waveform) / 16000, 3)}
