"""The one audio pipeline: every waveform moonlora feeds Moonshine comes from `load_audio`.

Training, evaluation and inference all call this module, so the seed plan's "normalization
parity" holds by construction: the settings travel in an `AudioConfig` that is written into
every eval contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from moonlora.configs import PIPELINE_VERSION, SAMPLE_RATE, AudioConfig  # noqa: F401  (read here by the pipeline's users)
from moonlora.errors import MoonloraError


class AudioError(MoonloraError, ValueError):
    """A file that cannot be turned into a waveform (missing, unreadable, empty)."""


def rms_dbfs(waveform: np.ndarray) -> float:
    """RMS level in dBFS (-inf for digital silence)."""
    if waveform.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def normalize_rms(waveform: np.ndarray, target_dbfs: float, silence_floor_dbfs: float = -70.0) -> np.ndarray:
    """Scale to the target RMS level, clipping to [-1, 1]; near-silence is returned unchanged."""
    level = rms_dbfs(waveform)
    if level < silence_floor_dbfs:
        return waveform
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    return np.clip(waveform * gain, -1.0, 1.0).astype(np.float32)


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Downmix (frames, channels) to mono, resample to 16 kHz, replace NaN/inf with 0."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    samples = np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if sample_rate != SAMPLE_RATE:
        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return samples


def load_audio(path: str | Path, config: AudioConfig = AudioConfig()) -> np.ndarray:
    """Read any file soundfile reads into a float32 16 kHz mono waveform."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: audio file has no samples")
    waveform = to_mono_16k(samples, sample_rate)
    if config.rms_target_dbfs is not None:
        waveform = normalize_rms(waveform, config.rms_target_dbfs, config.silence_floor_dbfs)
    return waveform


class BatchAudio(Sequence):
    """A training batch's waveforms, each read with `load_audio` when first used: a clip whose encoder output
    or stem a training cache already holds is not read again (on a decoder-only streaming step, reading
    and framing 8 clips was about 5% of the step)."""

    def __init__(self, paths: list[str | Path], config: AudioConfig = AudioConfig()):
        self.paths, self.config, self.read = list(paths), config, {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        if not isinstance(index, int):
            raise TypeError("BatchAudio takes one clip index at a time")
        index = range(len(self.paths))[index]  # IndexError past the end ends iteration
        if index not in self.read:
            self.read[index] = load_audio(self.paths[index], self.config)
        return self.read[index]


def header_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding the samples."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: cannot read audio header ({error})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: audio file has no samples")
    return info.frames / info.samplerate
