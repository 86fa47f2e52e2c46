"""Which layout a SOURCE has, and the readers of the file-based layouts.

Each reader turns index files into `Item`s and `Skip`s and decodes no audio. A line that cannot
be used is a counted skip naming its file and line; a file that cannot be used at all (a TSV
without its columns, JSON that is not rows) is one `InputError` naming it.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from moonlora.data.importers.items import AUDIO_SUFFIXES, AudioRef, Item, Skip, clean_text, safe_name
from moonlora.errors import InputError, MissingInput

FORMATS = ("auto", "librispeech", "mls", "commonvoice", "kaldi", "rows", "textfolder", "audiofolder", "hf-disk", "parquet",
           "arrow", "hub")
TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text", "raw_text")
SPEAKER_COLUMNS = ("speaker_id", "speaker", "client_id", "spk_id", "speaker_name", "group")
AUDIO_COLUMNS = ("audio", "file_name", "audio_filepath", "file", "path", "wav", "audio_path")
ID_COLUMNS = ("id", "utterance_id", "utt_id", "segment_id", "key")
ROW_SUFFIXES = (".jsonl", ".ndjson", ".json", ".tsv", ".csv")
COMMON_VOICE_SPLITS = ("train", "dev", "test")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Columns:
    """Column names given on the command line (None: detected)."""

    audio: str | None = None
    text: str | None = None
    speaker: str | None = None


@dataclass
class Source:
    """What a reader found: the items (audio not read yet) and the index lines it could not use."""

    name: str
    format: str
    items: list[Item] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def pick(names, given: str | None, candidates: tuple[str, ...], what: str, where: str, flag: str,
         required: bool = True) -> str | None:
    """The column `given` (refused when absent) or the first of `candidates` present."""
    if given is not None:
        if given not in names:
            raise InputError(f"{where}: no column {given!r} ({flag}); it has {', '.join(map(str, names))}")
        return given
    for name in candidates:
        if name in names:
            return name
    if required:
        raise InputError(f"{where}: no {what} column found among {', '.join(map(str, names))}; name it with {flag}")
    return None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def _resolve(raw: str, *bases: Path) -> Path:
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    for base in bases:
        if (base / path).exists():
            return base / path
    return bases[0] / path


# --- detection -----------------------------------------------------------------------------------------------------


def _is_common_voice_tsv(path: Path) -> bool:
    lines = _lines(path)[:1]
    header = lines[0].split("\t") if lines else []
    return "path" in header and "sentence" in header


def detect(source: str) -> str:
    """The layout of SOURCE, from its files; a name that is no local path is a hub id."""
    path = Path(source).expanduser()
    if not path.exists():
        if HUB_ID.match(source) and not source.startswith("."):
            return "hub"
        raise MissingInput(f"{source}: not found (neither a file, a folder nor a Hugging Face hub id)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".arrow":
            return "arrow"
        if suffix == ".tsv" and _is_common_voice_tsv(path):
            return "commonvoice"
        if suffix in ROW_SUFFIXES:
            return "rows"
        raise InputError(f"{source}: cannot tell its layout from the file type; pass --format ({', '.join(FORMATS[1:])})")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "hf-disk"
    if (path / "wav.scp").is_file() or any((sub / "wav.scp").is_file() for sub in _subfolders(path)):
        return "kaldi"
    if _metadata_files(path):
        return "audiofolder"
    if (path / "clips").is_dir() and any(_is_common_voice_tsv(tsv) for tsv in path.glob("*.tsv")):
        return "commonvoice"
    if next(path.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    if _mls_transcripts(path):
        return "mls"
    if next(path.rglob("*.parquet"), None) is not None:
        return "parquet"
    if next(path.rglob("*.arrow"), None) is not None:
        return "arrow"
    if any(audio.with_suffix(".txt").is_file() for audio in _audio_files(path)):
        return "textfolder"
    if _row_files(path):
        return "rows"
    raise InputError(f"{source}: no layout moonlora imports was found (LibriSpeech *.trans.txt, MLS transcripts.txt "
                     "+ audio/, Common Voice *.tsv + "
                     "clips/, Kaldi wav.scp, metadata.csv, audio with same-name .txt, rows, a save_to_disk folder, "
                     "parquet or arrow files); pass --format to say which it is")


def _subfolders(path: Path) -> list[Path]:
    return sorted(sub for sub in path.iterdir() if sub.is_dir())


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _metadata_files(root: Path) -> list[Path]:
    found = []
    for folder in [root, *_subfolders(root)]:
        for name in ("metadata.csv", "metadata.jsonl"):
            if (folder / name).is_file():
                found.append(folder / name)
                break
    return found


# --- LibriSpeech ---------------------------------------------------------------------------------------------------


def read_librispeech(root: Path, columns: Columns) -> Source:
    """`SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt` lines `ID TRANSCRIPT`, audio `ID.flac` beside them."""
    source = Source(str(root), "librispeech")
    for trans in sorted(root.rglob("*.trans.txt")):
        parts = trans.parent.relative_to(root).parts
        split = safe_name(parts[-3] if len(parts) >= 3 else root.name)
        for number, line in enumerate(_lines(trans), start=1):
            if not line.strip():
                continue
            origin = f"{trans}:{number}"
            fields = line.split(maxsplit=1)
            if len(fields) < 2:
                source.skipped.append(Skip(origin, "empty_text", f"no transcript after the id {fields[0]!r}"))
                continue
            uid, text = fields
            audio = next((trans.parent / f"{uid}{ext}" for ext in (".flac", ".wav")
                          if (trans.parent / f"{uid}{ext}").is_file()), trans.parent / f"{uid}.flac")
            source.items.append(Item(split, uid, clean_text(text), uid.split("-")[0], origin, AudioRef(path=audio)))
    return source


# --- Multilingual LibriSpeech ---------------------------------------------------------------------------------------


def _mls_transcripts(root: Path) -> list[Path]:
    return [t for t in sorted([root / "transcripts.txt", *root.glob("*/transcripts.txt")])
            if t.is_file() and (t.parent / "audio").is_dir()]


def read_mls(root: Path, columns: Columns) -> Source:
    """Multilingual LibriSpeech: `SPLIT/transcripts.txt` lines `SPEAKER_BOOK_SEGMENT<TAB>text`, audio at
    `SPLIT/audio/SPEAKER/BOOK/ID.flac` (or `.opus`)."""
    source = Source(str(root), "mls")
    for transcripts in _mls_transcripts(root):
        split = safe_name(transcripts.parent.name)
        for number, line in enumerate(_lines(transcripts), start=1):
            if not line.strip():
                continue
            origin = f"{transcripts}:{number}"
            fields = line.strip().split("\t", 1) if "\t" in line else line.split(maxsplit=1)
            parts = fields[0].split("_")
            if len(fields) < 2 or len(parts) < 3:
                source.skipped.append(Skip(origin, "bad_line", "expected SPEAKER_BOOK_SEGMENT<TAB>transcript"))
                continue
            folder = transcripts.parent / "audio" / parts[0] / parts[1]
            audio = next((folder / f"{fields[0]}{ext}" for ext in (".flac", ".opus", ".wav")
                          if (folder / f"{fields[0]}{ext}").is_file()), folder / f"{fields[0]}.flac")
            source.items.append(Item(split, fields[0], clean_text(fields[1]), parts[0], origin, AudioRef(path=audio)))
    return source


# --- Common Voice --------------------------------------------------------------------------------------------------


def read_common_voice(root: Path, columns: Columns, splits: tuple[str, ...] | None) -> Source:
    """`SPLIT.tsv` (client_id, path, sentence, ...) beside `clips/`; train/dev/test unless --split names others."""
    source = Source(str(root), "commonvoice")
    if root.is_file():
        tables = [root]
    elif splits:
        tables = [root / f"{split}.tsv" for split in splits]
        missing = [t for t in tables if not t.is_file()]
        if missing:
            raise MissingInput(f"{missing[0]}: not found (--split names the Common Voice TSVs to import)")
    else:
        tables = [root / f"{split}.tsv" for split in COMMON_VOICE_SPLITS if (root / f"{split}.tsv").is_file()]
        tables = tables or sorted(tsv for tsv in root.glob("*.tsv") if _is_common_voice_tsv(tsv))
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    for table in tables:
        with open(table, encoding="utf-8-sig", errors="replace", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows:
            raise InputError(f"{table}:1: empty; a Common Voice TSV starts with a header (client_id, path, sentence)")
        header = rows[0]
        audio_col = pick(header, columns.audio, ("path",), "audio path", f"{table}:1", "--audio-column")
        text_col = pick(header, columns.text, ("sentence", *TEXT_COLUMNS), "transcript", f"{table}:1", "--text-column")
        speaker_col = pick(header, columns.speaker, SPEAKER_COLUMNS, "speaker", f"{table}:1", "--speaker-column",
                           required=False)
        index = {name: i for i, name in enumerate(header)}
        for number, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            origin = f"{table}:{number}"
            if len(row) <= max(index[audio_col], index[text_col]):
                source.skipped.append(Skip(origin, "bad_line", f"{len(row)} columns, the header has {len(header)}"))
                continue
            name = row[index[audio_col]].strip()
            speaker = row[index[speaker_col]].strip() if speaker_col and len(row) > index[speaker_col] else None
            source.items.append(Item(safe_name(table.stem), Path(name).stem, clean_text(row[index[text_col]]),
                                     speaker or None, origin, AudioRef(path=_resolve(name, table.parent / "clips",
                                                                                      table.parent))))
    return source


# --- Kaldi ---------------------------------------------------------------------------------------------------------


def _kaldi_table(path: Path, source: Source, required: bool = True) -> dict[str, tuple[str, str]]:
    """`KEY VALUE` lines as key -> (value, origin)."""
    if not path.is_file():
        if required:
            raise MissingInput(f"{path}: not found; a Kaldi data folder holds wav.scp and text")
        return {}
    table: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        table[fields[0]] = (fields[1].strip() if len(fields) > 1 else "", f"{path}:{number}")
    return table


def _kaldi_audio(value: str, origin: str, folder: Path) -> AudioRef | Skip:
    if value.endswith("|") or value.startswith("|"):
        return Skip(origin, "unsupported", "wav.scp entry is a command pipe; moonlora runs no commands from wav.scp: "
                                           "write the audio to files and list their paths")
    if re.search(r"\.ark:\d+$", value):
        return Skip(origin, "unsupported", "wav.scp entry points into an .ark archive; list audio files instead")
    return AudioRef(path=_resolve(value, folder, folder.parent, folder.parent.parent))


def read_kaldi(root: Path, columns: Columns) -> Source:
    """`wav.scp`, `text`, `utt2spk` and optional `segments` (clips cut from recordings); one split per data folder."""
    source = Source(str(root), "kaldi")
    folders = [root] if (root / "wav.scp").is_file() else [sub for sub in _subfolders(root) if (sub / "wav.scp").is_file()]
    for folder in folders:
        split = safe_name(folder.name)
        wavs = _kaldi_table(folder / "wav.scp", source)
        texts = _kaldi_table(folder / "text", source)
        speakers = _kaldi_table(folder / "utt2spk", source, required=False)
        segments = _kaldi_table(folder / "segments", source, required=False)
        for utt, (text, origin) in texts.items():
            speaker = speakers.get(utt, ("", ""))[0] or None
            if segments:
                if utt not in segments:
                    source.skipped.append(Skip(origin, "no_audio", f"utterance {utt} is not in {folder / 'segments'}"))
                    continue
                value, seg_origin = segments[utt]
                fields = value.split()
                try:
                    recording, start, end = fields[0], float(fields[1]), float(fields[2])
                    if start < 0 or (end != -1 and end <= start):
                        raise ValueError
                except (IndexError, ValueError):
                    source.skipped.append(Skip(seg_origin, "bad_segment", "expected UTT RECORDING START END "
                                                                          "(seconds, END > START or -1)"))
                    continue
                if recording not in wavs:
                    source.skipped.append(Skip(seg_origin, "no_audio", f"recording {recording} is not in wav.scp"))
                    continue
                audio = _kaldi_audio(wavs[recording][0], wavs[recording][1], folder)
                if isinstance(audio, AudioRef):
                    audio = AudioRef(path=audio.path, start=start, end=None if end == -1 else end)
            elif utt in wavs:
                audio = _kaldi_audio(wavs[utt][0], wavs[utt][1], folder)
            else:
                source.skipped.append(Skip(origin, "no_audio", f"utterance {utt} is not in {folder / 'wav.scp'}"))
                continue
            if isinstance(audio, Skip):
                source.skipped.append(Skip(origin, audio.kind, f"{audio.origin}: {audio.reason}"))
                continue
            source.items.append(Item(split, utt, clean_text(text), speaker, origin, audio))
        for utt, (_, origin) in wavs.items():
            if not segments and utt not in texts:
                source.skipped.append(Skip(origin, "no_transcript", f"utterance {utt} has no line in {folder / 'text'}"))
    return source


# --- the official fine-tuner's rows --------------------------------------------------------------------------------


def audio_ref(value, base: Path) -> AudioRef | str:
    """An `audio` value as the fine-tuner or a dataset row holds it: a path, {"array", "sampling_rate"}, or
    {"bytes", "path"}; else the reason it is no audio."""
    if isinstance(value, str) and value.strip():
        return AudioRef(path=_resolve(value.strip(), base))
    if isinstance(value, dict):
        if value.get("array") is not None:
            return AudioRef(array=value["array"], sampling_rate=value.get("sampling_rate"))
        if isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
            return AudioRef(data=bytes(value["bytes"]))
        if isinstance(value.get("path"), str) and value["path"].strip():
            return AudioRef(path=_resolve(value["path"].strip(), base))
    return f"no audio (expected a path, {{array, sampling_rate}} or {{bytes, path}}; got {type(value).__name__})"


def _row_item(row, base: Path, split: str, origin: str, columns: Columns, number: int) -> Item | Skip:
    if not isinstance(row, dict):
        return Skip(origin, "bad_line", "row is not an object with audio and text")
    text_key = columns.text or next((k for k in ("text", "transcript", "transcription", "sentence") if row.get(k)), None)
    audio_key = columns.audio or next((k for k in ("audio", "path", "wav", "audio_filepath", "audio_path")
                                       if row.get(k) is not None), None)
    speaker_key = columns.speaker or next((k for k in ("speaker", "group", "speaker_id") if row.get(k) is not None), None)
    if audio_key is None and (row.get("shard") is not None or row.get("row") is not None):
        return Skip(origin, "unsupported", "row points into a parquet shard (shard/row); import that dataset instead")
    text = clean_text(row.get(text_key)) if text_key else ""
    if not text:
        return Skip(origin, "empty_text", "empty or missing transcript (text, transcript or transcription)")
    audio = audio_ref(row.get(audio_key), base) if audio_key else "no audio field (audio, path or wav)"
    if isinstance(audio, str):
        return Skip(origin, "no_audio", audio)
    uid = row.get("id") or row.get("utterance_id")
    key = str(uid) if uid else (audio.path.stem if audio.path is not None else f"{number:06d}")
    speaker = row.get(speaker_key) if speaker_key else None
    return Item(split, key, text, None if speaker is None else str(speaker), origin, audio)


def _row_files(folder: Path) -> list[Path]:
    """The manifests at the top of a folder (train.jsonl, val.json, ...): one split each."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ROW_SUFFIXES
                  and not p.name.startswith("."))


