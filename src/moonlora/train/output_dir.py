"""The checks on `experiment --output-dir`: light (no torch), so the CLI runs them before the
model stack loads, and `run_experiment` runs them again before it touches the folder."""

from __future__ import annotations

from pathlib import Path

from moonlora.configs import ExperimentConfig
from moonlora.errors import InputError, MissingInput
from moonlora.outputs import OutputExists, check_output_dir
from moonlora.runfolder import (LOCK_FILE, RUN_CONTROL_FIELDS, RUN_ENTRIES, RUN_KIND, RunRecord, RunRecordError,
                                latest_checkpoint_step, read_config_dict, read_record, run_state)

PRE_TRAINING_PHASES = ("setup", "baseline")


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    differing = []
    for key in sorted(set(saved) | set(current)):
        if not prefix and key in (*RUN_CONTROL_FIELDS, "written_by"):
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differing += config_differences(a, b, f"{prefix}{key}.")
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            differing.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return differing


def reusable_failed_run(run_dir: Path) -> RunRecord | None:
    """A moonlora run in the folder that ended before training started: safe to replace."""
    try:
        record = read_record(run_dir)
    except RunRecordError:
        return None
    ended = run_state(record, run_dir) in ("failed", "interrupted", "died")
    if ended and record.phase in PRE_TRAINING_PHASES and latest_checkpoint_step(run_dir) is None:
        return record
    return None


def check_resumable(run_dir: Path, config: ExperimentConfig) -> RunRecord:
    try:
        record = read_record(run_dir)
    except RunRecordError as error:
        raise RunRecordError(f"--resume: {error}") from None
    saved = read_config_dict(run_dir)
    try:  # a setting added since the run was saved compares as its default
        saved = ExperimentConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass
    differing = config_differences(saved, config.to_dict())
    if differing:
        raise InputError(f"{run_dir}: --resume needs the same settings; differing: {', '.join(differing)}")
    if record.finished:
        raise OutputExists(f"{run_dir}: the run already finished ({record.status}); nothing to resume — "
                           "pick another --output-dir for a new run")
    return record


def validate_run_dir(config: ExperimentConfig) -> RunRecord | None:
    """Every check on --output-dir, before any data is read or model loaded; nothing is written.

    Returns the earlier record (resume, or a pre-training failure to replace), else None.
    """
    run_dir = Path(config.output_dir)
    if config.resume:
        if not run_dir.is_dir():
            raise MissingInput(f"--output-dir {run_dir}: no such run folder; drop --resume to start a new run")
        return check_resumable(run_dir, config)
    earlier = reusable_failed_run(run_dir) if run_dir.is_dir() else None
    check_output_dir(run_dir, "--output-dir", RUN_KIND, RUN_ENTRIES, overwrite=config.overwrite or earlier is not None,
                     require_empty=True, ignore=(LOCK_FILE,))
    return earlier
