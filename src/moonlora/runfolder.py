"""The run folder: its file names, its typed and versioned record, its lock and its checkpoints.

`moonlora experiment` writes a run folder only through this module, and `decide`, `report`,
the HTML report (and later `sweep`/`export`) read it only through it, so what one command
writes and another reads has one schema. Nothing here imports torch.

Layout of a run folder:
    experiment_config.json   the resolved ExperimentConfig
    experiment_metrics.json  the run record (RunRecord): status from the first second, updated
                             atomically at each phase, final status on any exit
    baseline/<set>/, tuned/<set>/   transcripts.jsonl + summary.json per scored manifest
    adapter/                 the chosen LoRA adapter (PEFT save_pretrained)
    export/ort/, export/scores/   with --export ort: the deployable int8 graphs and their scores
    checkpoints/step-NNNNNNNN/   resumable training state, the last two kept
    tensorboard/             one event stream across resumes
    .moonlora-output.json    moonlora's marker (see moonlora.outputs)
    .moonlora.lock           held while a process works in the folder
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from moonlora.data.manifest import file_sha256
from moonlora.outputs import write_json
from moonlora.errors import MissingInput, MoonloraError

SCHEMA_VERSION = 2
CONFIG_FILE = "experiment_config.json"
METRICS_FILE = "experiment_metrics.json"
ADAPTER_DIR = "adapter"  # the selected adapter (--select best|last)
CANDIDATES = ("best", "last")
CANDIDATE_ADAPTER_DIRS = {"best": "adapter-best", "last": "adapter-last"}  # both are always kept
CANDIDATE_SCORE_DIRS = {"best": "tuned-best", "last": "tuned-last"}  # the other candidate's main-manifest score
BASELINE_DIR = "baseline"
TUNED_DIR = "tuned"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".moonlora.lock"
RUN_KIND = "run"
# What --overwrite may remove (the lock file stays: another process may be waiting on it).
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, ADAPTER_DIR, BASELINE_DIR, TUNED_DIR, TENSORBOARD_DIR, CHECKPOINTS_DIR,
               EXPORT_DIR, *CANDIDATE_ADAPTER_DIRS.values(), *CANDIDATE_SCORE_DIRS.values())
RUN_CONTROL_FIELDS = ("resume", "overwrite")  # how to run, not what: may differ on resume
FINISHED = ("success", "stopped_early")
# Phases in order; a run that failed in one of the first two never trained.
PHASES = ("setup", "baseline", "training", "tuned", "export", "done")
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_STATE = "trainer_state.pt"
CHECKPOINT_MANIFEST = "checkpoint.json"
CHECKPOINTS_KEPT = 2


class RunRecordError(MoonloraError, ValueError):
    """A run record that cannot be read (missing, corrupt, or from another schema version)."""


class RunLocked(MoonloraError, RuntimeError):
    """Another process holds the run folder."""


class CheckpointError(MoonloraError, ValueError):
    """No usable checkpoint where one is needed."""


def is_main_process() -> bool:
    """True except on the non-zero ranks of `accelerate launch` / torchrun (they set RANK).

    Only the main process writes run files; the others train their data shard and evaluate.
    """
    return int(os.environ.get("RANK", "0")) == 0


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- the record ----------------------------------------------------------------------------------------------------


@dataclass
class EvalSummary:
    """One scored manifest (baseline or tuned); transcripts live in baseline|tuned/<name>/."""

    wer: float
    cer: float
    raw_wer: float
    clips: int
    hours: float
    flags: dict[str, int]
    wer_by_duration: list[dict]
    contract: dict
    skipped_rows: int = 0


@dataclass
class Comparison:
    """Paired bootstrap of tuned - baseline on one manifest (moonlora.eval.stats.BootstrapResult)."""

    baseline_wer: float
    tuned_wer: float
    delta: float
    ci_low: float
    ci_high: float
    p_tuned_better: float
    resamples: int
    seed: int
    clips: int
    confidence: float
    excludes_zero: bool
    relative_delta: float | None


@dataclass
class TrainingSummary:
    steps: int
    best_step: int
    best_val_wer: float | None
    stop_reason: str | None
    skipped_updates: int
    train_clips: int
    processes: int
    samples: int  # clips seen by all processes together
    epochs: float
    train_seconds: float  # training steps only: no evaluation, no checkpoint
    interval_eval_seconds: float
    checkpoint_seconds: float
    samples_per_second: float | None
    lora_delta_norm: float
    losses: list[dict]  # {"step", "loss" (null when non-finite), "lr", "skipped"}
    intervals: list[dict]  # {"step", "val_wer", ...evaluator details}


@dataclass
class Candidate:
    """One of the two adapters every run keeps and scores on the main manifest (the plan's H2:
    the best-val adapter hides an overfitting trend that the last one shows)."""

    step: int
    val_wer: float | None
    adapter_dir: str  # relative to the run folder
    main: EvalSummary
    comparison: Comparison  # against the baseline, paired bootstrap
    selected: bool  # this one is adapter/ and the run's tuned scores


@dataclass
class Leg:
    """One process's part of a run (a resumed run has several)."""

    command: str
    pid: int
    host: str
    started_at: str
    resumed_from_step: int | None = None
    ended_at: str | None = None
    status: str | None = None
    wall_seconds: float | None = None


