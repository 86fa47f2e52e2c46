"""The import: items read from a source become 16 kHz mono WAV clips, one manifest per split and a report.

Deterministic: the same input and settings give byte-identical manifests (rows in source order,
clips named after the items' ids, `--limit` a seeded sample). Resumable and idempotent: every clip
is written atomically under its final name, `import_config.json` (written before the first clip)
records the settings and a hash of the source's index, and a rerun with the same ones reuses the
clips already there and writes the same manifests; other settings need `--overwrite`, which
removes only what an earlier import wrote (the output policy).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from moonlora.configs import SAMPLE_RATE, ScoringConfig
from moonlora.data.audio import AudioError
from moonlora.data.importers import layouts
from moonlora.data.importers.items import (TEXT_MODES, Item, MissingAudio, Skip, apply_text_mode, choose_text_mode,
                                          decode, linkable, safe_name)
from moonlora.data.importers.layouts import FORMATS, Columns, Source
from moonlora.errors import ConfigError, InputError
from moonlora.outputs import (OutputError, OutputExists, check_output_dir, claim_output_dir, output_error, read_marker,
                              signed_by, write_bytes_atomic, write_json)
from moonlora.progress import progress_bar

OUTPUT_KIND = "import"
CLIPS = "clips"
CONFIG_NAME = "import_config.json"
REPORT_NAME = "import_report.json"
FIXED_ENTRIES = (CLIPS, CONFIG_NAME, REPORT_NAME)
MODES = ("copy", "link")
MANIFEST_DIGITS = 4  # durations in the manifest: 0.1 ms


@dataclass(frozen=True)
class ImportConfig:
    """Settings of one `moonlora import`."""

    source: str  # a folder, a file, or a Hugging Face hub id
    out_dir: str
    format: str = "auto"  # one of layouts.FORMATS; auto: detected from the files
    mode: str = "copy"  # copy: write 16 kHz WAV clips; link: point the manifest at originals already 16 kHz mono PCM
    config: str | None = None  # the hub dataset's configuration (e.g. clean)
    splits: tuple[str, ...] | None = None  # which splits to import; none: all (a hub id needs one)
    audio_column: str | None = None
    text_column: str | None = None
    speaker_column: str | None = None
    limit: int | None = None  # at most this many clips per split, a seeded random sample
    max_seconds: float | None = None  # skip clips longer than this
    seed: int = 0  # seed of the --limit sample
    text_mode: str = "auto"  # auto: lowercase a corpus that is almost all upper case; none; lower
    overwrite: bool = False
    language: str | None = None  # ISO code of the transcripts, recorded in the report (diagnose shows it)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format}: not one of {', '.join(FORMATS)}")
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode}: not one of {', '.join(MODES)}")
        if self.text_mode not in TEXT_MODES:
            raise ConfigError(f"--text-mode {self.text_mode}: not one of {', '.join(TEXT_MODES)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"--max-seconds {self.max_seconds}: must be a positive number of seconds")
        if self.language is not None:
            ScoringConfig(language=self.language)  # the one check of a language code

    @property
    def columns(self) -> Columns:
        return Columns(self.audio_column, self.text_column, self.speaker_column)

    def settings(self) -> dict:
        """What decides the output (the overwrite switch does not)."""
        values = asdict(self)
        values.pop("overwrite")
        if values["language"] is None:
            values.pop("language")  # imports from before --language record the same settings
        values["splits"] = list(self.splits) if self.splits else None
        return values


@dataclass
class SplitResult:
    manifest: str
    clips: int = 0
    seconds: float = 0.0
    speakers: int = 0
    linked: int = 0
    not_selected: int = 0  # items left out by --limit

    def to_dict(self) -> dict:
        return {"manifest": self.manifest, "clips": self.clips, "hours": round(self.seconds / 3600, 4),
                "seconds": round(self.seconds, 3), "speakers": self.speakers, "linked": self.linked,
                "not_selected": self.not_selected}


@dataclass
class ImportResult:
    out_dir: Path
    format: str
    text_mode: str
    splits: dict[str, SplitResult]
    skipped: list[Skip] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    reused: int = 0  # clips found from an earlier (interrupted or finished) run of the same import

    @property
    def clips(self) -> int:
        return sum(split.clips for split in self.splits.values())

    @property
    def seconds(self) -> float:
        return sum(split.seconds for split in self.splits.values())

    def skipped_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for skip in self.skipped:
            counts[skip.kind] = counts.get(skip.kind, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self, config: ImportConfig) -> dict:
        return {"source": config.source, "format": self.format, "text_mode": self.text_mode, "mode": config.mode,
                "language": config.language,
                "sample_rate": SAMPLE_RATE, "clips": self.clips, "hours": round(self.seconds / 3600, 4),
                "splits": {name: split.to_dict() for name, split in self.splits.items()},
                "reused_clips": self.reused, "skipped_by_kind": self.skipped_by_kind(),
                "skipped": [skip.to_dict() for skip in self.skipped], "duplicates": self.duplicates,
                "settings": config.settings()}


# --- reading the source --------------------------------------------------------------------------------------------


def read_source(config: ImportConfig) -> Source:
    """The source's items (no audio read yet), by its detected or given layout."""
    kind = layouts.detect(config.source) if config.format == "auto" else config.format
    if config.config is not None and kind != "hub":
        raise ConfigError(f"--config {config.config}: names a hub dataset's configuration; {config.source} is a "
                          f"local {kind} source")
    if kind == "hub":
        from moonlora.data.importers import hf

        return hf.read_hub(config.source, config.config, config.splits, config.columns)
    path = Path(config.source).expanduser()
    if not path.exists():
        raise InputError(f"{config.source}: not found")
    if kind in ("hf-disk", "parquet", "arrow"):
        from moonlora.data.importers import hf

        if kind == "hf-disk":
            return hf.read_disk(path, config.columns, config.splits)
        return hf.read_files(path, kind, config.columns, config.splits)
    folder_only = {"librispeech": layouts.read_librispeech, "mls": layouts.read_mls, "kaldi": layouts.read_kaldi,
                   "textfolder": layouts.read_text_folder, "audiofolder": layouts.read_audio_folder}
    if kind in folder_only:
        if not path.is_dir():
            raise InputError(f"{path}: --format {kind} reads a folder")
        source = folder_only[kind](path, config.columns)
    elif kind == "commonvoice":
        source = layouts.read_common_voice(path, config.columns, config.splits)
    else:  # rows: one manifest, or a folder of them
        source = layouts.read_row_files(path, config.columns)
    if config.splits and kind != "commonvoice":
        found = sorted({item.split for item in source.items})
        unknown = [split for split in config.splits if split not in found]
        if unknown:
            raise InputError(f"{path}: no split {unknown[0]!r} (--split); it has {', '.join(found) or 'none'}")
        source.items = [item for item in source.items if item.split in config.splits]
    return source


