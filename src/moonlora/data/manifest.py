"""Manifests: JSONL rows naming an audio file and its transcript (NeMo field names).

`load_manifest` is the only reader. Rows that cannot be used are skipped, counted and
listed with their file and line — never silently dropped, never a traceback. The official
fine-tuner's manifests (`moonshine_voice.lora`: `{"audio": path, "text": ...}` as JSONL, a JSON
list or `{"utterances": [...]}`, or `path<TAB>text` lines in a .tsv/.csv) load as they are;
audio held inline (`{"array": [...], "sampling_rate": ...}` or encoded bytes) is refused with a
pointer to `moonlora import`, which writes it to files.

A non-speech manifest (`load_manifest(..., nonspeech=True)`: `experiment --nonspeech-manifest`, the
canary `moonlora synth --domain nonspeech` writes) names clips in which nobody speaks: a row needs no
transcript, and a row whose transcript has words is skipped ("has_words": it is speech).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moonlora.data.audio import AudioError, header_duration
from moonlora.configs import DEFAULT_LANGUAGE
from moonlora.data.text import has_words, normalize
from moonlora.errors import MoonloraError

AUDIO_KEYS = ("audio_filepath", "audio", "path", "wav", "audio_path")
TEXT_KEYS = ("text", "transcript", "transcription", "sentence")
DURATION_KEYS = ("duration", "seconds")
SPEAKER_KEYS = ("speaker", "speaker_id", "group")  # group: the official fine-tuner's name


class ManifestError(MoonloraError, ValueError):
    """The manifest as a whole cannot be used (missing file, no usable row, inline audio)."""


@dataclass(frozen=True)
class Utterance:
    """One usable manifest row."""

    audio_filepath: Path  # resolved against the manifest's folder
    text: str
    duration: float  # seconds: the row's own field, else the file header
    speaker: str | None
    line: int  # 1-based line in the manifest
    file_duration: float  # seconds, from the file header
    audio_sha256: str

    @property
    def utt_id(self) -> str:
        return f"{self.line}:{self.audio_filepath.name}"

    def to_dict(self) -> dict:
        row = {"audio_filepath": str(self.audio_filepath), "duration": self.duration, "text": self.text}
        if self.speaker is not None:
            row["speaker"] = self.speaker
        return row


@dataclass(frozen=True)
class SkippedRow:
    manifest: str
    line: int
    # bad_json | no_audio_field | empty_text | text_normalizes_to_nothing | missing_audio
    # | unreadable_audio | bad_duration | has_words (a non-speech manifest's row with a transcript)
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Manifest:
    path: Path
    utterances: list[Utterance]
    skipped: list[SkippedRow] = field(default_factory=list)
    nonspeech: bool = False  # clips without speech: every transcript is empty

    @property
    def total_seconds(self) -> float:
        return sum(u.duration for u in self.utterances)

    @property
    def content_hash(self) -> str:
        """Hash of what is measured: each used row's audio bytes and transcript, in order."""
        digest = hashlib.sha256()
        for utterance in self.utterances:
            digest.update(utterance.audio_sha256.encode())
            digest.update(b"\0" + utterance.text.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def skipped_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row.kind] = counts.get(row.kind, 0) + 1
        return counts


