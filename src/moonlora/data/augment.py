"""Domain-shifted copies of a manifest (seed plan H4): speed, telephone/radio band, noise.

Each clip goes through the one audio pipeline (`load_audio`, 16 kHz mono), then, in this
order: a speed change (resampling, so tempo and pitch move together like sox `speed`),
band-limiting ("telephone" 300–3400 Hz, or "radio" 500–2500 Hz plus the soft clipping and
compression of AM aviation radio), and additive white or pink noise at an SNR relative to
the clip's RMS. Copies are written as 16 kHz PCM_16 wavs with a new manifest; the
originals are only read.

Why no augmentation library: none is installed, and audiomentations (the usual choice)
would add scipy, numpy-minmax, numpy-rms and friends to the environment for three simple,
well-understood effects. scipy is not in the venv either, so the band filter is a
zero-phase Butterworth magnitude response applied in the FFT domain with numpy (see
`band_limit`); it matches what scipy's `sosfiltfilt` with a Butterworth filter gives.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from moonlora.data.audio import SAMPLE_RATE, AudioError, load_audio
from moonlora.data.manifest import SkippedRow, Utterance, load_manifest, write_manifest
from moonlora.outputs import claim_output_dir
from moonlora.progress import progress_bar
from moonlora.errors import InputError

# name -> (low Hz, high Hz, soft-clip drive or None)
BANDS: dict[str, tuple[float, float, float | None]] = {
    "telephone": (300.0, 3400.0, None),
    "radio": (500.0, 2500.0, 3.0),
}
NOISE_COLORS = ("white", "pink")
SNR_RANGE_DB = (-10.0, 60.0)
SPEED_RANGE = (0.5, 2.0)  # exclusive
FILTER_ORDER = 4  # per pass; zero-phase (forward-backward) doubles the slope, like sosfiltfilt
MANIFEST_NAME = "manifest.jsonl"
CONFIG_NAME = "augment_config.json"
OUTPUT_KIND = "augment"
OUTPUT_ENTRIES = ("clips", MANIFEST_NAME, CONFIG_NAME)


@dataclass(frozen=True)
class AugmentConfig:
    """What to read, where to write, and which effects to apply (at least one)."""

    manifest: str
    out_dir: str
    noise_snr_db: float | None = None
    band: str | None = None  # "telephone" (300–3400 Hz) or "radio" (500–2500 Hz + soft clipping)
    speed: float | None = None  # e.g. 0.9 or 1.1; >1 is faster and higher-pitched
    seed: int = 0
    overwrite: bool = False
    noise_color: str = "white"  # "white" or "pink"

    def __post_init__(self) -> None:
        if not str(self.manifest).strip() or not str(self.out_dir).strip():
            raise InputError("manifest and out_dir must both be given")
        if self.noise_snr_db is None and self.band is None and self.speed is None:
            raise InputError("nothing to do: give at least one of noise_snr_db, band, speed")
        _check_snr(self.noise_snr_db)
        _check_speed(self.speed)
        if self.band is not None and self.band not in BANDS:
            raise InputError(f"unknown band {self.band!r}; known: {', '.join(BANDS)}")
        if self.noise_color not in NOISE_COLORS:
            raise InputError(f"unknown noise_color {self.noise_color!r}; known: {', '.join(NOISE_COLORS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        row = asdict(self)
        row["manifest"], row["out_dir"] = str(self.manifest), str(self.out_dir)
        return row


def _check_snr(snr_db: float | None) -> None:
    if snr_db is None:
        return
    low, high = SNR_RANGE_DB
    if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float)) or not low <= snr_db <= high:
        raise InputError(f"noise_snr_db must be a number in [{low:g}, {high:g}] dB, got {snr_db!r}")


def _check_speed(speed: float | None) -> None:
    if speed is None:
        return
    low, high = SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not low < speed < high:
        raise InputError(f"speed must be a number strictly between {low:g} and {high:g}, got {speed!r}")
    if speed == 1.0:
        raise InputError("speed 1.0 changes nothing; leave speed out instead")


@dataclass
class AugmentResult:
    out_dir: Path
    manifest_path: Path
    config_path: Path
    written: int
    total_seconds: float
    skipped: list[SkippedRow] = field(default_factory=list)  # load_manifest's, plus clips that failed to decode

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest_path),
            "config": str(self.config_path),
            "written": self.written,
            "total_seconds": self.total_seconds,
            "skipped": [row.to_dict() for row in self.skipped],
        }


# --- effects (pure functions on float waveforms at SAMPLE_RATE) -------------------------------


def change_speed(waveform: np.ndarray, speed: float) -> np.ndarray:
    """Play `speed` times faster (tempo and pitch), like sox `speed`: length becomes n / speed."""
    out = soxr.resample(waveform.astype(np.float32), SAMPLE_RATE * speed, SAMPLE_RATE, quality="HQ")
    return out.astype(np.float32)


def band_limit(waveform: np.ndarray, low_hz: float, high_hz: float, order: int = FILTER_ORDER) -> np.ndarray:
    """Zero-phase Butterworth band-pass, applied as a magnitude mask on the FFT.

    The mask is |H|^2 of an order-`order` Butterworth high-pass times low-pass, i.e. the
    response of filtering forward and backward (scipy's sosfiltfilt), which scipy is not
    installed to do. Zero padding keeps the circular convolution from wrapping the ends.
    """
    n = waveform.size
    pad = SAMPLE_RATE // 10  # 100 ms: the filter's impulse response has long decayed by then
    spectrum = np.fft.rfft(waveform.astype(np.float64), n + pad)
    freqs = np.fft.rfftfreq(n + pad, d=1.0 / SAMPLE_RATE)
    with np.errstate(divide="ignore"):
        highpass = 1.0 / (1.0 + (low_hz / freqs) ** (2 * order))  # freqs == 0 -> 0
    lowpass = 1.0 / (1.0 + (freqs / high_hz) ** (2 * order))
    return np.fft.irfft(spectrum * highpass * lowpass, n + pad)[:n].astype(np.float32)


def radio_saturate(waveform: np.ndarray, drive: float) -> np.ndarray:
    """Soft clipping/compression (tanh) of an AM radio chain, keeping the clip's peak level."""
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    if peak == 0.0:
        return waveform
    shaped = np.tanh(drive * waveform / peak) / np.tanh(drive)
    return (shaped * peak).astype(np.float32)


def make_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white or pink (1/f power) noise of `n` samples."""
    noise = rng.standard_normal(n)
    if color == "pink":
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
        scale = np.zeros_like(freqs)
        scale[1:] = 1.0 / np.sqrt(freqs[1:])
        noise = np.fft.irfft(spectrum * scale, n)
    rms = float(np.sqrt(np.mean(noise**2))) if n else 0.0
    return noise / rms if rms > 0 else noise


def add_noise(waveform: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    """Add noise whose RMS is the clip's RMS minus `snr_db` (digital silence gets none)."""
    signal_rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))) if waveform.size else 0.0
    noise = make_noise(waveform.size, color, rng) * signal_rms * 10.0 ** (-snr_db / 20.0)
    return (waveform + noise).astype(np.float32)


