"""`moonlora sweep`: the experiment plan's run matrix as one command.

A grid over learning rates, steps, seeds, LoRA targets, ranks, variants and inits, and main manifests
(a small TOML file, or the same axes as repeatable flags) is expanded into runs named by what varies.
Each run is a normal run folder under `runs/`, executed in turn:
- a finished run is skipped, an interrupted or died one resumed from its checkpoint, a failed
  one recorded while the sweep goes on (and retried by the next `--resume`);
- the baseline of one (manifest, eval contract) is decoded once per sweep and reused by every
  run measured under that very contract (`experiment.BaselineStore`, contract equality checked);
- at the end, `decide` for each group of runs that differ only by seed, and `report` over all.
`sweep.json` records the grid, each run's status and the verdicts, rewritten atomically after
every run. This module is torch-free until a run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from moonlora.configs import ExperimentConfig, flag_value
from moonlora.outputs import OutputExists, check_output_dir, claim_output_dir, write_json
from moonlora.runfolder import METRICS_FILE, RUN_CONTROL_FIELDS, RunRecord, RunRecordError, read_record, run_state
from moonlora.schema import SchemaError, list_of, reader, typed
from moonlora.errors import MissingInput, MoonloraError

OUTPUT_KIND = "sweep"
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
BASELINES_DIR = "baselines"
OUTPUT_ENTRIES = (SWEEP_FILE, RUNS_DIR, BASELINES_DIR, "training_report.md", "report.html")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Axis:
    """One dimension a sweep may vary: an experiment flag (configs.EXPERIMENT_FLAGS says which field it
    sets and its type) and how its values name runs."""

    name: str  # the experiment flag without dashes, underscored (TOML keys may use either spelling)
    label: object  # typed value -> part of a run name


def _float_label(prefix: str):
    return lambda value: prefix + f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-")


AXES = {axis.name: axis for axis in (
    Axis("learning_rate", _float_label("lr")),
    Axis("max_steps", lambda v: f"steps{v}"),
    Axis("seed", lambda v: f"seed{v}"),
    Axis("target_modules", lambda v: "targets-" + "+".join(v)),
    Axis("lora_r", lambda v: f"r{v}"),
    Axis("lora_variant", lambda v: v),
    Axis("init_lora_weights", lambda v: f"init-{v}"),
    Axis("manifest_path", lambda v: "manifest-" + _slug(Path(v).stem)),
    Axis("language", lambda v: f"lang-{v}"),
    Axis("metric", lambda v: v or "metric-auto"),
)}
RUN_CONTROL = ("output_dir", *RUN_CONTROL_FIELDS)  # set per run by the sweep, never shared or varied
REQUIRED = ("dataset_path", "manifest_path")  # experiment flags without a default


class SweepError(MoonloraError, ValueError):
    """A grid file or sweep folder that cannot be used (one line, naming the file)."""


@dataclass(frozen=True)
class GridFile:
    """A sweep grid file: shared experiment settings and the axes' values."""

    path: Path | None
    experiment: dict  # experiment flag (underscored) -> value
    grid: dict  # axis name -> list of values


