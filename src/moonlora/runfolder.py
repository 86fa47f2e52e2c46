"""The run folder: its file names, its typed and versioned record, its lock and its checkpoints.

`moonlora experiment` writes a run folder only through this module, and `decide`, `report`,
the HTML report (and later `sweep`/`export`) read it only through it, so what one command
writes and another reads has one schema. Nothing here imports torch.

Layout of a run folder:
    experiment_config.json   the resolved ExperimentConfig
    experiment_metrics.json  the run record (RunRecord): status from the first second, updated
                             atomically at each phase, final status on any exit
    baseline/<set>/, tuned/<set>/   transcripts.jsonl + summary.json per scored manifest (read_transcripts
                             is the one reader of transcripts.jsonl, for every command); the set "nonspeech" is
                             the --nonspeech-manifest (words emitted where nobody speaks)
    adapter/                 the chosen LoRA adapter (PEFT save_pretrained)
    export/ort/, export/scores/   with --export ort: the deployable int8 graphs and their scores
    checkpoints/step-NNNNNNNN/   resumable training state, the last two kept
    tensorboard/             one event stream across resumes
    .moonlora-output.json    moonlora's marker (see moonlora.outputs)
    .moonlora.lock           held while a process works in the folder
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import fcntl
import json
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moonlora.comparison import Comparison, parity_outcome
from moonlora.configs import ExperimentConfig
from moonlora.data.manifest import file_sha256
from moonlora.outputs import OutputError, write_json
from moonlora.schema import SchemaError, list_of, mapping_of, reader, typed
from moonlora.errors import MissingInput, MoonloraError

SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: the same record with its config, data, lora, checklist and export parity untyped
CONFIG_FILE = "experiment_config.json"
METRICS_FILE = "experiment_metrics.json"
ADAPTER_DIR = "adapter"  # the selected adapter (--select best|last)
CANDIDATES = ("best", "last")
CANDIDATE_ADAPTER_DIRS = {"best": "adapter-best", "last": "adapter-last"}  # both are always kept
CANDIDATE_SCORE_DIRS = {"best": "tuned-best", "last": "tuned-last"}  # the other candidate's main-manifest score
BASELINE_DIR = "baseline"
NONSPEECH = "nonspeech"  # the non-speech manifest's folder under baseline/ and tuned/
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
# A scored folder (baseline/<set>/, tuned/<set>/, export/scores/<set>/, a transcribe --output-dir):
TRANSCRIPTS_FILE = "transcripts.jsonl"  # one JSON row per clip
SUMMARY_FILE = "summary.json"  # the corpus scores and the eval contract


class RunRecordError(MoonloraError, ValueError):
    """A run record that cannot be read (missing, corrupt, or from another schema version)."""


class RunLocked(MoonloraError, RuntimeError):
    """Another process holds the run folder."""


class CheckpointError(MoonloraError, ValueError):
    """No usable checkpoint where one is needed."""


class TranscriptsError(MoonloraError, ValueError):
    """A transcripts.jsonl that cannot be read (one line, naming the file and the line)."""


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
    metric: str = "wer"  # the primary metric (records from before it was recorded scored WER)

    @property
    def primary(self) -> float:
        """The primary metric's corpus rate: `wer` or `cer`, as `metric` names."""
        return getattr(self, self.metric)

    @property
    def label(self) -> str:
        return self.metric.upper()


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
    metric: str = "wer"  # the primary metric best_val_wer and the intervals' *_wer values hold


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


@dataclass(frozen=True)
class ParitySet:
    """The exported model against the torch one (and the baseline) on one manifest."""

    torch_wer: float
    export_wer: float
    export_minus_torch: Comparison
    export_minus_baseline: Comparison
    text_agreement: float  # share of clips with identical hypotheses
    contract: dict  # the export's eval contract


@dataclass(frozen=True)
class ExportParity:
    """experiment --export: the shipped model scored against the measured one; `outcome` is decided
    once, when the run scores it (comparison.parity_outcome on the main manifest)."""

    format: str
    folder: str
    runtime: dict  # the export's eval-contract runtime
    margin: float
    outcome: str  # pass | fail | inconclusive
    quantization: dict
    sets: dict[str, ParitySet]  # "main" and, with a canary, "canary"

    @property
    def main(self) -> ParitySet:
        return self.sets["main"]


@dataclass
class NonspeechSide:
    """The baseline or the tuned model on the non-speech manifest (transcripts in baseline|tuned/nonspeech/)."""

    words_per_clip: float  # normalized words emitted, over all clips
    text_share: float  # share of clips with any word
    clips_with_text: int
    flags: dict[str, int]
    looping_clips: list[str]  # utt_ids either loop rule flagged
    contract: dict