@dataclass
class RunRecord:
    run_id: str
    config: dict  # ExperimentConfig.to_dict()
    status: str = "running"  # running | success | stopped_early | failed | interrupted
    reason: str | None = None
    phase: str = "setup"
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    command: str = ""
    legs: list[Leg] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)
    baseline: dict[str, EvalSummary] = field(default_factory=dict)
    tuned: dict[str, EvalSummary] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    training: TrainingSummary | None = None
    export_parity: dict | None = None  # experiment --export: the shipped model scored against the torch one
    candidates: dict[str, Candidate] = field(default_factory=dict)  # "best" and "last"
    checklist: dict = field(default_factory=dict)  # the plan's checklist: val split, leakage, headroom, sufficiency
    notes: list[str] = field(default_factory=list)  # one-line findings for the console and the reports
    wall_seconds: float = 0.0
    traceback: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def seed(self) -> int | None:
        return (self.config.get("train") or {}).get("seed")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "run record") -> RunRecord:
        if not isinstance(data, dict):
            raise RunRecordError(f"{source}: not a JSON object")
        version = data.get("schema_version", 1)
        if version != SCHEMA_VERSION:
            age = "an older" if isinstance(version, int) and version < SCHEMA_VERSION else "another"
            raise RunRecordError(f"{source}: schema version {version} was written by {age} moonlora "
                                 f"(this one reads {SCHEMA_VERSION}); rerun the experiment with this version")
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            values["legs"] = [Leg(**leg) for leg in data.get("legs", [])]
            for side in ("baseline", "tuned"):
                values[side] = {name: EvalSummary(**s) for name, s in (data.get(side) or {}).items()}
            values["comparisons"] = {name: Comparison(**c) for name, c in (data.get("comparisons") or {}).items()}
            values["training"] = TrainingSummary(**data["training"]) if data.get("training") else None
            values["candidates"] = {name: Candidate(**{**c, "main": EvalSummary(**c["main"]),
                                                       "comparison": Comparison(**c["comparison"])})
                                    for name, c in (data.get("candidates") or {}).items()}
            return cls(**values)
        except (TypeError, KeyError, AttributeError) as error:
            raise RunRecordError(f"{source}: does not match the run record schema ({error})") from None


