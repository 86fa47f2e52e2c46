"""The Runs view: every run folder and sweep under the root, its state, progress, verdicts and plots.

Run folders are read only through `moonlora.runfolder` (the record, its state, its checkpoints),
verdicts come from `moonlora.verdict.decide`, plots from the HTML report's own figure code.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

from moonlora.errors import MoonloraError, one_line
from moonlora.runfolder import (FINISHED, METRICS_FILE, SUMMARY_FILE, TRANSCRIPTS_FILE, FoundRun, RunRecord, read_record,
                                run_state)
from moonlora.studio.guard import relative_to_root, under_root
from moonlora.sweep import SWEEP_FILE
from moonlora.verdict.tables import format_wer, manifest_cells, run_metric, status_text

MAX_DEPTH = 5
MAX_KEPT_ROWS = 5000  # folders below the root searched for runs
SKIPPED_FOLDERS = {"checkpoints", "tensorboard", "clips", "adapter", "adapter-best", "adapter-last", "export",
                   "baseline", "tuned", "tuned-best", "tuned-last", "node_modules", "__pycache__"}


def view_state(status: str) -> str:
    """The four states the view tells apart (plus failed): running, died, interrupted, finished."""
    return "finished" if status in FINISHED else status


def walk_folders(root: Path, depth: int = MAX_DEPTH):
    """Folders under the root (links not followed, hidden and run-internal folders skipped), top first."""
    base = Path(os.path.realpath(root))
    stack = [(base, 0)]
    while stack:
        folder, level = stack.pop()
        yield folder
        if level >= depth:
            continue
        try:
            children = sorted((p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True)
        except OSError:
            continue
        stack += [(child, level + 1) for child in children
                  if not child.name.startswith(".") and child.name not in SKIPPED_FOLDERS]


def find_runs(root: Path) -> list[Path]:
    return [folder for folder in walk_folders(root) if (folder / METRICS_FILE).is_file()]


def find_scored(root: Path) -> list[Path]:
    """Transcribe folders (transcripts.jsonl beside summary.json) outside run folders."""
    return [folder for folder in walk_folders(root)
            if (folder / TRANSCRIPTS_FILE).is_file() and (folder / SUMMARY_FILE).is_file()]


def sweep_of(root: Path, run_dir: Path) -> str | None:
    """The sweep a run belongs to (the nearest folder above it holding sweep.json), relative to the root."""
    for parent in run_dir.parents:
        if (parent / SWEEP_FILE).is_file():
            return relative_to_root(root, parent)
        if os.path.realpath(parent) == os.path.realpath(root):
            return None
    return None


def progress_of(record: RunRecord) -> dict:
    steps = record.training.steps if record.training is not None else 0
    return {"phase": record.phase, "steps": steps, "max_steps": record.config.train.max_steps}


def run_row(root: Path, run_dir: Path, record: RunRecord) -> dict:
    """One run's row; kept while its record and state are unchanged (a died run's checkpoint is checked once)."""
    status = run_state(record, run_dir)
    key = (str(run_dir), _mtime(run_dir / METRICS_FILE), status)
    with ROW_LOCK:
        if key in ROWS:
            return ROWS[key]
    main_base, main_tuned = record.baseline.get("main"), record.tuned.get("main")
    row = {
        "path": relative_to_root(root, run_dir), "run_id": record.run_id, "sweep": sweep_of(root, run_dir),
        "status": status, "state": view_state(status), "status_text": status_text(FoundRun(run_dir.name, run_dir, record)),
        "started_at": record.started_at, "updated_at": record.updated_at, "metric": run_metric(record),
        "baseline": format_wer(main_base.primary if main_base else None),
        "tuned": format_wer(main_tuned.primary if main_tuned else None),
        "progress": progress_of(record), "verdict": verdict_of(run_dir, record)["overall"],
    }
    with ROW_LOCK:
        if len(ROWS) > MAX_KEPT_ROWS:  # a long-running studio sees many record updates
            ROWS.clear()
        ROWS[key] = row
    return row


ROWS: dict = {}
ROW_LOCK = threading.Lock()


class VerdictCache:
    """decide() per finished run, kept while its record file is unchanged."""

    def __init__(self):
        self.lock, self.known = threading.Lock(), {}

    def get(self, run_dir: Path, record: RunRecord) -> dict:
        if record.status not in FINISHED:
            return {"overall": None, "verdicts": []}
        key = (str(run_dir), _mtime(run_dir / METRICS_FILE))
        with self.lock:
            if key in self.known:
                return self.known[key]
        from moonlora.verdict.decide import decide

        try:
            decision = decide([run_dir])
            found = {"overall": "PASS" if decision.passed else "FAIL",
                     "verdicts": [asdict(v) for v in decision.verdicts]}
        except MoonloraError as error:
            found = {"overall": "not assessed", "verdicts": [{"criterion": "run", "outcome": "not assessed",
                                                              "detail": one_line(error)}]}
        with self.lock:
            self.known[key] = found
        return found


VERDICTS = VerdictCache()


def verdict_of(run_dir: Path, record: RunRecord) -> dict:
    return VERDICTS.get(run_dir, record)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def list_runs(root: Path) -> dict:
    """Every readable run (newest first) and every unreadable run folder with its reason."""
    runs, unreadable = [], []
    for run_dir in find_runs(root):
        try:
            record = read_record(run_dir)
        except MoonloraError as error:
            unreadable.append({"path": relative_to_root(root, run_dir), "reason": one_line(error)})
            continue
        runs.append(run_row(root, run_dir, record))
    runs.sort(key=lambda r: (r["started_at"], r["path"]), reverse=True)
    scored = [relative_to_root(root, folder) for folder in find_scored(root)]
    return {"runs": runs, "unreadable": unreadable, "scored": scored, "sweeps": list_sweeps(root)}


def list_sweeps(root: Path) -> list[dict]:
    """Every sweep under the root (its sweep.json, read by `sweep.read_sweep`): runs by status and the verdict of
    each group of runs that differ only by seed."""
    from moonlora.sweep import SweepError, read_sweep

    sweeps = []
    for folder in walk_folders(root):
        if not (folder / SWEEP_FILE).is_file():
            continue
        try:
            state = read_sweep(folder)
        except SweepError as error:
            sweeps.append({"path": relative_to_root(root, folder), "error": one_line(error)})
            continue
        statuses: dict[str, int] = {}
        for run in state.runs:
            statuses[run.status] = statuses.get(run.status, 0) + 1
        sweeps.append({"path": relative_to_root(root, folder), "runs": len(state.runs), "statuses": statuses,
                       "groups": [{"group": g.get("group"), "passed": g.get("passed"),
                                   "verdicts": g.get("verdicts", [])} for g in state.groups]})
    return sweeps


class PlotCache:
    """The report's three plots of a run as inline SVG, kept while the record is unchanged (matplotlib is slow)."""

    def __init__(self):
        self.lock, self.drawing, self.known = threading.Lock(), threading.Lock(), {}

    def get(self, run: FoundRun) -> str:
        key = (str(run.path), _mtime(run.path / METRICS_FILE))
        with self.lock:
            if key in self.known:
                return self.known[key]
        from moonlora.verdict.html import plots_block

        with self.drawing:  # matplotlib's rc_context changes global settings: one figure at a time
            block = plots_block(run)
        with self.lock:
            self.known[key] = block
        return block


PLOTS = PlotCache()


def run_detail(root: Path, relative: str, log_tail: str | None = None) -> dict:
    """One run: its row, notes, legs, manifests table, verdicts, plots (SVG markup) and its log's end."""
    run_dir = under_root(root, relative)
    record = read_record(run_dir)
    run = FoundRun(run_dir.name, run_dir, record)
    legs = [{"command": leg.command, "started_at": leg.started_at, "status": leg.status,
             "resumed_from_step": leg.resumed_from_step} for leg in record.legs]
    training = record.training
    return {**run_row(root, run_dir, record), "notes": list(record.notes), "reason": record.reason, "legs": legs,
            "manifests": manifest_cells(record), "verdicts": verdict_of(run_dir, record)["verdicts"],
            "plots": PLOTS.get(run), "log": log_tail,
            "losses": [] if training is None else training.losses[-200:],
            "sets": sorted({*record.baseline, *record.tuned}),
            "config": json.loads(json.dumps(record.config.to_dict(), default=str))}