def flag_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def load_grid(path: str | Path) -> GridFile:
    """Read a TOML grid: `[experiment]` (shared flags) and `[grid]` (axis -> list of values)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path}: no such grid file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SweepError(f"{path}: not a readable TOML grid ({error})") from None
    unknown = sorted(set(data) - {"experiment", "grid"})
    if unknown:
        raise SweepError(f"{path}: unknown table(s) {', '.join(unknown)}; a grid has [experiment] and [grid]")
    experiment = {flag_key(k): v for k, v in (data.get("experiment") or {}).items()}
    grid = {}
    for key, values in (data.get("grid") or {}).items():
        name = flag_key(key)
        if name not in AXES:
            raise SweepError(f"{path}: [grid] {key}: not an axis; axes are {', '.join(AXES)}")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: [grid] {key}: give a non-empty list of values")
        grid[name] = values
    both = sorted(set(grid) & set(experiment))
    if both:
        raise SweepError(f"{path}: {', '.join(both)} is both in [experiment] and [grid]; keep one")
    return GridFile(path, experiment, grid)


def typed_axes(raw: dict[str, list], source: str) -> dict[str, tuple]:
    """Axis values converted to their config types; duplicates refused."""
    axes = {}
    for name, values in raw.items():
        typed = tuple(_axis_value(name, value, source) for value in values)
        if len(set(typed)) != len(typed):
            raise SweepError(f"{source}: {name}: a value is listed twice")
        axes[name] = typed
    return axes


def _axis_value(name: str, value, source: str):
    try:
        return flag_value(name, value)
    except (TypeError, ValueError) as error:
        raise SweepError(f"{source}: {name.replace('_', '-')} = {value!r}: {error}") from None


def shared_settings(settings: dict, axes: dict[str, tuple], source: str) -> dict:
    """The settings every run shares, checked: no run control, the required manifests present (the main
    one may be an axis: then the base holds its first value)."""
    for name in settings:
        if name in RUN_CONTROL:
            raise SweepError(f"{source}: {name.replace('_', '-')}: not an experiment setting")
    for name in REQUIRED:
        if name not in settings and name not in axes:
            flag = name.replace("_", "-")
            raise SweepError(f"sweep needs --{flag} (a flag, or {flag} in the grid file's [experiment] table)")
    if "manifest_path" not in settings:
        settings = {**settings, "manifest_path": axes["manifest_path"][0]}
    return settings


@dataclass(frozen=True)
class SweepConfig:
    output_dir: str
    base: ExperimentConfig  # every shared setting; output_dir and the axes are set per run
    axes: dict[str, tuple]  # axis name -> values (one run per combination)
    grid_file: str | None = None
    resume: bool = False
    overwrite: bool = False

    @classmethod
    def from_grid(cls, grid: GridFile, overrides: dict, output_dir: str, resume: bool = False,
                  overwrite: bool = False) -> SweepConfig:
        """A grid file's settings and axes with `overrides` (experiment flag -> value, from the command line)
        on top: an axis flag (a value or a list) replaces that axis, any other flag a shared setting. Every
        value is typed and checked here, before anything runs; a bad one is a one-line error naming the grid
        file."""
        source = str(grid.path or "the command line")
        overrides = {flag_key(key): value for key, value in overrides.items()}
        given_axes = {k: v if isinstance(v, list) else [v] for k, v in overrides.items() if k in AXES}
        axes = typed_axes({**grid.grid, **given_axes}, source)
        shared = shared_settings({**grid.experiment, **{k: v for k, v in overrides.items() if k not in AXES}},
                                 axes, source)
        try:
            base = ExperimentConfig.from_flags({**shared, "output_dir": output_dir})
        except (TypeError, ValueError) as error:
            raise SweepError(f"{source}: {error}") from None
        return cls(output_dir=output_dir, base=base, axes=axes, grid_file=str(grid.path) if grid.path else None,
                   resume=resume, overwrite=overwrite)

    def to_dict(self) -> dict:
        base = self.base.to_dict()
        for key in RUN_CONTROL:
            base.pop(key, None)
        return {"output_dir": self.output_dir, "grid_file": self.grid_file, "base": base,
                "axes": {name: list(values) for name, values in self.axes.items()}}


@dataclass(frozen=True)
class PlannedRun:
    name: str
    settings: dict  # axis -> value, for every axis of the grid
    config: ExperimentConfig


def apply_settings(base: ExperimentConfig, settings: dict, output_dir: Path) -> ExperimentConfig:
    """The base config with the axes' values put in place (validated by the config classes)."""
    return base.with_flags({**settings, "output_dir": str(output_dir), "resume": False, "overwrite": False})


def plan_runs(config: SweepConfig) -> list[PlannedRun]:
    """Every combination of the axes, named by the axes that have more than one value."""
    names = list(config.axes)
    varying = [n for n in names if len(config.axes[n]) > 1]
    runs = []
    for values in itertools.product(*(config.axes[n] for n in names)):
        settings = dict(zip(names, values))
        name = "_".join(AXES[n].label(settings[n]) for n in varying) or "run"
        runs.append(PlannedRun(name, settings, apply_settings(config.base, settings,
                                                              Path(config.output_dir) / RUNS_DIR / name)))
    if len({run.name for run in runs}) != len(runs):
        raise SweepError("two runs of the grid get the same name; make the axis values differ more")
    return runs


# --- the sweep folder ------------------------------------------------------------------------------------------


def current_base(base):
    """A saved sweep's shared settings as this moonlora writes them: a setting added since it was saved
    (e.g. --lora-variant) reads as its default, so the sweep still resumes; unreadable ones stay as saved."""
    if not isinstance(base, dict):
        return base
    try:
        config = ExperimentConfig.from_dict({**base, "output_dir": ""})
    except (TypeError, ValueError):
        return base
    return {key: value for key, value in config.to_dict().items() if key not in RUN_CONTROL}