def read_row_files(path: Path, columns: Columns) -> Source:
    """One manifest file, or every manifest at the top of a folder (one split per file)."""
    if path.is_file():
        return read_rows(path, columns)
    source = Source(str(path), "rows")
    for file in _row_files(path):
        try:
            found = read_rows(file, columns)
        except InputError as error:  # a settings or report file beside the manifests
            source.skipped.append(Skip(str(file), "unsupported", f"not a manifest ({error})"))
            continue
        source.items += found.items
        source.skipped += found.skipped
    return source


def read_rows(path: Path, columns: Columns) -> Source:
    """The fine-tuner's manifests: JSONL (or NDJSON) rows, a JSON list or {"utterances": [...]}, or
    `path<TAB>text` lines (TSV; CSV splits at the first comma); paths relative to the file's folder."""
    source = Source(str(path), "rows")
    split, base = safe_name(path.stem), path.parent
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        for number, line in enumerate(_lines(path), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t" if "\t" in line else ",", 1)
            origin = f"{path}:{number}"
            if len(fields) != 2:
                source.skipped.append(Skip(origin, "bad_line", "expected path<TAB>text"))
                continue
            _add(source, _row_item({"audio": fields[0].strip(), "text": fields[1].strip()}, base, split, origin,
                                   Columns(), number))
        return source
    if suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                source.skipped.append(Skip(origin, "bad_line", f"invalid JSON ({error.msg})"))
                continue
            _add(source, _row_item(row, base, split, origin, columns, number))
        return source
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); expected a list of rows, "
                         '{"utterances": [...]} or JSONL') from None
    rows = document.get("utterances") if isinstance(document, dict) else document
    if not isinstance(rows, list):
        raise InputError(f'{path}: expected a JSON list of rows or {{"utterances": [...]}}')
    for number, row in enumerate(rows, start=1):
        _add(source, _row_item(row, base, split, f"{path}[{number}]", columns, number))
    return source