def _first(row: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_duration(value) -> float | None:
    if isinstance(value, bool):
        raise ValueError
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError
    return seconds


def parse_row(row: object, manifest_dir: Path, name: str, line: int,
              language: str = DEFAULT_LANGUAGE, nonspeech: bool = False) -> Utterance | SkippedRow:
    """Turn one decoded JSON row into an Utterance, or say why it cannot be used (`language` picks the
    normalizer that decides whether the transcript has a word to score; `nonspeech`: the row must have
    none, and its Utterance's text is empty)."""

    def skip(kind: str, reason: str) -> SkippedRow:
        return SkippedRow(name, line, kind, reason)

    if not isinstance(row, dict):
        return skip("bad_json", "row is not a JSON object")
    audio_field = _first(row, AUDIO_KEYS)
    if isinstance(audio_field, dict):  # a Hugging Face audio value: {"path", "bytes"} or {"array", "sampling_rate"}
        inline = ("an array" if audio_field.get("array") is not None
                  else "encoded bytes" if audio_field.get("bytes") else None)
        if inline:
            raise ManifestError(f"{name}:{line}: the audio is inline ({inline}), not a file; moonlora reads audio "
                                f"files: run `moonlora import {name} --out DIR` to write the clips as WAV files "
                                "with a manifest, and use that manifest")
        audio_field = audio_field.get("path")
    if not isinstance(audio_field, str) or not audio_field.strip():
        return skip("no_audio_field", f"no audio path (expected one of {', '.join(AUDIO_KEYS)})")
    text = _first(row, TEXT_KEYS)
    if nonspeech:
        if isinstance(text, str) and has_words(normalize(text, language)):
            return skip("has_words", f"transcript {text.strip()!r} has words, but a non-speech manifest holds "
                                     "clips in which nobody speaks; drop the row or its text")
        text = ""
    elif not isinstance(text, str) or not text.strip():
        return skip("empty_text", f"empty or missing transcript (expected one of {', '.join(TEXT_KEYS)})")
    elif not has_words(normalize(text, language)):
        # Scoring compares normalized words; with none in the reference, WER has no denominator.
        return skip(
            "text_normalizes_to_nothing",
            f"transcript {text.strip()!r} has no words once normalized (case, punctuation and fillers "
            "removed), so it cannot be scored; write the spoken words or drop the row",
        )
    audio_path = Path(audio_field).expanduser()
    if not audio_path.is_absolute():
        audio_path = manifest_dir / audio_path
    if not audio_path.is_file():
        return skip("missing_audio", f"audio file not found: {audio_path}")
    try:
        file_seconds = header_duration(audio_path)
    except AudioError as error:
        return skip("unreadable_audio", str(error))
    declared = _first(row, DURATION_KEYS)
    try:
        duration = file_seconds if declared is None else _parse_duration(declared)
    except (TypeError, ValueError):
        return skip("bad_duration", f"duration is not a positive number: {declared!r}")
    speaker = _first(row, SPEAKER_KEYS)
    return Utterance(
        audio_filepath=audio_path,
        text=text.strip(),
        duration=duration,
        speaker=None if speaker is None else str(speaker),
        line=line,
        file_duration=file_seconds,
        audio_sha256=file_sha256(audio_path),
    )


def _json_rows(path: Path):
    """The official fine-tuner's .json manifest: a list of rows or {"utterances": [...]}; line = the row's position."""
    try:
        document = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); a .json manifest is a list of rows "
                            'or {"utterances": [...]}') from None
    rows = document.get("utterances") if isinstance(document, dict) else document
    if not isinstance(rows, list):
        raise ManifestError(f'{path}: a .json manifest is a list of rows or {{"utterances": [...]}}')
    return list(enumerate(rows, start=1))


def _line_row(path: Path, line_number: int, raw: str):
    """One line as a row: path<TAB>text in a .tsv/.csv (the fine-tuner's; CSV splits at the first comma), else JSON."""
    if path.suffix.lower() in (".tsv", ".csv"):
        fields = raw.strip().split("\t" if "\t" in raw else ",", 1)
        if len(fields) != 2:
            return SkippedRow(str(path), line_number, "bad_json", "expected path<TAB>text")
        return {"audio": fields[0].strip(), "text": fields[1].strip()}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        return SkippedRow(str(path), line_number, "bad_json", f"invalid JSON ({error.msg})")


def _rows(path: Path):
    """(line, decoded row or SkippedRow) for every non-empty line (row of a .json list)."""
    if path.suffix.lower() == ".json":
        yield from _json_rows(path)
        return
    tabular = path.suffix.lower() in (".tsv", ".csv")
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.strip() and not (tabular and raw.lstrip().startswith("#")):
                yield line_number, _line_row(path, line_number, raw)


def load_manifest(path: str | Path, language: str = DEFAULT_LANGUAGE, nonspeech: bool = False) -> Manifest:
    """Read a manifest (JSONL, or the fine-tuner's JSON/TSV); unusable rows are collected in `Manifest.skipped`.

    `language` is the transcripts' (the scoring normalizer's, see moonlora.data.text); `nonspeech`: the
    clips hold no speech (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; pass a JSONL file with one row per clip")
    utterances: list[Utterance] = []
    skipped: list[SkippedRow] = []
    for line_number, row in _rows(path):
        if isinstance(row, SkippedRow):
            skipped.append(row)
            continue
        parsed = parse_row(row, path.parent, str(path), line_number, language, nonspeech)
        (utterances if isinstance(parsed, Utterance) else skipped).append(parsed)
    if not utterances:
        detail = f"; first problem: {skipped[0]}" if skipped else ""
        raise ManifestError(f"{path}: no usable rows ({len(skipped)} skipped){detail}")
    return Manifest(path=path, utterances=utterances, skipped=skipped, nonspeech=nonspeech)


def write_manifest(rows: list[dict], path: str | Path) -> Path:
    """Write rows as JSONL (one JSON object per line, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