@dataclass
class NonspeechSummary:
    """experiment --nonspeech-manifest: what each model writes where nobody speaks (`decide`'s non-speech
    criterion reads `comparisons["words_per_clip"]`)."""

    path: str
    clips: int
    baseline: NonspeechSide
    tuned: NonspeechSide | None = None
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # words_per_clip, text_share: tuned - baseline


@dataclass(frozen=True)
class ValSplitCheck:
    clips: int
    minimum: int


@dataclass(frozen=True)
class LeakageCheck:
    checked: list[str]  # "train x main", ... : every pair compared
    allowed: bool  # --allow-leakage
    found: list[dict]  # {"kind", "manifests", "shared", "examples"}


@dataclass(frozen=True)
class HeadroomCheck:
    main_baseline_wer: float  # the primary metric's rate (see `metric`)
    threshold: float
    ok: bool
    metric: str = "wer"


@dataclass(frozen=True)
class SufficiencyCheck:
    train_clips: int
    target: int
    ok: bool


@dataclass(frozen=True)
class Checklist:
    """The plan's checklist; an item is None until the run has reached it."""

    val_split: ValSplitCheck | None = None
    leakage: LeakageCheck | None = None
    headroom: HeadroomCheck | None = None
    sufficiency: SufficiencyCheck | None = None


@dataclass(frozen=True)
class DatasetInfo:
    path: str
    clips: int
    skipped: int
    skipped_by_kind: dict[str, int]
    sha256: str


@dataclass(frozen=True)
class DurationFilter:
    max_seconds: float | None
    kept_clips: int
    kept_hours: float
    dropped_clips: int
    dropped_hours: float


@dataclass(frozen=True)
class SplitInfo:
    method: str
    reason: str
    train: int
    val: int
    val_speakers: list[str]


@dataclass(frozen=True)
class EvalSetInfo:
    path: str
    clips: int
    hours: float
    skipped: int
    skipped_by_kind: dict[str, int]
    sha256: str


@dataclass(frozen=True)
class ReplayInfo:
    path: str | None
    clips: int


@dataclass(frozen=True)
class DataReport:
    """What the run's data loading read, kept and skipped."""

    dataset: DatasetInfo
    filter: DurationFilter
    split: SplitInfo
    eval_sets: dict[str, EvalSetInfo]  # "val", "main", "extra-<stem>", "canary"
    replay: ReplayInfo


@dataclass(frozen=True)
class LoraSummary:
    trainable_params: int
    total_params: int
    trainable_percent: float
    lora_modules: int


@dataclass
class RunRecord:
    run_id: str
    config: ExperimentConfig
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
    data: DataReport | None = None
    lora: LoraSummary | None = None
    baseline: dict[str, EvalSummary] = field(default_factory=dict)
    tuned: dict[str, EvalSummary] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    training: TrainingSummary | None = None
    export_parity: ExportParity | None = None  # experiment --export: the shipped model scored against the torch one
    nonspeech: NonspeechSummary | None = None  # experiment --nonspeech-manifest: words emitted without speech
    candidates: dict[str, Candidate] = field(default_factory=dict)  # "best" and "last"
    checklist: Checklist = field(default_factory=Checklist)  # the plan's checklist: val split, leakage, headroom, sufficiency
    notes: list[str] = field(default_factory=list)  # one-line findings for the console and the reports
    wall_seconds: float = 0.0
    traceback: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def seed(self) -> int:
        return self.config.train.seed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "run record") -> RunRecord:
        if not isinstance(data, dict):
            raise RunRecordError(f"{source}: not a JSON object")
        version = data.get("schema_version", 1)
        if version not in READABLE_VERSIONS:
            age = "an older" if isinstance(version, int) and version < min(READABLE_VERSIONS) else "another"
            raise RunRecordError(f"{source}: schema version {version} was written by {age} moonlora "
                                 f"(this one reads {', '.join(map(str, READABLE_VERSIONS))}); rerun the experiment "
                                 "with this version")
        try:
            data = _from_version_2(data) if version == 2 else data
            return typed(cls, data, "record", RECORD_FIELDS, derived=("written_by",))  # outputs.write_json's mark
        except SchemaError as error:
            raise RunRecordError(f"{source}: does not match the run record schema ({error})") from None


def _from_version_2(data: dict) -> dict:
    """A schema-2 record as schema 3: its not-yet-filled data and lora ({}) None, and an export parity
    written before the outcome was stored judged by the one rule."""
    upgraded = {**data, **{name: None for name in ("data", "lora") if data.get(name) == {}}}
    parity = data.get("export_parity")
    if isinstance(parity, dict) and "outcome" not in parity:
        try:
            main = parity["sets"]["main"]
            outcome = parity_outcome(Comparison.from_dict(main["export_minus_torch"]),
                                     Comparison.from_dict(main["export_minus_baseline"]), parity["margin"])
        except (KeyError, TypeError) as error:
            raise SchemaError(f"record.export_parity: lacks {error}") from None
        upgraded["export_parity"] = {**parity, "outcome": outcome}
    return upgraded