def _add(source: Source, result: Item | Skip) -> None:
    (source.items if isinstance(result, Item) else source.skipped).append(result)


# --- folders of audio ----------------------------------------------------------------------------------------------


def read_text_folder(root: Path, columns: Columns) -> Source:
    """Audio files with a same-name `.txt` transcript beside each (any depth)."""
    source = Source(str(root), "textfolder")
    split = safe_name(root.name)
    for audio in _audio_files(root):
        transcript = audio.with_suffix(".txt")
        if not transcript.is_file():
            source.skipped.append(Skip(str(audio), "no_transcript", f"no {transcript.name} beside it"))
            continue
        key = "-".join(audio.relative_to(root).with_suffix("").parts)
        text = clean_text(" ".join(_lines(transcript)))
        source.items.append(Item(split, key, text, None, str(transcript), AudioRef(path=audio)))
    return source


def read_audio_folder(root: Path, columns: Columns) -> Source:
    """Hugging Face's audiofolder: `metadata.csv` (or `.jsonl`) with `file_name` and a transcript column, at the
    top (split = the folder's name) or in one folder per split."""
    source = Source(str(root), "audiofolder")
    for meta in _metadata_files(root):
        split = safe_name(meta.parent.name)
        if meta.suffix == ".csv":
            with open(meta, encoding="utf-8-sig", errors="replace", newline="") as handle:
                reader = csv.DictReader(handle)
                header = reader.fieldnames or []
                rows = [(number, row) for number, row in enumerate(reader, start=2)]
        else:
            rows, header = [], []
            for number, line in enumerate(_lines(meta), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        source.skipped.append(Skip(f"{meta}:{number}", "bad_line", f"invalid JSON ({error.msg})"))
                        continue
                    if isinstance(row, dict):
                        header += [key for key in row if key not in header]
                    rows.append((number, row))
        audio_col = pick(header, columns.audio, ("file_name", *AUDIO_COLUMNS), "file_name", f"{meta}:1", "--audio-column")
        text_col = pick(header, columns.text, TEXT_COLUMNS, "transcript", f"{meta}:1", "--text-column")
        speaker_col = pick(header, columns.speaker, SPEAKER_COLUMNS, "speaker", f"{meta}:1", "--speaker-column",
                           required=False)
        for number, row in rows:
            origin = f"{meta}:{number}"
            if not isinstance(row, dict) or not isinstance(row.get(audio_col), str) or not row[audio_col].strip():
                source.skipped.append(Skip(origin, "no_audio", f"no file name in column {audio_col!r}"))
                continue
            name = row[audio_col].strip()
            speaker = row.get(speaker_col) if speaker_col else None
            source.items.append(Item(split, Path(name).with_suffix("").as_posix().replace("/", "-"),
                                     clean_text(row.get(text_col)), None if speaker in (None, "") else str(speaker),
                                     origin, AudioRef(path=_resolve(name, meta.parent))))
    return source