def read_record(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise RunRecordError(f"{path}: no run record; pass a folder written by moonlora experiment") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunRecordError(f"{path}: unreadable run record ({type(error).__name__}: {error})") from None
    return RunRecord.from_dict(data, source=str(path))


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def write_record(run_dir: Path, record: RunRecord) -> None:
    record.updated_at = now_iso()
    write_json(Path(run_dir) / METRICS_FILE, record.to_dict(), command="experiment")


def read_config_dict(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunRecordError(f"{path}: unreadable run config ({error})") from None
    if not isinstance(config, dict):
        raise RunRecordError(f"{path}: not a run config (a JSON object), but a {type(config).__name__}")
    config.pop("written_by", None)
    return config


def write_config_dict(run_dir: Path, config: dict) -> None:
    write_json(Path(run_dir) / CONFIG_FILE, config, command="experiment")


# --- liveness ------------------------------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(record: RunRecord, run_dir: str | Path) -> str:
    """The record's status, with a `running` record whose process is gone told as died."""
    if record.status != "running":
        return record.status
    gone = not lock_held(Path(run_dir))  # the kernel drops the lock when the process dies
    if record.host == socket.gethostname():
        gone = gone or not process_alive(record.pid)
    return "died" if gone else "running"


def describe_state(record: RunRecord, run_dir: str | Path) -> str:
    """One line for an unfinished run: "died at training, resumable from step 4"."""
    state = run_state(record, run_dir)
    if state == "died":
        step = latest_checkpoint_step(Path(run_dir))
        resumable = f"resumable from step {step}" if step is not None else "resumable from the start"
        return f"died at {record.phase} (pid {record.pid} on {record.host}), {resumable} with --resume"
    if state == "running":
        return f"still running at {record.phase} (pid {record.pid} on {record.host})"
    reason = f": {record.reason}" if record.reason else ""
    return f"{state} at {record.phase}{reason}"


# --- the lock ------------------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive advisory lock on a run folder for as long as a process works in it.

    flock is released by the kernel when the process dies (kill -9 included), so a stale lock
    file never blocks a resume.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.handle = None

    def acquire(self) -> RunLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise RunLocked(f"{self.path.parent}: in use by process {holder}; wait for it to end "
                                "or pick another --output-dir") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_held(run_dir: Path) -> bool:
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# --- checkpoints ---------------------------------------------------------------------------------------------------
# A checkpoint is a folder step-NNNNNNNN/ holding the state file and a manifest with its
# sha256. It is written under a temporary name and published with one rename, so after any
# kill the folder holds only complete checkpoints plus temporary leftovers; older checkpoints
# are removed only after the new one is published.


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def verify_checkpoint(folder: Path) -> str | None:
    """None when the checkpoint is complete and intact, else why not."""
    try:
        manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text())
        state = folder / CHECKPOINT_STATE
        if state.stat().st_size != manifest["bytes"]:
            return f"{state.name} has {state.stat().st_size} bytes, expected {manifest['bytes']} (truncated)"
        if file_sha256(state) != manifest["sha256"]:
            return f"{state.name} checksum mismatch (corrupt)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"incomplete ({type(error).__name__}: {error})"
    return None


def _published(run_dir: Path) -> list[CheckpointInfo]:
    root = checkpoints_root(run_dir)
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            suffix = folder.name[len(CHECKPOINT_PREFIX):]
            if folder.is_dir() and folder.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
                found.append(CheckpointInfo(int(suffix), folder))
    return sorted(found, key=lambda c: -c.step)


def latest_checkpoint_step(run_dir: Path) -> int | None:
    for checkpoint in _published(run_dir):
        if verify_checkpoint(checkpoint.path) is None:
            return checkpoint.step
    return None


def find_resume_checkpoint(run_dir: Path, clean: bool = True) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest complete checkpoint, after clearing leftovers (`clean`); and one line per thing done."""
    root, notes = checkpoints_root(run_dir), []
    if clean and root.is_dir():
        for leftover in sorted(p for p in root.iterdir() if p.name.startswith(".")):
            remove_path(leftover)
            notes.append(f"removed an unfinished checkpoint save ({leftover.name})")
    chosen = None
    for checkpoint in _published(run_dir):
        problem = verify_checkpoint(checkpoint.path)
        if chosen is None and problem is None:
            chosen = checkpoint
        elif chosen is None:
            notes.append(f"skipped checkpoint {checkpoint.path}: {problem}")
        elif problem is not None and clean:  # an older, broken one (a kill while pruning): not needed
            remove_path(checkpoint.path)
            notes.append(f"removed an incomplete old checkpoint ({checkpoint.path.name})")
    if clean:  # a kill between publishing and pruning leaves one checkpoint too many
        for old in [c for c in _published(run_dir) if chosen is not None and c.step < chosen.step][CHECKPOINTS_KEPT - 1:]:
            remove_path(old.path)
    broken = [note for note in notes if note.startswith("skipped checkpoint")]
    if chosen is None and broken:
        raise CheckpointError(f"{root}: no complete checkpoint left ({'; '.join(broken)}); start the run again "
                              "with --overwrite instead of --resume")
    return chosen, notes


def checkpoint_staging(run_dir: Path, step: int) -> Path:
    staging = checkpoints_root(run_dir) / f".{checkpoint_name(step)}.tmp"
    remove_path(staging)
    staging.mkdir(parents=True)
    return staging


def publish_checkpoint(run_dir: Path, staging: Path, step: int) -> Path:
    """Seal the staged state with its checksum, rename it into place, then prune old ones."""
    state = staging / CHECKPOINT_STATE
    manifest = {"step": step, "bytes": state.stat().st_size, "sha256": file_sha256(state), "written_at": now_iso()}
    write_json(staging / CHECKPOINT_MANIFEST, manifest, command="experiment")
    _fsync_dir(staging)
    target = checkpoints_root(run_dir) / checkpoint_name(step)
    if target.exists():  # the same step saved again (e.g. a resumed run's missing eval): replace it
        retired = target.with_name(f".{target.name}.retired")
        remove_path(retired)
        target.rename(retired)
        staging.rename(target)
        remove_path(retired)
    else:
        staging.rename(target)
    _fsync_dir(target.parent)
    for old in _published(run_dir)[CHECKPOINTS_KEPT:]:
        remove_path(old.path)
    return target


def _fsync_dir(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


# --- discovery -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundRun:
    """A run folder and its record."""

    run_id: str  # folder path relative to the searched folder (its name when one level deep)
    path: Path
    record: RunRecord

    @property
    def state(self) -> str:
        return run_state(self.record, self.path)


@dataclass(frozen=True)
class UnreadableRun:
    path: Path
    reason: str


def candidate_dirs(runs_dir: Path) -> list[Path]:
    """runs_dir itself if it is a run folder, else its sub-folders (one or two levels) holding a record."""
    if (runs_dir / METRICS_FILE).is_file():
        return [runs_dir]
    found = []
    for child in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if (child / METRICS_FILE).is_file():
            found.append(child)
        else:
            found += sorted(g for g in child.iterdir() if g.is_dir() and (g / METRICS_FILE).is_file())
    return found


def discover_runs(runs_dir: str | Path) -> tuple[list[FoundRun], list[UnreadableRun]]:
    """Readable runs sorted by start time then id, and the unreadable folders with reasons."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise MissingInput(f"{runs_dir}: no such folder")
    runs, unreadable = [], []
    for folder in candidate_dirs(runs_dir):
        run_id = folder.name if folder == runs_dir else folder.relative_to(runs_dir).as_posix()
        try:
            runs.append(FoundRun(run_id, folder, read_record(folder)))
        except RunRecordError as error:
            unreadable.append(UnreadableRun(folder, str(error)))
    return sorted(runs, key=lambda r: (r.record.started_at, r.run_id)), unreadable