def apply_effects(waveform: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed, then band (and radio saturation), then noise; clipped to [-1, 1]."""
    if config.speed is not None:
        waveform = change_speed(waveform, config.speed)
    if config.band is not None:
        low, high, drive = BANDS[config.band]
        waveform = band_limit(waveform, low, high)
        if drive is not None:
            waveform = radio_saturate(waveform, drive)
    if config.noise_snr_db is not None:
        waveform = add_noise(waveform, config.noise_snr_db, config.noise_color, rng)
    return np.clip(waveform, -1.0, 1.0).astype(np.float32)


# --- manifest-level driver ----------------------------------------------------------------------


def clip_rng(seed: int, utterance: Utterance) -> np.random.Generator:
    """Per-clip generator keyed on the manifest line, so results ignore order and skipped rows."""
    return np.random.default_rng([seed, utterance.line])


def output_names(utterances: list[Utterance]) -> list[str]:
    """`<stem>.wav` per clip; stems shared by several clips get `-L<line>` appended."""
    stems = [u.audio_filepath.stem for u in utterances]
    counts = {stem: stems.count(stem) for stem in stems}
    return [f"{s}.wav" if counts[s] == 1 else f"{s}-L{u.line}.wav" for s, u in zip(stems, utterances)]


def _prepare_out_dir(out_dir: Path, manifest_path: Path, utterances: list[Utterance], overwrite: bool) -> Path:
    """Refuse to clobber earlier output or any original; return the (fresh) clips folder.

    With `overwrite`, only what an earlier augment wrote into `out_dir` is removed (the output policy).
    """
    clips_dir = out_dir / "clips"
    if (out_dir / MANIFEST_NAME).resolve() == manifest_path.resolve():
        raise InputError(f"--out {out_dir}: output manifest would replace the input manifest {manifest_path}")
    for utterance in utterances:
        if utterance.audio_filepath.resolve().is_relative_to(clips_dir.resolve()):  # --overwrite would remove it
            raise InputError(
                f"--out {out_dir}: its clips/ folder holds original audio ({utterance.audio_filepath}); "
                "choose another --out so originals are never touched"
            )
    claim_output_dir(out_dir, "--out", OUTPUT_KIND, OUTPUT_ENTRIES, overwrite)
    clips_dir.mkdir(exist_ok=True)
    return clips_dir


def _augment_one(utterance: Utterance, name: str, clips_dir: Path, config: AugmentConfig) -> dict:
    """Write one augmented clip and return its manifest row."""
    waveform = apply_effects(load_audio(utterance.audio_filepath), config, clip_rng(config.seed, utterance))
    sf.write(str(clips_dir / name), waveform, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    row = {"audio_filepath": f"clips/{name}", "duration": round(waveform.size / SAMPLE_RATE, 3), "text": utterance.text}
    if utterance.speaker is not None:
        row["speaker"] = utterance.speaker
    row["source_audio"] = str(utterance.audio_filepath)
    return row


def _write_config(out_dir: Path, config: AugmentConfig, written: int, skipped: list[SkippedRow]) -> Path:
    path = out_dir / CONFIG_NAME
    payload = {
        **config.to_dict(),
        "effects_order": ["speed", "band", "noise"],
        "bands_hz": {name: [low, high] for name, (low, high, _) in BANDS.items()},
        "sample_rate": SAMPLE_RATE,
        "written": written,
        "skipped": [row.to_dict() for row in skipped],
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def augment_manifest(config: AugmentConfig, progress: bool = True) -> AugmentResult:
    """Write augmented copies of every usable clip of `config.manifest` into `config.out_dir`.

    Writes `clips/*.wav` (16 kHz PCM_16), `manifest.jsonl` and `augment_config.json`.
    Deterministic for `config.seed`. Rows that cannot be used are reported, not fatal.
    """
    manifest = load_manifest(config.manifest)  # paths and headers only; no clip is decoded before the check
    out_dir = Path(config.out_dir)
    clips_dir = _prepare_out_dir(out_dir, manifest.path, manifest.utterances, config.overwrite)
    skipped = list(manifest.skipped)
    rows: list[dict] = []
    names = output_names(manifest.utterances)
    pairs = zip(manifest.utterances, names)
    bar = progress_bar(len(names), "augment", unit="clip", enabled=progress)
    for utterance, name in pairs:
        try:
            rows.append(_augment_one(utterance, name, clips_dir, config))
        except AudioError as error:
            skipped.append(SkippedRow(str(manifest.path), utterance.line, "unreadable_audio", str(error)))
        bar.update(1)
    bar.close()
    manifest_path = write_manifest(rows, out_dir / MANIFEST_NAME)
    config_path = _write_config(out_dir, config, len(rows), skipped)
    return AugmentResult(
        out_dir=out_dir,
        manifest_path=manifest_path,
        config_path=config_path,
        written=len(rows),
        total_seconds=round(sum(row["duration"] for row in rows), 3),
        skipped=skipped,
    )
