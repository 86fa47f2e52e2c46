"""Train: experiments and sweeps started from the studio's form, as background processes of the same CLI.

A job is `python -m moonlora --quiet experiment ...` (or `sweep`) in its own process group, its output
in a log under the root's `.moonlora-studio/jobs/` (a moonlora `studio` folder under the output
policy). Stop sends SIGINT: the same clean interrupt as Ctrl-C (the run records `interrupted` and
keeps its checkpoints); resume starts the job's own command again with `--resume`. The form's
settings are checked as the CLI checks them (`ExperimentConfig.from_flags`, the run folder checks)
before any process starts. Closing the studio interrupts its running jobs the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from moonlora.configs import EXPERIMENT_FLAGS, FLAG_ALIASES, ExperimentConfig, flag_type, parse_targets
from moonlora.errors import InputError
from moonlora.outputs import claim_output_dir, read_marker, write_json
from moonlora.runfolder import now_iso
from moonlora.studio.guard import relative_to_root, under_root

STATE_DIR = ".moonlora-studio"
STATE_KIND = "studio"
STATE_ENTRIES = ("jobs", "jobs.json")
PATH_FLAGS = ("output_dir", "dataset_path", "manifest_path", "canary_manifest", "replay_manifest", "extra_manifest")
LOG_TAIL = 4000
UNKNOWN_END = -1  # the return code kept for a job an earlier studio started


class JobError(InputError):
    """A form that cannot start a job, or a job that cannot be stopped or resumed (one line)."""


@dataclass
class Job:
    id: str
    kind: str  # experiment | sweep
    output: str  # the run or sweep folder, relative to the root
    argv: list[str]  # after `moonlora --quiet`
    log: str  # relative to the root
    started_at: str
    pid: int | None = None
    returncode: int | None = None
    stopped: bool = False
    resumes: int = 0
    ended_at: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "process"}
        data["argv"] = list(self.argv)
        data["state"] = self.state
        data["command"] = shlex.join(["moonlora", *self.argv])
        return data

    @property
    def state(self) -> str:
        """running, finished (exit 0), interrupted (exit 130: Ctrl-C or Stop), failed, or unknown (a job an
        earlier studio started: its end was not seen here; the Runs view tells from its record)."""
        if self.returncode is None:
            return "running" if self.process is not None else "unknown"
        return {0: "finished", 130: "interrupted", UNKNOWN_END: "unknown"}.get(self.returncode, "failed")


def flag_value(name: str, raw) -> object:
    """A form value as the flag's type (the experiment's own table), or JobError naming the flag."""
    key = FLAG_ALIASES.get(name, name)
    if key not in EXPERIMENT_FLAGS:
        raise JobError(f"--{name.replace('_', '-')}: not an experiment flag")
    kind = flag_type(key)
    try:
        if kind is bool:
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "on", "yes")
        if key == "target_modules":
            return parse_targets(raw)
        if kind in (tuple, list):
            return [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
        return kind(raw)
    except (TypeError, ValueError) as error:
        raise JobError(f"--{name.replace('_', '-')} {raw!r}: {error}") from None


def as_argv(settings: dict) -> list[str]:
    argv = []
    for name, value in settings.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)) and name == "extra_manifest":
            for item in value:
                argv += [flag, str(item)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


class Jobs:
    """The studio's jobs: started, stopped, resumed, listed; kept in `.moonlora-studio/jobs.json`."""

    def __init__(self, root: Path):
        self.root, self.lock, self.jobs = Path(root), threading.Lock(), {}
        self.folder = self.root / STATE_DIR
        self._load()

    # --- state ---
    def _claim(self) -> None:
        if read_marker(self.folder) is None:
            claim_output_dir(self.folder, "studio state", STATE_KIND, STATE_ENTRIES, overwrite=False)
        (self.folder / "jobs").mkdir(exist_ok=True)

    def _load(self) -> None:
        try:
            data = json.loads((self.folder / "jobs.json").read_text(encoding="utf-8"))
            for row in data.get("jobs", []):
                row = {k: v for k, v in row.items() if k in Job.__dataclass_fields__ and k != "process"}
                job = Job(**row)
                if job.returncode is None:
                    job.returncode = UNKNOWN_END
                self.jobs[job.id] = job
        except (OSError, ValueError, TypeError):
            pass

    def _save(self) -> None:
        write_json(self.folder / "jobs.json", {"jobs": [job.to_dict() for job in self.jobs.values()]},
                   command=STATE_KIND)

    def _poll(self) -> None:
        for job in self.jobs.values():
            if job.process is not None and job.returncode is None:
                code = job.process.poll()
                if code is not None:
                    job.returncode, job.ended_at = code, now_iso()
                    self._save()

    # --- the form ---
    def experiment_argv(self, form: dict) -> tuple[list[str], Path]:
        settings = {}
        for name, raw in form.items():
            if raw in (None, "", []):
                continue
            settings[name] = flag_value(name, raw)
        for name in PATH_FLAGS:
            if name in settings:
                value = settings[name]
                settings[name] = ([str(under_root(self.root, v)) for v in value] if isinstance(value, list)
                                  else str(under_root(self.root, str(value))))
        for required in ("output_dir", "dataset_path", "manifest_path"):
            if required not in settings:
                raise JobError(f"--{required.replace('_', '-')} is required")
        config = ExperimentConfig.from_flags(settings)  # a ConfigError names the flag
        from moonlora.train.output_dir import validate_run_dir

        validate_run_dir(config)  # refused before any process starts, as the CLI refuses it
        return ["experiment", *as_argv(settings)], Path(settings["output_dir"])

    def sweep_argv(self, form: dict) -> tuple[list[str], Path]:
        """`moonlora sweep [GRID] --output-dir OUT [flags]`, checked as the command checks it first."""
        from moonlora.sweep import GridFile, SweepConfig, check_output, load_grid

        if not form.get("output_dir"):
            raise JobError("--output-dir is required")
        out = under_root(self.root, str(form["output_dir"]))
        grid = str(under_root(self.root, str(form["grid"]))) if form.get("grid") else None
        overrides = {name: flag_value(name, value) for name, value in form.items()
                     if name not in ("grid", "output_dir") and value not in (None, "", [])}
        check_output(SweepConfig.from_grid(load_grid(grid) if grid else GridFile(None, {}, {}), overrides,
                                           output_dir=str(out)))
        return ["sweep", *([grid] if grid else []), "--output-dir", str(out), *as_argv(overrides)], out

    def run_resume_argv(self, relative: str) -> tuple[list[str], Path]:
        """`moonlora experiment <the run's own settings as flags> --resume` for a run folder (died, interrupted):
        its experiment_config.json read back into flags, checked by the run folder's resume check, which refuses
        (naming the fields) a run whose settings no flag can give (a run made from Python, say)."""
        from moonlora.adapters import run_config
        from moonlora.train.output_dir import validate_run_dir

        run_dir = under_root(self.root, relative)
        saved = run_config(run_dir).to_dict()
        settings = {}
        for flag, paths in EXPERIMENT_FLAGS.items():
            if flag in ("resume", "overwrite"):
                continue
            value = saved
            for part in (paths[0] if isinstance(paths, tuple) else paths).split("."):
                value = value[part]
            settings[flag] = value
        settings["output_dir"], settings["resume"] = str(run_dir), True
        validate_run_dir(ExperimentConfig.from_flags(settings))
        return ["experiment", *as_argv(settings)], run_dir

    def resume_run(self, relative: str) -> dict:
        """Resume a run folder that no job of this studio holds: a new job running its resume command."""
        argv, run_dir = self.run_resume_argv(relative)
        with self.lock:
            self._poll()
            output = relative_to_root(self.root, run_dir)
            if any(j.returncode is None and j.output == output for j in self.jobs.values()):
                raise JobError(f"{output}: a job is already running there")
            self._claim()
            job = Job(id=f"job-{int(time.time() * 1000)}", kind="experiment", output=output, argv=argv, log="",
                      started_at=now_iso())
            job.log = f"{STATE_DIR}/jobs/{job.id}.log"
            self._spawn(job)
            self.jobs[job.id] = job
            self._save()
            return job.to_dict()

    # --- processes ---
    def start(self, kind: str, form: dict) -> dict:
        if kind not in ("experiment", "sweep"):
            raise JobError(f"kind {kind!r}: experiment or sweep")
        argv, out = self.experiment_argv(form) if kind == "experiment" else self.sweep_argv(form)
        with self.lock:
            self._poll()
            busy = [j for j in self.jobs.values() if j.returncode is None and j.output == relative_to_root(self.root, out)]
            if busy:
                raise JobError(f"{busy[0].output}: a job is already running there")
            self._claim()
            job = Job(id=f"job-{int(time.time() * 1000)}", kind=kind, output=relative_to_root(self.root, out) or ".",
                      argv=argv, log="", started_at=now_iso())
            job.log = f"{STATE_DIR}/jobs/{job.id}.log"
            self._spawn(job)
            self.jobs[job.id] = job
            self._save()
            return job.to_dict()

    def _spawn(self, job: Job) -> None:
        log = open(self.root / job.log, "ab")
        try:
            job.process = subprocess.Popen([sys.executable, "-m", "moonlora", "--quiet", *job.argv], cwd=self.root,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1", "MOONLORA_STUDIO_JOB": "1"})
        finally:
            log.close()
        job.pid, job.returncode, job.ended_at, job.stopped = job.process.pid, None, None, False

    def stop(self, job_id: str) -> dict:
        """SIGINT to the job's process: what Ctrl-C does in a terminal."""
        with self.lock:
            job = self._job(job_id)
            self._poll()
            if job.returncode is not None or job.process is None:
                raise JobError(f"{job_id}: not running")
            job.process.send_signal(signal.SIGINT)
            job.stopped = True
            self._save()
            return job.to_dict()

    def resume(self, job_id: str) -> dict:
        with self.lock:
            job = self._job(job_id)
            self._poll()
            if job.returncode is None and job.process is not None:
                raise JobError(f"{job_id}: still running; stop it first")
            if any(j.returncode is None and j.process is not None and j.output == job.output
                   for j in self.jobs.values()):
                raise JobError(f"{job.output}: a job is already running there")
            if "--resume" not in job.argv:
                job.argv = [*job.argv, "--resume"]
            job.resumes += 1
            self._spawn(job)
            self._save()
            return job.to_dict()

    def _job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise JobError(f"{job_id}: no such job")
        return self.jobs[job_id]

    def listing(self) -> list[dict]:
        with self.lock:
            self._poll()
            return [job.to_dict() for job in sorted(self.jobs.values(), key=lambda j: j.started_at, reverse=True)]

    def log_tail(self, output: str | None) -> str | None:
        """The end of the newest job log that wrote into `output` (a run folder relative to the root)."""
        with self.lock:
            found = [j for j in self.jobs.values() if output is not None and
                     (j.output == output or output.startswith(j.output + "/"))]
        if not found:
            return None
        path = self.root / max(found, key=lambda j: j.started_at).log
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - LOG_TAIL))
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return None

    def interrupt_all(self, wait: float = 20.0) -> None:
        """SIGINT to every running job, then wait for them (the studio is closing)."""
        with self.lock:
            running = [j for j in self.jobs.values() if j.process is not None and j.process.poll() is None]
            for job in running:
                job.process.send_signal(signal.SIGINT)
                job.stopped = True
        deadline = time.monotonic() + wait
        for job in running:
            try:
                job.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
        with self.lock:
            self._poll()
