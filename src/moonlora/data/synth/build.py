"""Build a synthetic train/test set for a domain: wav clips plus NeMo-style manifests."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import soundfile as sf

from moonlora.errors import InputError
from moonlora.outputs import claim_output_dir
from moonlora.progress import progress_bar
from moonlora.data.synth import espeak
from moonlora.data.synth.domains import DOMAINS

# Train and test voices share no accent+variant pair, and no variant either.
TRAIN_VOICES = (
    "en-us+m3",
    "en+f2",
    "en-gb-scotland+m1",
    "en-029+f4",
    "en-us-nyc+m5",
    "en-gb-x-gbclan+f1",
)
TEST_VOICES = (
    "en-gb-x-rp+m2",
    "en-us+f3",
    "en-gb-x-gbcwmd+m7",
)
WPM_RANGE = (140, 190)
PITCH_RANGE = (35, 65)
OUTPUT_KIND = "synth"
OUTPUT_ENTRIES = ("clips", "train.jsonl", "test.jsonl", "synth_config.json")


@dataclass(frozen=True)
class SynthResult:
    """Where `build_domain` wrote its output, and how much."""

    out_dir: Path
    train_manifest: Path
    test_manifest: Path
    config_path: Path
    n_train: int
    n_test: int
    train_seconds: float
    test_seconds: float


@dataclass(frozen=True)
class _Clip:
    split: str
    name: str
    text: str
    voice: str
    wpm: int
    pitch: int


def build_domain(
    domain: str,
    n: int,
    seed: int,
    out_dir: Path,
    test_fraction: float = 0.33,
    train_voices: tuple[str, ...] = TRAIN_VOICES,
    test_voices: tuple[str, ...] = TEST_VOICES,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthResult:
    """Synthesize `n` utterances of `domain` into `out_dir` (deterministic for `seed`).

    Writes `clips/*.wav` (16 kHz PCM_16), `train.jsonl`, `test.jsonl` and
    `synth_config.json`. Train and test use disjoint voices and disjoint texts. A folder holding
    earlier output is refused; `overwrite` replaces only what an earlier synth wrote there.
    """
    _check_args(domain, n, test_fraction, train_voices, test_voices)
    out_dir = Path(out_dir)
    claim_output_dir(out_dir, "--out", OUTPUT_KIND, OUTPUT_ENTRIES, overwrite)  # before any synthesis
    (out_dir / "clips").mkdir(exist_ok=True)
    rng = random.Random(seed)
    texts = _unique_texts(domain, n, rng)
    clips = _plan_clips(texts, test_fraction, train_voices, test_voices, rng)

    rows: dict[str, list[dict]] = {"train": [], "test": []}
    bar = progress_bar(len(clips), f"synth {domain}", unit="clip", enabled=progress)
    for clip in clips:
        rows[clip.split].append(_render(clip, out_dir))
        bar.update(1)
    bar.close()

    train_manifest = _write_manifest(out_dir / "train.jsonl", rows["train"])
    test_manifest = _write_manifest(out_dir / "test.jsonl", rows["test"])
    config_path = _write_config(out_dir, domain, n, seed, test_fraction, train_voices, test_voices)
    return SynthResult(
        out_dir=out_dir,
        train_manifest=train_manifest,
        test_manifest=test_manifest,
        config_path=config_path,
        n_train=len(rows["train"]),
        n_test=len(rows["test"]),
        train_seconds=round(sum(r["duration"] for r in rows["train"]), 3),
        test_seconds=round(sum(r["duration"] for r in rows["test"]), 3),
    )


def _check_args(domain, n, test_fraction, train_voices, test_voices) -> None:
    if domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}; known: {', '.join(sorted(DOMAINS))}")
    if n < 2:
        raise InputError("n must be at least 2 (one train and one test clip)")
    if not 0 < test_fraction < 1:
        raise InputError("test_fraction must be strictly between 0 and 1")
    if not train_voices or not test_voices:
        raise InputError("train_voices and test_voices must both be non-empty")
    shared = set(train_voices) & set(test_voices)
    if shared:
        raise InputError(f"train and test voices must be disjoint; shared: {sorted(shared)}")
    for voice in (*train_voices, *test_voices):
        espeak.check_voice(voice)  # fail before writing any clip


def _unique_texts(domain: str, n: int, rng: random.Random) -> list[str]:
    """Draw `n` distinct texts, so no test sentence is also a train sentence."""
    generate = DOMAINS[domain]
    texts: dict[str, None] = {}
    for _ in range(100):
        for text in generate(n - len(texts), rng):
            texts.setdefault(text)
        if len(texts) == n:
            return list(texts)
    raise InputError(f"domain {domain!r} could not produce {n} distinct utterances")


def _plan_clips(texts, test_fraction, train_voices, test_voices, rng) -> list[_Clip]:
    n_test = min(max(1, round(len(texts) * test_fraction)), len(texts) - 1)
    order = list(range(len(texts)))
    rng.shuffle(order)
    test_ids = set(order[:n_test])
    clips, counts = [], {"train": 0, "test": 0}
    for i, text in enumerate(texts):
        split = "test" if i in test_ids else "train"
        voices = test_voices if split == "test" else train_voices
        k = counts[split]
        counts[split] += 1
        clips.append(_Clip(
            split=split,
            name=f"{split}_{k:05d}.wav",
            text=text,
            voice=voices[k % len(voices)],  # round-robin keeps speakers balanced
            wpm=rng.randint(*WPM_RANGE),
            pitch=rng.randint(*PITCH_RANGE),
        ))
    return clips


def _render(clip: _Clip, out_dir: Path) -> dict:
    audio = espeak.synthesize(clip.text, clip.voice, clip.wpm, clip.pitch)
    rel = f"clips/{clip.name}"
    sf.write(out_dir / rel, audio, espeak.SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return {
        "audio_filepath": rel,
        "duration": round(len(audio) / espeak.SAMPLE_RATE, 3),
        "text": clip.text,
        "speaker": clip.voice,
    }


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(lines, encoding="utf-8")
    return path


def _write_config(out_dir, domain, n, seed, test_fraction, train_voices, test_voices) -> Path:
    config = {
        "domain": domain,
        "n": n,
        "seed": seed,
        "test_fraction": test_fraction,
        "train_voices": list(train_voices),
        "test_voices": list(test_voices),
        "words_per_minute_range": list(WPM_RANGE),
        "pitch_range": list(PITCH_RANGE),
        "sample_rate": espeak.SAMPLE_RATE,
        "pad_seconds": espeak.PAD_SECONDS,
        "espeakng_loader_version": _version("espeakng-loader"),
    }
    path = out_dir / "synth_config.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None