def check_output(config: SweepConfig) -> Path:
    """Every check on the sweep folder before any work (nothing is written)."""
    folder = Path(config.output_dir)
    sweep_file = folder / SWEEP_FILE
    if config.resume:
        if not sweep_file.is_file():
            raise MissingInput(f"--output-dir {folder}: holds no {SWEEP_FILE}; drop --resume to start a sweep")
        saved = read_sweep(folder).config
        current = config.to_dict()
        saved = {**saved, "base": current_base(saved.get("base"))}
        differing = [key for key in ("base", "axes") if json.loads(json.dumps(saved.get(key))) !=
                     json.loads(json.dumps(current[key]))]
        if differing:
            raise SweepError(f"{sweep_file}: --resume needs the same grid and settings; differing: "
                             f"{', '.join(differing)} — start a new sweep in another --output-dir")
        return folder
    if sweep_file.is_file() and not config.overwrite:
        raise OutputExists(f"--output-dir {folder}: holds a sweep; continue it with --resume, or pass --overwrite "
                           "to replace it (only moonlora's files)")
    return check_output_dir(folder, "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES, config.overwrite, require_empty=True)


def read_sweep(folder: Path) -> SweepState:
    path = Path(folder) / SWEEP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SweepError(f"{path}: cannot be read ({error}); start a new sweep in another --output-dir") from None
    return SweepState.from_dict(data, str(path))


@dataclass
class SweepRun:
    """One planned run's row of sweep.json."""

    name: str
    settings: dict  # axis -> value
    run_dir: str
    status: str  # pending | success | stopped_early | failed | interrupted | died | running
    reason: str | None = None
    wall_seconds: float | None = None
    baseline_main_wer: float | None = None  # the primary metric's rate (CER for a CER run, see `metric`)
    tuned_main_wer: float | None = None
    metric: str = "wer"  # the run's primary metric (sweeps from before it was recorded: WER)

    def finish(self, record: RunRecord) -> None:
        """Status and main WERs (the run's primary metric) from the run's record."""
        self.status, self.reason = record.status, record.reason
        self.metric = record.config.scoring.primary_metric
        main_base, main_tuned = record.baseline.get("main"), record.tuned.get("main")
        self.baseline_main_wer = None if main_base is None else main_base.primary
        self.tuned_main_wer = None if main_tuned is None else main_tuned.primary


@dataclass
class BaselineCounts:
    """The sweep's shared baselines: decodes made and results reused (experiment.BaselineStore)."""

    decoded: int = 0
    reused: int = 0
    decoded_by_manifest: dict[str, int] = field(default_factory=dict)


SWEEP_CONFIG_KEYS = ("output_dir", "grid_file", "base", "axes")  # SweepConfig.to_dict(), at sweep.json's top level


@dataclass
class SweepState:
    """What sweep.json holds; rewritten after every run."""

    config: dict  # SweepConfig.to_dict()
    command: str
    runs: list[SweepRun]
    baselines: BaselineCounts = field(default_factory=BaselineCounts)
    groups: list[dict] = field(default_factory=list)  # {"group", "runs", **Decision.to_dict()}
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **self.config, "command": self.command,
                "runs": [dataclasses.asdict(run) for run in self.runs], "baselines": dataclasses.asdict(self.baselines),
                "groups": self.groups, "wall_seconds": self.wall_seconds}

    @classmethod
    def from_dict(cls, data, source: str = SWEEP_FILE) -> SweepState:
        """The state back from sweep.json; a SweepError (one line, naming the file) for another schema."""
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise SweepError(f"{source}: not a sweep record of this moonlora version (schema {SCHEMA_VERSION})")
        marks = ("schema_version", "written_by")  # written_by: outputs.write_json's mark
        state = {key: value for key, value in data.items() if key not in (*SWEEP_CONFIG_KEYS, *marks)}
        state["config"] = {key: data[key] for key in SWEEP_CONFIG_KEYS if key in data}
        try:
            return typed(cls, state, "sweep", {"runs": list_of(reader(SweepRun)), "baselines": reader(BaselineCounts)})
        except SchemaError as error:
            raise SweepError(f"{source}: does not match the sweep record schema ({error})") from None


def run_status(run_dir: Path) -> tuple[str, bool]:
    """(status, resume) of a planned run's folder: what the sweep does with it."""
    if not (run_dir / METRICS_FILE).exists():
        return "pending", False
    try:
        record = read_record(run_dir)
    except RunRecordError:
        return "pending", False  # moonlora's pre-training failure rule or the output policy decide
    # An unfinished run continues with --resume: from its newest checkpoint, or from step 0 with its
    # baseline reused when it ended before the first one (the grid fixes its settings).
    return run_state(record, run_dir), not record.finished


