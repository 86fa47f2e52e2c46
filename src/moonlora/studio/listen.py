"""The Listen view: one row per clip of a run (baseline and tuned) or a transcribe folder, with word diffs.

Rows come from the scored folders' `transcripts.jsonl` (read by `runfolder.read_transcripts`, the one
reader), joined by clip id, and are kept in memory while the files are unchanged, so sorting,
filtering and paging a 1,000-clip run costs no file reads. Two runs side by side are what
`moonlora compare` computes (`eval.compare.compare_folders`), clip by clip.
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass
from pathlib import Path

from moonlora.errors import InputError
from moonlora.runfolder import (BASELINE_DIR, METRICS_FILE, SUMMARY_FILE, TRANSCRIPTS_FILE, TUNED_DIR,
                                read_transcripts)
from moonlora.studio.guard import relative_to_root, under_root

SORTS = ("worst", "changed", "improved", "worsened", "duration", "speaker", "order")
PAGE = 50
MAX_PAGE = 500


class ListenError(InputError):
    """A folder with nothing to listen to (no scored transcripts)."""


def word_diff(ref: list[str], hyp: list[str]) -> list[list[str]]:
    """[tag, words] spans of the hypothesis against the reference: eq, sub (hyp's words), del (ref's), ins."""
    spans = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if tag == "equal":
            spans.append(["eq", " ".join(hyp[j1:j2])])
        elif tag == "delete":
            spans.append(["del", " ".join(ref[i1:i2])])
        elif tag == "insert":
            spans.append(["ins", " ".join(hyp[j1:j2])])
        else:
            spans += [["del", " ".join(ref[i1:i2])], ["sub", " ".join(hyp[j1:j2])]]
    return spans


def _words(row: dict, key: str) -> list[str]:
    text = row.get(f"{key}_norm")
    return str(text if text is not None else row.get(key, "")).split()


def _errors(row: dict) -> int:
    return sum(int(row.get(k) or 0) for k in ("substitutions", "deletions", "insertions"))


def side(row: dict | None) -> dict | None:
    if row is None:
        return None
    ref = _words(row, "ref")
    return {"hyp": row.get("hyp", ""), "wer": float(row.get("wer") or 0.0), "errors": _errors(row),
            "flags": list(row.get("flags") or []), "diff": word_diff(ref, _words(row, "hyp"))}


def scored_sides(folder: Path, name: str) -> tuple[Path | None, Path | None]:
    """(baseline, tuned) scored folders of a run's manifest `name`, or (the folder, None) for a transcribe folder."""
    if (folder / METRICS_FILE).is_file():
        base, tuned = folder / BASELINE_DIR / name, folder / TUNED_DIR / name
        return (base if (base / TRANSCRIPTS_FILE).is_file() else None,
                tuned if (tuned / TRANSCRIPTS_FILE).is_file() else None)
    if (folder / TRANSCRIPTS_FILE).is_file():
        return folder, None
    raise ListenError(f"{folder}: neither a run folder nor a transcribe folder; pick one from the list")


@dataclass(frozen=True)
class ClipRows:
    rows: list[dict]
    speakers: list[str]
    flags: list[str]
    tuned: bool


def build_rows(root: Path, base: Path | None, tuned: Path | None) -> ClipRows:
    before = read_transcripts(base / TRANSCRIPTS_FILE) if base else []
    after = {str(r.get("utt_id")): r for r in read_transcripts(tuned / TRANSCRIPTS_FILE)} if tuned else {}
    order = before or list(after.values())
    rows = []
    for index, row in enumerate(order):
        clip_id = str(row.get("utt_id"))
        left, right = (row, after.get(clip_id)) if before else (None, row)
        audio = relative_to_root(root, row.get("audio_filepath", "")) if row.get("audio_filepath") else None
        a, b = side(left), side(right)
        changed = 0.0 if a is None or b is None else 1.0 - difflib.SequenceMatcher(
            None, a["hyp"].split(), b["hyp"].split(), autojunk=False).ratio()
        rows.append({"index": index, "id": clip_id, "audio": audio, "duration": float(row.get("duration") or 0.0),
                     "speaker": row.get("speaker"), "ref": row.get("ref", ""), "baseline": a, "tuned": b,
                     "delta": None if a is None or b is None else b["wer"] - a["wer"], "changed": changed})
    speakers = sorted({str(r["speaker"]) for r in rows if r["speaker"] is not None})
    flags = sorted({f for r in rows for s in (r["baseline"], r["tuned"]) if s for f in s["flags"]})
    return ClipRows(rows, speakers, flags, bool(before) and bool(after))


