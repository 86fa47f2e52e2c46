"""The non-speech canary: clips in which nobody speaks, built offline (`moonlora synth --domain nonspeech`).

Moonshine's best-known failure is text where there is no speech; a LoRA run can make it worse while
every WER on speech improves. `experiment --nonspeech-manifest` scores these clips by the words each
model emits (`moonlora.eval.stats.compare_nonspeech`), and `decide` gates it.

The set is fixed and deterministic (the same bytes for a seed): digital silence, low-level hiss, white
and pink noise, band-limited radio static (the `augment --band radio` chain: 500-2500 Hz and soft
clipping), mains hum with its harmonics, and steady tones, each short and long and at several levels
(RMS in dBFS). The manifest's rows carry no transcript; `kind` and `level_dbfs` say what each clip is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from moonlora.data.audio import SAMPLE_RATE
from moonlora.data.augment import BANDS, band_limit, make_noise, radio_saturate
from moonlora.outputs import claim_output_dir
from moonlora.progress import progress_bar

DOMAIN = "nonspeech"  # `moonlora synth --domain nonspeech`
MANIFEST_NAME = "nonspeech.jsonl"
CONFIG_NAME = "synth_config.json"
OUTPUT_KIND = "synth"
OUTPUT_ENTRIES = ("clips", MANIFEST_NAME, CONFIG_NAME)
DURATIONS = (2.0, 10.0)  # seconds: short and long
# kind -> levels (RMS dBFS); every kind is built at every duration ("silence" is digital zero)
LEVELS: dict[str, tuple[float | None, ...]] = {
    "silence": (None,),
    "hiss": (-70.0, -60.0),
    "white": (-45.0, -35.0, -25.0),
    "pink": (-45.0, -35.0, -25.0),
    "radio_static": (-45.0, -35.0, -25.0, -15.0),
    "hum_50hz": (-40.0, -25.0),
    "hum_60hz": (-40.0, -25.0),
    "tone_440hz": (-30.0, -20.0),
    "tone_1khz": (-30.0, -20.0),
}
HUM_HARMONICS = (1.0, 0.5, 0.3, 0.15)  # relative amplitudes of f, 2f, 3f, 4f


@dataclass(frozen=True)
class NonspeechResult:
    out_dir: Path
    manifest: Path
    clips: int
    seconds: float


def _scaled(waveform: np.ndarray, level_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    return (waveform / rms * 10.0 ** (level_dbfs / 20.0)).astype(np.float32)


def _sines(n: int, freqs_and_amps: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return sum(amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) for freq, amp in freqs_and_amps)


def render(kind: str, seconds: float, level_dbfs: float | None, rng: np.random.Generator) -> np.ndarray:
    """One clip of `kind` at `level_dbfs` RMS (None: digital silence), float32 at 16 kHz."""
    n = int(round(seconds * SAMPLE_RATE))
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    if kind in ("hiss", "white"):
        waveform = make_noise(n, "white", rng)
    elif kind == "pink":
        waveform = make_noise(n, "pink", rng)
    elif kind == "radio_static":
        low, high, drive = BANDS["radio"]
        waveform = radio_saturate(band_limit(make_noise(n, "white", rng), low, high), drive)
    elif kind.startswith("hum_"):
        base = float(kind.removeprefix("hum_").removesuffix("hz"))
        waveform = _sines(n, [(base * (i + 1), amp) for i, amp in enumerate(HUM_HARMONICS)], rng)
    elif kind.startswith("tone_"):
        freq = {"tone_440hz": 440.0, "tone_1khz": 1000.0}[kind]
        waveform = _sines(n, [(freq, 1.0)], rng)
    else:
        raise ValueError(f"unknown non-speech kind {kind!r}")
    return np.clip(_scaled(np.asarray(waveform, dtype=np.float64), level_dbfs), -1.0, 1.0).astype(np.float32)


def plan() -> list[tuple[str, float, float | None]]:
    """(kind, seconds, level) of every clip, in manifest order."""
    return [(kind, seconds, level) for kind, levels in LEVELS.items() for level in levels for seconds in DURATIONS]


def clip_name(index: int, kind: str, seconds: float, level: float | None) -> str:
    level_part = "digital" if level is None else f"{-level:g}dbfs"
    return f"{index:03d}_{kind}_{seconds:g}s_{level_part}.wav"


def build_nonspeech(out_dir: Path, seed: int = 0, overwrite: bool = False, progress: bool = True) -> NonspeechResult:
    """Write `out_dir/clips/*.wav` (16 kHz PCM_16), `nonspeech.jsonl` (rows without transcripts) and
    `synth_config.json`; the same bytes for a seed. A folder holding other output is refused;
    `overwrite` replaces only what an earlier synth wrote there."""
    out_dir = Path(out_dir)
    claim_output_dir(out_dir, "--out", OUTPUT_KIND, OUTPUT_ENTRIES, overwrite)
    (out_dir / "clips").mkdir(exist_ok=True)
    clips = plan()
    rows = []
    bar = progress_bar(len(clips), "synth nonspeech", unit="clip", enabled=progress)
    for index, (kind, seconds, level) in enumerate(clips):
        waveform = render(kind, seconds, level, np.random.default_rng([seed, index]))
        name = f"clips/{clip_name(index, kind, seconds, level)}"
        sf.write(out_dir / name, waveform, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        rows.append({"audio_filepath": name, "duration": seconds, "text": "", "kind": kind, "level_dbfs": level})
        bar.update(1)
    bar.close()
    manifest = out_dir / MANIFEST_NAME
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = {"domain": DOMAIN, "seed": seed, "clips": len(rows), "durations": list(DURATIONS),
              "levels_dbfs": {kind: list(levels) for kind, levels in LEVELS.items()},
              "hum_harmonics": list(HUM_HARMONICS), "radio_band_hz": list(BANDS["radio"][:2]),
              "sample_rate": SAMPLE_RATE}
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return NonspeechResult(out_dir, manifest, len(rows), sum(seconds for _, seconds, _ in clips))