def _config(value, where: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.from_dict(value)
    except (TypeError, ValueError, AttributeError) as error:
        raise SchemaError(f"{where}: {' '.join(str(error).split())}") from None


def _comparison(value, where: str) -> Comparison:
    return Comparison.from_dict(value, where)


_summary = reader(EvalSummary)
PARITY_FIELDS = {"sets": mapping_of(reader(ParitySet, {"export_minus_torch": _comparison,
                                                       "export_minus_baseline": _comparison}))}
CHECKLIST_FIELDS = {"val_split": reader(ValSplitCheck), "leakage": reader(LeakageCheck),
                    "headroom": reader(HeadroomCheck), "sufficiency": reader(SufficiencyCheck)}
DATA_FIELDS = {"dataset": reader(DatasetInfo), "filter": reader(DurationFilter), "split": reader(SplitInfo),
               "eval_sets": mapping_of(reader(EvalSetInfo)), "replay": reader(ReplayInfo)}
RECORD_FIELDS = {
    "config": _config, "legs": list_of(reader(Leg)), "data": reader(DataReport, DATA_FIELDS),
    "lora": reader(LoraSummary), "baseline": mapping_of(_summary), "tuned": mapping_of(_summary),
    "comparisons": mapping_of(_comparison), "training": reader(TrainingSummary),
    "export_parity": reader(ExportParity, PARITY_FIELDS),
    "candidates": mapping_of(reader(Candidate, {"main": _summary, "comparison": _comparison})),
    "checklist": reader(Checklist, CHECKLIST_FIELDS),
    "nonspeech": reader(NonspeechSummary, {"baseline": reader(NonspeechSide), "tuned": reader(NonspeechSide),
                                           "comparisons": mapping_of(_comparison)}),
}


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
    record.updated_at, record.schema_version = now_iso(), SCHEMA_VERSION  # a resumed older record is rewritten whole
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


# --- scored folders ------------------------------------------------------------------------------------------------
# Every command that reads a transcripts.jsonl (resume, compare, report, export scores) reads it here.

DAMAGED = "the file is damaged; score that folder again (moonlora transcribe, or rerun the experiment)"


def read_transcripts(path: str | Path) -> list[dict]:
    """The rows of a transcripts.jsonl, blank lines skipped; FileNotFoundError when it is absent.

    A line that is not a JSON object is a one-line TranscriptsError naming the file and the line.
    """
    return [row for _, row in read_numbered_transcripts(path)]


def read_numbered_transcripts(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of each row of a transcripts.jsonl, for readers that name lines in their errors."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as error:
        raise TranscriptsError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    return [(number, _transcript_row(line, f"{path}:{number}")) for number, line in enumerate(lines, 1) if line.strip()]


def _transcript_row(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError as error:
        raise TranscriptsError(f"{where}: not valid JSON ({error}); {DAMAGED}") from None
    if not isinstance(row, dict):
        raise TranscriptsError(f"{where}: not a JSON object; {DAMAGED}")
    return row


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


def own_leftover(name: str) -> bool:
    """A temporary name moonlora gives a checkpoint save (`.step-NNNNNNNN.tmp` or `.retired`)."""
    return re.fullmatch(rf"\.{re.escape(CHECKPOINT_PREFIX)}[0-9]{{8,}}\.(tmp|retired)", name) is not None


def find_resume_checkpoint(run_dir: Path, clean: bool = True) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest complete checkpoint, after clearing moonlora's own leftovers (`clean`); and one
    line per thing done. Anything else in checkpoints/ is left where it is."""
    root, notes = checkpoints_root(run_dir), []
    if clean and root.is_dir():
        for leftover in sorted(p for p in root.iterdir() if own_leftover(p.name)):
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
    """Remove a file or folder moonlora wrote (a link itself, never what it points at); a failed
    delete is an OutputError naming the path."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except FileNotFoundError:
        pass  # already gone
    except OSError as error:
        raise OutputError(f"{path}: cannot remove ({error.strerror or error}); remove it by hand and rerun") from None


# --- swapping a folder in --------------------------------------------------------------------------------------------
AT_FDCWD = -100
RENAME_EXCHANGE = 2  # renameat2 flag: swap two existing paths atomically (Linux 3.15+)


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def swap_in_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target`, then remove the old one, so a reader or a kill
    always finds a complete folder there. Where paths cannot be exchanged atomically, the old
    one steps aside (`.NAME.retired`) only for the instant between two renames."""
    if not target.exists() and not target.is_symlink():
        new.rename(target)
    elif exchange_paths(new, target):
        remove_path(new)  # it holds the old folder now
    else:
        retired = target.with_name(f".{target.name}.retired")
        remove_path(retired)
        target.rename(retired)
        new.rename(target)
        remove_path(retired)
    _fsync_dir(target.parent)


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