class RowCache:
    """Built rows per (folder, set), kept while both transcripts files are unchanged."""

    def __init__(self):
        self.lock, self.known = threading.Lock(), {}

    def get(self, root: Path, base: Path | None, tuned: Path | None) -> ClipRows:
        key = tuple((str(p), (p / TRANSCRIPTS_FILE).stat().st_mtime_ns) if p else None for p in (base, tuned))
        with self.lock:
            if key in self.known:
                return self.known[key]
        rows = build_rows(root, base, tuned)
        with self.lock:
            self.known[key] = rows
        return rows


ROWS = RowCache()


def _worst(row: dict) -> float:
    shown = row["tuned"] or row["baseline"]
    return -shown["wer"]


SORT_KEYS = {
    "worst": _worst,
    "changed": lambda r: (-abs(r["delta"] or 0.0), -r["changed"]),
    "improved": lambda r: r["delta"] if r["delta"] is not None else 0.0,
    "worsened": lambda r: -(r["delta"] or 0.0),
    "duration": lambda r: -r["duration"],
    "speaker": lambda r: str(r["speaker"] or ""),
    "order": lambda r: r["index"],
}


def keep(row: dict, flag: str | None, speaker: str | None, min_seconds: float | None, max_seconds: float | None,
         text: str | None, changed_only: bool) -> bool:
    sides = [s for s in (row["baseline"], row["tuned"]) if s]
    return ((not flag or any(flag in s["flags"] for s in sides))
            and (not speaker or str(row["speaker"]) == speaker)
            and (min_seconds is None or row["duration"] >= min_seconds)
            and (max_seconds is None or row["duration"] <= max_seconds)
            and (not text or text.lower() in " ".join([row["ref"], *(s["hyp"] for s in sides)]).lower())
            and (not changed_only or row["changed"] > 0))


def listen(root: Path, relative: str, name: str = "main", sort: str = "worst", flag: str | None = None,
           speaker: str | None = None, min_seconds: float | None = None, max_seconds: float | None = None,
           text: str | None = None, changed_only: bool = False, offset: int = 0, limit: int = PAGE) -> dict:
    """One page of a folder's clips, sorted and filtered, with totals and the filter choices."""
    if sort not in SORTS:
        raise ListenError(f"sort={sort}: one of {', '.join(SORTS)}")
    if not (0 <= offset and 1 <= limit <= MAX_PAGE):
        raise ListenError(f"offset must be >= 0 and limit 1..{MAX_PAGE}")
    folder = under_root(root, relative)
    base, tuned = scored_sides(folder, name)
    if base is None and tuned is None:
        raise ListenError(f"{folder}: no scored transcripts for {name!r} yet")
    clips = ROWS.get(root, base, tuned)
    kept = [r for r in clips.rows if keep(r, flag, speaker, min_seconds, max_seconds, text, changed_only)]
    kept.sort(key=SORT_KEYS[sort])
    return {"folder": relative, "set": name, "total": len(clips.rows), "matching": len(kept),
            "offset": offset, "rows": kept[offset:offset + limit], "speakers": clips.speakers, "flags": clips.flags,
            "sides": {"baseline": base is not None, "tuned": tuned is not None}}


def side_by_side(root: Path, first: str, second: str, name: str = "main") -> dict:
    """Two runs (their tuned scores of one manifest) or two transcribe folders: `moonlora compare`, clip by clip."""
    from moonlora.eval.compare import compare_folders

    folders = []
    for relative in (first, second):
        base, tuned = scored_sides(under_root(root, relative), name)
        chosen = tuned or base
        if chosen is None or not (chosen / SUMMARY_FILE).is_file():
            raise ListenError(f"{relative}: no scored {name!r} folder to compare")
        folders.append(chosen)
    comparison = compare_folders(folders[0], folders[1], allow=("adapter_sha256",), top=10_000)
    result = comparison.to_dict()
    for clip in result["top_differences"]:
        ref = clip["ref"].lower().split()
        clip["audio"] = relative_to_root(root, clip["audio_filepath"])
        clip["diff_a"], clip["diff_b"] = word_diff(ref, clip["hyp_a"].lower().split()), word_diff(ref, clip["hyp_b"].lower().split())
    result["a"]["path"], result["b"]["path"] = first, second
    return result