def _unique_keys(items: list[Item]) -> list[Item]:
    """Clip names unique per split (ignoring case): safe names, a repeat numbered (`name-2`, `name-3`, ...)."""
    used: set[tuple[str, str]] = set()
    unique = []
    for item in items:
        key = candidate = safe_name(item.key)
        number = 1
        while (item.split, candidate.lower()) in used:
            number += 1
            candidate = f"{key}-{number}"
        used.add((item.split, candidate.lower()))
        unique.append(replace(item, key=candidate))
    return unique


def index_sha256(items: list[Item]) -> str:
    """Hash of what was read from the index files: split, clip name, text, speaker, origin, in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update("\0".join((item.split, item.key, item.text, item.speaker or "", item.origin)).encode() + b"\n")
    return digest.hexdigest()


# --- the output folder ---------------------------------------------------------------------------------------------


def manifest_name(split: str) -> str:
    return f"{split}.jsonl"


def _known_entries(out_dir: Path, entries: tuple[str, ...]) -> tuple[str, ...]:
    """This import's entries plus an earlier import's manifests (split names differ between sources)."""
    marker = read_marker(out_dir) if out_dir.is_dir() else None
    earlier = [name for name in (marker or {}).get("entries", [])
               if isinstance(name, str) and name.endswith(".jsonl") and safe_name(name) == name]
    return tuple(dict.fromkeys([*entries, *earlier]))


def _same_import(out_dir: Path, recorded: dict) -> bool | None:
    """True: an earlier run of this very import (resume); False: another import; None: not an import folder."""
    marker = read_marker(out_dir) if out_dir.is_dir() else None
    if marker is None or marker.get("kind") != OUTPUT_KIND:
        return None
    if signed_by(out_dir / CONFIG_NAME) != OUTPUT_KIND:
        return None  # no record of the settings: only --overwrite may reuse the folder
    try:
        earlier = json.loads((out_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict):
        return None
    earlier.pop("written_by", None)
    return earlier == recorded


def _refuse_inside_source(config: ImportConfig, out_dir: Path) -> None:
    source = Path(config.source).expanduser()
    if not source.exists():
        return
    folder = (source if source.is_dir() else source.parent).resolve()
    if out_dir.resolve() == folder or (source.is_dir() and out_dir.resolve().is_relative_to(folder)):
        raise InputError(f"--out {out_dir}: inside the source {source}; pick a folder outside it so the originals "
                         "are never touched and a rerun reads the same source")


def check_output(config: ImportConfig) -> Path:
    """Before the source is read (a hub split is streamed): refuse --out inside the source, a file, an uncreatable
    path, or a folder moonlora did not write. An earlier import's folder is judged once its settings are known."""
    out_dir = Path(config.out_dir).expanduser()
    _refuse_inside_source(config, out_dir)
    marker = read_marker(out_dir) if out_dir.is_dir() else None
    if marker is None or marker.get("kind") != OUTPUT_KIND or config.overwrite:
        check_output_dir(out_dir, "--out", OUTPUT_KIND, FIXED_ENTRIES, config.overwrite, require_empty=True,
                         known=_known_entries(out_dir, FIXED_ENTRIES))
    return out_dir