def say(line: str) -> None:
    print(f"moonlora sweep: {line}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"




def seed_groups(runs: list[PlannedRun]) -> dict[str, list[PlannedRun]]:
    """Runs that differ only by seed, keyed by the rest of their settings."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        key = "_".join(AXES[n].label(v) for n, v in run.settings.items() if n != "seed" and
                       len({r.settings[n] for r in runs}) > 1) or "all"
        groups.setdefault(key, []).append(run)
    return groups


@dataclass
class SweepResult:
    out_dir: Path
    state: SweepState
    decisions: dict  # group -> Decision
    report_markdown: Path | None
    report_html: Path | None


def run_sweep(config: SweepConfig, progress: bool = True, command: str | None = None) -> SweepResult:
    """Run (or continue) the whole grid; the sweep's record is `sweep.json` in the folder.

    `command` is the command line to record (default: this process's arguments).
    """
    out_dir = check_output(config)
    planned = plan_runs(config)
    started = time.perf_counter()
    if not config.resume:
        claim_output_dir(out_dir, "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES, config.overwrite, require_empty=True)
    from moonlora.train.experiment import BaselineStore, run_experiment

    previous = read_sweep(out_dir) if config.resume else None
    earlier_seconds = previous.wall_seconds if previous else 0.0
    state = SweepState(config=config.to_dict(), command=command or shlex.join(["moonlora", *sys.argv[1:]]),
                       runs=[SweepRun(run.name, run.settings, run.config.output_dir, "pending") for run in planned],
                       baselines=previous.baselines if previous else BaselineCounts(), wall_seconds=earlier_seconds)
    store = BaselineStore(out_dir / BASELINES_DIR)
    store.decoded, store.reused = state.baselines.decoded, state.baselines.reused
    store.decoded_by_manifest = dict(state.baselines.decoded_by_manifest)

    def save() -> None:
        state.baselines = BaselineCounts(store.decoded, store.reused, dict(store.decoded_by_manifest))
        state.wall_seconds = earlier_seconds + time.perf_counter() - started
        write_json(out_dir / SWEEP_FILE, state.to_dict(), command=OUTPUT_KIND)

    save()
    executed: list[float] = []
    for index, (run, row) in enumerate(zip(planned, state.runs)):
        status, resume = run_status(Path(run.config.output_dir))
        if status in ("success", "stopped_early"):
            row.finish(read_record(run.config.output_dir))
            say(f"[{index + 1}/{len(planned)}] {run.name}: already {status}, skipped")
            save()
            continue
        verb = "resuming" if resume else "starting"
        say(f"[{index + 1}/{len(planned)}] {verb} {run.name} ({', '.join(f'{k}={v}' for k, v in run.settings.items())})")
        run_started = time.perf_counter()
        try:
            record = run_experiment(dataclasses.replace(run.config, resume=resume), progress=progress,
                                    baseline_store=store)
            row.finish(record)
        except KeyboardInterrupt:
            row.status, row.reason = "interrupted", "continue the sweep with --resume"
            save()
            raise
        except Exception as error:  # recorded, and the sweep goes on (its run folder says more)
            row.status, row.reason = "failed", f"{type(error).__name__}: {' '.join(str(error).splitlines())}"
            say(f"{run.name} failed: {row.reason}")
        row.wall_seconds = time.perf_counter() - run_started
        executed.append(row.wall_seconds)
        remaining = sum(1 for r in state.runs[index + 1:] if r.status == "pending")
        eta = sum(executed) / len(executed) * remaining
        say(f"{index + 1}/{len(planned)} runs done; {run.name} took {_minutes(row.wall_seconds)}; "
            f"ETA {_minutes(eta)} for {remaining} more")
        save()
    decisions = decide_groups(planned, state)
    save()
    markdown, html = write_report(out_dir, state.command)
    save()
    return SweepResult(out_dir, state, decisions, markdown, html)


def decide_groups(planned: list[PlannedRun], state: SweepState) -> dict:
    """`decide` over each group of finished runs that differ only by seed."""
    from moonlora.verdict.decide import decide

    statuses = {row.name: row.status for row in state.runs}
    decisions, state.groups = {}, []
    for key, runs in seed_groups(planned).items():
        finished = [run for run in runs if statuses[run.name] in ("success", "stopped_early")]
        if not finished:
            continue
        decision = decide([run.config.output_dir for run in finished])
        decisions[key] = decision
        state.groups.append({"group": key, "runs": [run.name for run in finished], **decision.to_dict()})
    return decisions


def write_report(out_dir: Path, command: str) -> tuple[Path | None, Path | None]:
    from moonlora.verdict.report import build_report

    runs_dir = out_dir / RUNS_DIR
    if not runs_dir.is_dir():
        return None, None
    markdown, html = out_dir / "training_report.md", out_dir / "report.html"
    build_report(runs_dir, out_markdown=markdown, out_html=html, overwrite=True,  # the sweep's own files
                 recreate=f"{command} (grid and settings: sweep.json)")
    return markdown, html


def verdict_table(result: SweepResult) -> str:
    """One line per group: its runs and the overall verdict, then each group's verdict table."""
    from moonlora.verdict.decide import render

    lines = ["| group | runs | verdict |", "| --- | --- | --- |"]
    for key, decision in result.decisions.items():
        lines.append(f"| {key} | {', '.join(decision.runs)} | {'PASS' if decision.passed else 'FAIL'} |")
    for key, decision in result.decisions.items():
        lines += ["", f"### {key}", "", render(decision)]
    return "\n".join(lines)
