"""Tiny corpora in every layout `moonlora import` reads, built from synthetic speech (eSpeak NG voices in
English, Spanish and German): a few clips each, so the import tests stay fast."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from moonlora.data.synth.espeak import synthesize

# (text as the corpus writes it, voice, speaker)
UTTERANCES = (
    ("CLEARED FOR TAKEOFF", "en-us+m3", "84"),
    ("HOLD SHORT OF RUNWAY TWO", "en+f2", "84"),
    ("HOLA MUNDO", "es", "174"),
    ("GUTEN TAG", "de", "174"),
)


@functools.lru_cache(maxsize=None)
def speech(index: int) -> np.ndarray:
    """Utterance `index` as float32 at 16 kHz (deterministic)."""
    text, voice, _ = UTTERANCES[index]
    return synthesize(text.lower(), voice)


def seconds(index: int) -> float:
    return speech(index).size / 16000


def resampled(index: int, rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(speech(index), 16000, rate).astype(np.float32)


def librispeech(root: Path) -> Path:
    """LibriSpeech/test-clean/SPEAKER/CHAPTER/*.flac + SPEAKER-CHAPTER.trans.txt (upper case)."""
    base = root / "LibriSpeech" / "test-clean"
    chapters: dict[Path, list[str]] = {}
    for index, (text, _, speaker) in enumerate(UTTERANCES):
        folder = base / speaker / "1000"
        folder.mkdir(parents=True, exist_ok=True)
        uid = f"{speaker}-1000-{index:04d}"
        sf.write(folder / f"{uid}.flac", speech(index), 16000, subtype="PCM_16")
        chapters.setdefault(folder, []).append(f"{uid} {text}")
    for folder, lines in chapters.items():
        (folder / f"{folder.parent.name}-1000.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


def mls(root: Path) -> Path:
    """Multilingual LibriSpeech: test/transcripts.txt (SPEAKER_BOOK_SEGMENT<TAB>text) + audio/SPK/BOOK/ID.opus (48 kHz)."""
    lines = []
    for index in (2, 3):
        speaker = UTTERANCES[index][2]
        uid = f"{speaker}_77_{index:06d}"
        folder = root / "test" / "audio" / speaker / "77"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{uid}.opus", resampled(index, 48000), 48000, format="OGG", subtype="OPUS")
        lines.append(f"{uid}\t{UTTERANCES[index][0].lower()}\n")
    (root / "test" / "transcripts.txt").write_text("".join(lines) + "broken line\n")
    return root


def common_voice(root: Path) -> Path:
    """clips/*.mp3 (48 kHz) + train.tsv / test.tsv with client_id, path, sentence; one row names a missing clip."""
    (root / "clips").mkdir(parents=True)
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    rows = {"train": [], "test": []}
    for index, (text, _, speaker) in enumerate(UTTERANCES):
        name = f"common_voice_xx_{index}.mp3"
        sf.write(root / "clips" / name, resampled(index, 48000), 48000, format="MP3")
        split = "train" if index < 3 else "test"
        rows[split].append(f"client{speaker}\t{name}\t{text.title()} \"quoted\"\t2\t0\t\t\t\txx\t\n")
    rows["test"].append("client9\tcommon_voice_xx_missing.mp3\tNot there\t2\t0\t\t\t\txx\t\n")
    for split, lines in rows.items():
        (root / f"{split}.tsv").write_text(header + "".join(lines))
    return root


def kaldi(root: Path) -> tuple[Path, list[tuple[float, float]]]:
    """data/train: one 22.05 kHz recording holding utterances 0 and 1 with a pause, cut by `segments`;
    data/test: utterance 2 as its own file, plus a command-pipe entry (skipped)."""
    train, test = root / "data" / "train", root / "data" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    (root / "wav").mkdir()
    rate = 22050
    first, pause, second = resampled(0, rate), np.zeros(rate // 2, np.float32), resampled(1, rate)
    sf.write(root / "wav" / "rec1.wav", np.concatenate([first, pause, second]), rate, subtype="PCM_16")
    spans = [(0.0, first.size / rate), ((first.size + pause.size) / rate, (first.size + pause.size + second.size) / rate)]
    (train / "wav.scp").write_text(f"rec1 {root / 'wav' / 'rec1.wav'}\n")
    (train / "segments").write_text("".join(f"utt{i} rec1 {start:.4f} {end:.4f}\n" for i, (start, end) in enumerate(spans)))
    (train / "text").write_text(f"utt0 {UTTERANCES[0][0]}\nutt1 {UTTERANCES[1][0]}\n")
    (train / "utt2spk").write_text("utt0 pilot\nutt1 tower\n")
    sf.write(root / "wav" / "utt2.wav", speech(2), 16000, subtype="PCM_16")
    (test / "wav.scp").write_text("utt2 wav/utt2.wav\nutt3 sox in.wav -t wav - |\n")
    (test / "text").write_text(f"utt2 {UTTERANCES[2][0]}\nutt3 {UTTERANCES[3][0]}\n")
    (test / "utt2spk").write_text("utt2 spk2\nutt3 spk3\n")
    return root / "data", spans


def rows_jsonl(root: Path) -> Path:
    """The official fine-tuner's JSONL: {"audio": path, "text"}, one inline array row, one row without text."""
    root.mkdir(parents=True, exist_ok=True)
    sf.write(root / "a.wav", speech(0), 16000, subtype="PCM_16")
    sf.write(root / "b.flac", resampled(1, 8000), 8000, subtype="PCM_16")
    rows = [{"audio": "a.wav", "text": "cleared for takeoff", "speaker": "p1"},
            {"audio": str(root / "b.flac"), "text": "hold short of runway two", "group": "p2"},
            {"audio": {"array": speech(2).tolist(), "sampling_rate": 16000}, "text": "hola mundo"},
            {"audio": "a.wav", "text": ""}]
    path = root / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "{not json\n")
    return path


def text_folder(root: Path) -> Path:
    """Audio files with same-name .txt transcripts; one without."""
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    sf.write(root / "one.wav", resampled(0, 44100), 44100, subtype="PCM_16")
    (root / "one.txt").write_text("cleared for takeoff\n")
    sf.write(root / "sub" / "two.flac", speech(3), 16000, subtype="PCM_16")
    (root / "sub" / "two.txt").write_text("guten tag")
    sf.write(root / "orphan.wav", speech(1), 16000, subtype="PCM_16")
    return root


def audio_folder(root: Path) -> Path:
    """Hugging Face audiofolder: train/metadata.csv and test/metadata.csv with file_name, transcription, speaker_id."""
    for split, indices in (("train", (0, 1)), ("test", (2,))):
        (root / split).mkdir(parents=True)
        lines = ["file_name,transcription,speaker_id"]
        for index in indices:
            sf.write(root / split / f"clip{index}.wav", speech(index), 16000, subtype="PCM_16")
            lines.append(f"clip{index}.wav,\"{UTTERANCES[index][0].lower()}, said\",{UTTERANCES[index][2]}")
        (root / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def wav_bytes(index: int, rate: int = 16000, fmt: str = "WAV") -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, resampled(index, rate) if rate != 16000 else speech(index), rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def hf_dataset(indices=(0, 1, 2, 3)):
    """A `datasets.Dataset` with an Audio column holding encoded bytes (FLAC at 24 kHz), text, speaker_id, id."""
    from datasets import Audio, Dataset

    data = {"id": [f"utt-{i}" for i in indices],
            "audio": [{"bytes": wav_bytes(i, 24000, "FLAC"), "path": f"utt-{i}.flac"} for i in indices],
            "text": [UTTERANCES[i][0] for i in indices], "speaker_id": [int(UTTERANCES[i][2]) for i in indices]}
    return Dataset.from_dict(data).cast_column("audio", Audio())


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