def prepare_output(config: ImportConfig, splits: list[str], recorded: dict) -> tuple[Path, bool]:
    """Claim `--out` (refused unless empty, or moonlora's import folder with --overwrite); a folder holding an
    earlier run of the same import is resumed. Returns the folder and whether it resumes."""
    out_dir = Path(config.out_dir).expanduser()
    entries = (*FIXED_ENTRIES, *[manifest_name(split) for split in splits])
    if _same_import(out_dir, recorded) and not config.overwrite:
        links = [name for name in entries if (out_dir / name).is_symlink()]
        if links:
            raise OutputError(f"--out {out_dir}: {links[0]} is a link, which moonlora never writes; pick another --out")
        return out_dir, True
    try:
        claim_output_dir(out_dir, "--out", OUTPUT_KIND, entries, config.overwrite, require_empty=True,
                         known=_known_entries(out_dir, entries))
    except OutputExists as error:
        if _same_import(out_dir, recorded) is False and not config.overwrite:
            raise OutputExists(f"--out {out_dir}: holds an import of another source or other settings; pass "
                               "--overwrite to replace it or pick another --out") from None
        raise
    return out_dir, False


# --- one clip ------------------------------------------------------------------------------------------------------


def write_clip(path: Path, samples: np.ndarray) -> None:
    """16-bit PCM WAV, written under a temporary name and renamed: a clip is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        sf.write(str(temporary), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise output_error(path, error, 2 * samples.size + 44) from None
    except (sf.LibsndfileError, RuntimeError) as error:  # libsndfile's own word for a full disk or a lost folder
        raise OutputError(f"{path}: cannot write the clip ({error}); check the free space and rerun to continue") from None
    finally:
        temporary.unlink(missing_ok=True)


def _remove_partials(clips_dir: Path) -> None:
    """Temporary files an interrupted run left behind (ours: clips/ is the import's own folder)."""
    if clips_dir.is_dir():
        for partial in clips_dir.rglob(".*.tmp"):
            partial.unlink(missing_ok=True)


@dataclass
class _Run:
    config: ImportConfig
    out_dir: Path
    result: ImportResult
    hashes: dict[str, str] = field(default_factory=dict)  # sha256 of the 16 kHz samples -> origin of the first clip

    def clip(self, item: Item) -> dict | None:
        """The manifest row of one item, or None (the skip is recorded)."""
        if not item.text:
            return self.skip(Skip(item.origin, "empty_text", "empty transcript"))
        target = self.out_dir / CLIPS / item.split / f"{item.key}.wav"
        link = self.config.mode == "link" and linkable(item.audio.resolved())
        try:
            if target.is_file() and not link:
                samples, _ = sf.read(str(target), dtype="int16")
                self.result.reused += 1
                written = True
            else:
                samples = decode(item.audio, item.origin)
                written = False
        except AudioError as error:
            kind = "missing_audio" if isinstance(error, MissingAudio) else "unreadable_audio"
            return self.skip(Skip(item.origin, kind, str(error).removeprefix(f"{item.origin}: ")))
        seconds = samples.size / SAMPLE_RATE
        if samples.size == 0 or not np.any(samples):
            return self.skip(Skip(item.origin, "empty_audio", "no samples" if samples.size == 0 else "digital silence"))
        if self.config.max_seconds is not None and seconds > self.config.max_seconds:
            return self.skip(Skip(item.origin, "too_long",
                                  f"{seconds:.2f} s, over --max-seconds {self.config.max_seconds:g}"))
        digest = hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()
        if digest in self.hashes:
            self.result.duplicates.append({"origin": item.origin, "same_audio_as": self.hashes[digest]})
            return self.skip(Skip(item.origin, "duplicate_audio", f"the same audio as {self.hashes[digest]}"))
        self.hashes[digest] = item.origin
        if link:
            path = str(item.audio.resolved().path.resolve())
        else:
            if not written:
                write_clip(target, samples)
            path = f"{CLIPS}/{item.split}/{item.key}.wav"
        row = {"audio_filepath": path, "duration": round(seconds, MANIFEST_DIGITS), "text": item.text}
        if item.speaker is not None:
            row["speaker"] = item.speaker
        row["id"] = item.key
        return row

    def skip(self, skip: Skip) -> None:
        self.result.skipped.append(skip)
        return None


def _order(count: int, config: ImportConfig, split: str) -> list[int]:
    """Items in source order, or with --limit a seeded shuffle (taken until the limit is met)."""
    order = list(range(count))
    if config.limit is not None and config.limit < count:
        random.Random(f"{config.seed}/{split}").shuffle(order)
    return order


def run_import(config: ImportConfig, progress: bool = True) -> ImportResult:
    """Import `config.source` into `config.out_dir`: clips/SPLIT/*.wav, SPLIT.jsonl per split, the report."""
    check_output(config)
    source = read_source(config)
    texts = [item.text for item in source.items]
    text_mode = choose_text_mode(texts, config.text_mode)
    items = _unique_keys([replace(item, text=apply_text_mode(item.text, text_mode)) for item in source.items])
    splits: dict[str, list[Item]] = {}
    for item in items:
        splits.setdefault(item.split, []).append(item)
    if not splits:
        detail = f"; first problem: {source.skipped[0]}" if source.skipped else ""
        raise InputError(f"{config.source}: no clips found to import ({len(source.skipped)} lines skipped){detail}")
    recorded = {**config.settings(), "source_format": source.format, "text_mode_chosen": text_mode,
                "index_sha256": index_sha256(items)}
    out_dir, resumed = prepare_output(config, sorted(splits), recorded)
    if not resumed:
        write_json(out_dir / CONFIG_NAME, recorded, command=OUTPUT_KIND)
    _remove_partials(out_dir / CLIPS)
    result = ImportResult(out_dir, source.format, text_mode, {}, skipped=list(source.skipped))
    run = _Run(config, out_dir, result)
    bar = progress_bar(len(items) if config.limit is None else sum(min(len(v), config.limit) for v in splits.values()),
                       "import", unit="clip", enabled=progress)
    for split in sorted(splits):
        rows: list[tuple[int, dict]] = []
        order = _order(len(splits[split]), config, split)
        taken = 0
        for index in order:
            if config.limit is not None and len(rows) >= config.limit:
                break
            taken += 1
            row = run.clip(splits[split][index])
            if row is not None:
                rows.append((index, row))
            bar.update(1)
        manifest_rows = [row for _, row in sorted(rows, key=lambda pair: pair[0])]
        write_bytes_atomic(out_dir / manifest_name(split),
                           "".join(_json_line(row) for row in manifest_rows).encode("utf-8"))
        result.splits[split] = SplitResult(
            manifest=manifest_name(split), clips=len(manifest_rows),
            seconds=sum(row["duration"] for row in manifest_rows),
            speakers=len({row["speaker"] for row in manifest_rows if "speaker" in row}),
            linked=sum(1 for row in manifest_rows if not row["audio_filepath"].startswith(f"{CLIPS}/")),
            not_selected=len(order) - taken)
    bar.close()
    write_json(out_dir / REPORT_NAME, result.to_dict(config), command=OUTPUT_KIND)
    if not result.clips:
        first = f"; first problem: {result.skipped[0]}" if result.skipped else ""
        raise InputError(f"{config.source}: no clip could be imported ({len(result.skipped)} skipped, every reason "
                         f"in {out_dir / REPORT_NAME}){first}")
    return result


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def render(result: ImportResult, shown: int = 10) -> str:
    """The report as printed: per split clips, hours, speakers; skips by reason with the first ones; duplicates."""
    lines = [f"imported {result.format} into {result.out_dir} (text mode {result.text_mode}): {result.clips} clips, "
             f"{result.seconds / 3600:.3f} h" + (f"; {result.reused} clips reused from an earlier run" if result.reused
                                                 else "")]
    lines += ["", "| split | manifest | clips | hours | speakers | linked | left out by --limit |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, split in result.splits.items():
        lines.append(f"| {name} | {result.out_dir / split.manifest} | {split.clips} | {split.seconds / 3600:.3f} | "
                     f"{split.speakers} | {split.linked} | {split.not_selected} |")
    if result.skipped:
        counts = ", ".join(f"{kind} {count}" for kind, count in result.skipped_by_kind().items())
        lines += ["", f"skipped {len(result.skipped)} ({counts}):"]
        lines += [f"  {skip}" for skip in result.skipped[:shown]]
        if len(result.skipped) > shown:
            lines.append(f"  ... {len(result.skipped) - shown} more in {result.out_dir / REPORT_NAME}")
    if result.duplicates:
        lines += ["", f"duplicates by audio hash: {len(result.duplicates)} (the first copy kept, listed above)"]
    lines += ["", f"report: {result.out_dir / REPORT_NAME}"]
    return "\n".join(lines)
