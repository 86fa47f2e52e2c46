"""What every importer reader yields, and how one item's audio becomes 16 kHz mono PCM.

A reader turns a source's index files (transcripts, TSVs, `wav.scp`, rows, a dataset's columns)
into `Item`s and `Skip`s without decoding audio; `decode` does that later, one item at a time, in
the one audio pipeline's resampler (`moonlora.data.audio.to_mono_16k`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from moonlora.configs import SAMPLE_RATE
from moonlora.data.audio import AudioError, to_mono_16k

TEXT_MODES = ("auto", "none", "lower")
UPPER_SHARE = 0.9  # auto lowercases a corpus whose transcripts are more than this share upper case
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au", ".w64", ".rf64")
LINKABLE_FORMATS = ("WAV", "FLAC")


class MissingAudio(AudioError):
    """The file an item names does not exist."""


@dataclass(frozen=True)
class AudioRef:
    """Where one item's audio is: a file (or a segment of it), encoded bytes, or an inline array.

    `fetch`, when set, returns the real reference on demand (a dataset row read only when its turn comes).
    """

    path: Path | None = None
    start: float | None = None  # seconds: a segment of `path` (Kaldi `segments`)
    end: float | None = None  # seconds; None: to the end of the file
    data: bytes | None = None
    array: object = None
    sampling_rate: int | None = None
    fetch: Callable[[], AudioRef] | None = None

    def resolved(self) -> AudioRef:
        return self.fetch() if self.fetch is not None else self


@dataclass(frozen=True)
class Item:
    """One clip of a source, before its audio is read."""

    split: str
    key: str  # unique within the split once `run` made it so; the clip's file name
    text: str
    speaker: str | None
    origin: str  # "file:line" or "dataset[split][row]": named in every skip and duplicate
    audio: AudioRef


@dataclass(frozen=True)
class Skip:
    """An item (or an index line) that is not imported, and why."""

    origin: str
    kind: str  # bad_line | no_audio | missing_audio | unreadable_audio | empty_text | no_transcript
    #            | unsupported | bad_segment | empty_audio | too_long | duplicate_audio
    reason: str

    def to_dict(self) -> dict:
        return {"origin": self.origin, "kind": self.kind, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason}"


def safe_name(text: str, fallback: str = "clip") -> str:
    """A file or split name from an id: letters, digits, `.`, `_`, `-`; others become `_`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return name[:120] or fallback


def choose_text_mode(texts: list[str], requested: str = "auto") -> str:
    """The official fine-tuner's rule: auto lowercases a corpus more than 90% upper case (LibriSpeech)."""
    if requested != "auto":
        return requested
    if not texts:
        return "none"
    upper = sum(1 for text in texts if text.isupper())
    return "lower" if upper / len(texts) > UPPER_SHARE else "none"


def apply_text_mode(text: str, mode: str) -> str:
    return text.lower() if mode == "lower" else text


def clean_text(text: object) -> str:
    """A transcript on one line, surrounding and repeated whitespace removed."""
    return " ".join(str(text).split()) if text is not None else ""


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
    return np.clip(np.round(waveform.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def linkable(ref: AudioRef) -> bool:
    """Already 16 kHz mono 16-bit PCM WAV or FLAC, whole file: `--link` points the manifest at it."""
    if ref.path is None or ref.start is not None or ref.end is not None:
        return False
    try:
        info = sf.info(str(ref.path))
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
        return False
    return (info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
            and info.format in LINKABLE_FORMATS)


def _read(source, name: str, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(source) as handle:
            rate, frames = handle.samplerate, handle.frames
            first = 0 if start is None else int(round(start * rate))
            last = frames if end is None else int(round(end * rate))
            if start is not None and (first >= frames or last > frames + rate // 100):
                raise AudioError(f"{name}: segment {start:.3f}-{end if end is not None else 'end'} s lies outside "
                                 f"the recording ({frames / rate:.3f} s)")
            handle.seek(first)
            if rate == SAMPLE_RATE and handle.channels == 1 and handle.subtype == "PCM_16":
                return handle.read(max(min(last, frames) - first, 0), dtype="int16"), rate
            return handle.read(max(min(last, frames) - first, 0), dtype="float32", always_2d=True), rate
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{name}: cannot decode audio ({error})") from None
    except OSError as error:
        raise AudioError(f"{name}: cannot read audio ({error.strerror or error})") from None


def decode(ref: AudioRef, name: str) -> np.ndarray:
    """The item's audio as int16 samples at 16 kHz, mono; 16 kHz mono PCM_16 input is copied exactly."""
    ref = ref.resolved()
    if ref.array is not None:
        try:
            samples = np.asarray(ref.array, dtype=np.float32)
            rate = int(ref.sampling_rate)
        except (TypeError, ValueError):
            raise AudioError(f"{name}: the inline audio array is not numbers with a sampling_rate") from None
        if samples.ndim != 1 or rate <= 0:
            raise AudioError(f"{name}: the inline audio must be one channel of samples with a positive sampling_rate")
    elif ref.data is not None:
        samples, rate = _read(io.BytesIO(ref.data), name)
    elif ref.path is not None:
        if not ref.path.is_file():
            raise MissingAudio(f"{name}: audio file not found: {ref.path}")
        samples, rate = _read(str(ref.path), name, ref.start, ref.end)
    else:
        raise AudioError(f"{name}: no audio")
    if samples.dtype == np.int16:
        return samples
    return to_pcm16(to_mono_16k(samples, rate))
