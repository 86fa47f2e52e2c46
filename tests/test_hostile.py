"""The hostile suite: every command against crafted markers, foreign files and folders at its
output paths, links pointing outside, paths no one (not even root) can create, truncated or
foreign JSON records, manifests that are folders or devices, and bad settings.

Each case asserts one error line on stderr (no traceback), the exit code, and that every file,
folder and link in the sandbox is byte-identical before and after. Cases run in-process (fast)
with tripwires on the slow steps; a few run again as a real `python -m moonlora` process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moonlora.cli import main
from moonlora.configs import ExperimentConfig
from moonlora.outputs import MARKER, html_signature, write_json
from moonlora.runfolder import write_config_dict

CASES: dict[str, tuple] = {}  # name -> (setup, what the line says, exit code, why it is expected to fail)


def case(name: str, says: str, code: int = 2, xfail: str | None = None):
    """Register `setup(sandbox) -> argv` as a hostile case."""
    def register(setup):
        CASES[name] = (setup, says, code, xfail)
        return setup
    return register


# --- the sandbox and what it holds ------------------------------------------------------------------------------


def tree_of(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: a file's sha256 and mode, a folder, a link's target (never followed)."""
    tree = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[key] = ("folder", path.stat().st_mode)
            else:
                tree[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return tree


def tone(path: Path) -> Path:
    import numpy as np
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.sin(np.arange(8000) / 8)).astype(np.float32), 16000)
    return path


@pytest.fixture()
def sandbox(tmp_path) -> Path:
    """A manifest of three clips, a user's own file, and a parent folder for outputs."""
    rows = [{"audio_filepath": str(tone(tmp_path / "clips" / f"c{i}.wav")), "text": f"clip {i}"} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "users_file.txt").write_text("the user's own file\n")
    (tmp_path / "parent").mkdir()
    return tmp_path


def manifest(sandbox: Path) -> str:
    return str(sandbox / "m.jsonl")


def signed_marker(folder: Path, kind: str, entries, signed: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"written_by": f"written by moonlora {kind}"} if signed else {}
    (folder / MARKER).write_text(json.dumps({**marker, "kind": kind, "entries": entries}, indent=2))
    return folder


def foreign_folder(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*names, "keep.txt"):
        (folder / name).write_text("not moonlora's\n")
    return folder


def a_file(sandbox: Path) -> Path:
    (sandbox / "a_file").write_text("a regular file\n")
    return sandbox / "a_file"


def run_folder(sandbox: Path, record_text: str | None = None) -> Path:
    """A run folder with its config and a signed record (or `record_text` as its record)."""
    run = sandbox / "runs" / "run-a"
    run.mkdir(parents=True)
    write_config_dict(run, ExperimentConfig(output_dir=str(run), dataset_path=manifest(sandbox),
                                            manifest_path=manifest(sandbox)).to_dict())
    if record_text is None:
        write_json(run / "experiment_metrics.json", {"status": "success"}, command="experiment")
    else:
        (run / "experiment_metrics.json").write_text(record_text)
    return run


def experiment_argv(sandbox: Path, out, *extra: str) -> list[str]:
    return ["experiment", "--output-dir", str(out), "--dataset-path", manifest(sandbox), "--manifest-path",
            manifest(sandbox), "--device", "cpu", *extra]


def sweep_argv(sandbox: Path, out, *extra: str) -> list[str]:
    return ["sweep", "--output-dir", str(out), "--dataset-path", manifest(sandbox), "--manifest-path",
            manifest(sandbox), *extra]


def transcribe_argv(sandbox: Path, out, *extra: str) -> list[str]:
    return ["transcribe", "--manifest", manifest(sandbox), "--device", "cpu", "--output-dir", str(out), *extra]


UNCREATABLE = "/proc/moonlora-hostile/out"  # root cannot create it either


# --- crafted markers -----------------------------------------------------------------------------------------------


@case("synth: unsigned marker listing '..'", "no moonlora marker")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "synth", [".."], signed=False)
    return ["synth", "--n", "4", "--out", str(out), "--overwrite"]


@case("synth: signed marker listing '..'", "'..', not a name moonlora synth writes")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "synth", [".."])
    return ["synth", "--n", "4", "--out", str(out), "--overwrite"]


@case("augment: marker listing an absolute path", "not a name moonlora augment writes")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "augment", [str(sandbox / "users_file.txt")])
    return ["augment", "--manifest", manifest(sandbox), "--snr-db", "10", "--out", str(out), "--overwrite"]


@case("transcribe: marker listing an empty name", "not a name moonlora transcribe writes")
def _(sandbox):
    out = foreign_folder(signed_marker(sandbox / "parent" / "out", "transcribe", ["", "summary.json"]), "summary.json")
    return transcribe_argv(sandbox, out, "--overwrite")


@case("transcribe: a synth marker", "a moonlora synth output")
def _(sandbox):
    out = foreign_folder(signed_marker(sandbox / "parent" / "out", "synth", ["clips"]), "summary.json")
    return transcribe_argv(sandbox, out, "--overwrite")


@case("demo: marker listing '.'", "not a name moonlora demo writes")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "demo", ["."])
    return ["demo", "--output-dir", str(out), "--overwrite"]


@case("experiment: marker listing a file beside the run", "not a name moonlora run writes")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "run", ["../../users_file.txt"])
    return experiment_argv(sandbox, out, "--overwrite")


@case("sweep: marker listing the user's notes", "not a name moonlora sweep writes")
def _(sandbox):
    out = foreign_folder(signed_marker(sandbox / "parent" / "out", "sweep", ["notes.txt"]), "notes.txt")
    return sweep_argv(sandbox, out, "--overwrite")


@case("export: marker that is a link to a real marker", "no moonlora marker")
def _(sandbox):
    real = signed_marker(sandbox / "parent" / "real", "export", ["config.json"])
    out = foreign_folder(sandbox / "parent" / "out", "config.json")
    (out / MARKER).symlink_to(real / MARKER)
    return ["export", str(sandbox / "no-run"), "--out", str(out), "--overwrite"]


@case("import: signed marker listing '..'", "'..', not a name moonlora import writes")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "import", ["..", "clips"])
    return ["import", manifest(sandbox), "--out", str(out), "--overwrite"]


@case("import: marker listing an absolute manifest path", "not a name moonlora import writes")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "import", [str(sandbox / "users_file.jsonl")])
    return ["import", manifest(sandbox), "--out", str(out), "--overwrite"]


@case("import: a listed entry links outside", "clips is a link")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "import", ["clips", "m.jsonl"])
    (out / "clips").symlink_to(sandbox / "clips")
    return ["import", manifest(sandbox), "--out", str(out), "--overwrite"]


@case("import: a foreign folder", "already holds")
def _(sandbox):
    return ["import", manifest(sandbox), "--out", str(foreign_folder(sandbox / "parent" / "out"))]


@case("import: a foreign folder with --overwrite", "no moonlora marker")
def _(sandbox):
    out = foreign_folder(sandbox / "parent" / "out", "m.jsonl")
    return ["import", manifest(sandbox), "--out", str(out), "--overwrite"]


@case("import: --out under /proc", "cannot create")
def _(sandbox):
    return ["import", manifest(sandbox), "--out", UNCREATABLE]


@case("import: --out inside the source folder", "inside the source")
def _(sandbox):
    return ["import", str(sandbox / "clips"), "--format", "textfolder", "--out", str(sandbox / "clips" / "out")]


@case("import: a SOURCE that is not there", "not found")
def _(sandbox):
    return ["import", str(sandbox / "nowhere" / "corpus"), "--out", str(sandbox / "parent" / "out")]


@case("synth: truncated marker", "no moonlora marker")
def _(sandbox):
    out = sandbox / "parent" / "out"
    out.mkdir()
    (out / MARKER).write_text('{"written_by": "written by moonlora synth", "kind": "synth", "entr')
    return ["synth", "--n", "4", "--out", str(out), "--overwrite"]


@case("augment: marker whose entries are not a list", "no moonlora marker")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "augment", "..")
    return ["augment", "--manifest", manifest(sandbox), "--snr-db", "10", "--out", str(out), "--overwrite"]


@case("synth: a listed entry links outside", "clips is a link")
def _(sandbox):
    out = signed_marker(sandbox / "parent" / "out", "synth", ["clips", "train.jsonl"])
    (out / "clips").symlink_to(sandbox / "clips")
    return ["synth", "--n", "4", "--out", str(out), "--overwrite"]


@case("transcribe: a present entry its marker does not list", "which its marker")
def _(sandbox):
    out = foreign_folder(signed_marker(sandbox / "parent" / "out", "transcribe", ["summary.json"]),
                         "summary.json", "transcripts.jsonl")
    return transcribe_argv(sandbox, out, "--overwrite")


# --- foreign files and folders at the output path --------------------------------------------------------------


@case("transcribe: --output-dir is a file", "is a file")
def _(sandbox):
    return transcribe_argv(sandbox, a_file(sandbox))


@case("transcribe: --output-dir is a link to a file", "is a file")
def _(sandbox):
    (sandbox / "link").symlink_to(a_file(sandbox))
    return transcribe_argv(sandbox, sandbox / "link")


@case("synth: --out is a file", "is a file")
def _(sandbox):
    return ["synth", "--n", "4", "--out", str(a_file(sandbox))]


@case("augment: a foreign folder with --overwrite", "no moonlora marker")
def _(sandbox):
    out = foreign_folder(sandbox / "parent" / "out", "manifest.jsonl")
    return ["augment", "--manifest", manifest(sandbox), "--snr-db", "10", "--out", str(out), "--overwrite"]


@case("demo: a foreign folder", "already holds")
def _(sandbox):
    return ["demo", "--output-dir", str(foreign_folder(sandbox / "parent" / "out", "runs"))]


@case("experiment: a foreign folder", "already holds")
def _(sandbox):
    return experiment_argv(sandbox, foreign_folder(sandbox / "parent" / "out"))


@case("experiment: --output-dir is a file", "is a file")
def _(sandbox):
    return experiment_argv(sandbox, a_file(sandbox))


@case("sweep: a foreign folder with --overwrite", "no moonlora marker")
def _(sandbox):
    return sweep_argv(sandbox, foreign_folder(sandbox / "parent" / "out", "sweep.json"), "--overwrite")


@case("export: a foreign folder with --overwrite", "no moonlora marker")
def _(sandbox):
    out = foreign_folder(sandbox / "parent" / "out", "config.json")
    return ["export", str(sandbox / "no-run"), "--out", str(out), "--overwrite"]


@case("export: --out is a file", "is a file")
def _(sandbox):
    return ["export", str(sandbox / "no-run"), "--out", str(a_file(sandbox))]


@case("decide: --json is a foreign file", "not written by moonlora")
def _(sandbox):
    return ["decide", str(run_folder(sandbox)), "--json", str(sandbox / "users_file.txt"), "--overwrite"]


@case("decide: --json is the run's own record", "written by moonlora experiment, not by decide")
def _(sandbox):
    run = run_folder(sandbox)
    return ["decide", str(run), "--json", str(run / "experiment_metrics.json"), "--overwrite"]


@case("decide: --json is a link to a decision outside", "is a link")
def _(sandbox):
    write_json(sandbox / "parent" / "decision.json", {"passed": True}, command="decide")
    (sandbox / "link.json").symlink_to(sandbox / "parent" / "decision.json")
    return ["decide", str(run_folder(sandbox)), "--json", str(sandbox / "link.json"), "--overwrite"]


@case("compare: --json was written by decide", "not by compare")
def _(sandbox):
    write_json(sandbox / "d.json", {"passed": True}, command="decide")
    return ["compare", str(sandbox / "a"), str(sandbox / "b"), "--json", str(sandbox / "d.json"), "--overwrite"]


@case("report: --out is a sweep record", "not by report")
def _(sandbox):
    runs = run_folder(sandbox).parent
    write_json(runs / "sweep.json", {"runs": []}, command="sweep")
    return ["report", str(runs), "--out", str(runs / "sweep.json"), "--overwrite"]


@case("report: --html is a foreign page", "not written by moonlora")
def _(sandbox):
    runs = run_folder(sandbox).parent
    (sandbox / "page.html").write_text("<html>theirs</html>\n")
    return ["report", str(runs), "--out", str(sandbox / "new.md"), "--html", str(sandbox / "page.html"),
            "--overwrite"]


@case("report: the default --out already exists", "training_report.md")
def _(sandbox):
    runs = run_folder(sandbox).parent
    (runs / "training_report.md").write_text(html_signature("report") + "# earlier\n")
    return ["report", str(runs)]


@case("diagnose: --json is a report's Markdown", "not by diagnose")
def _(sandbox):
    (sandbox / "r.md").write_text(html_signature("report") + "# a report\n")
    return ["diagnose", "--manifests", manifest(sandbox), "--max-seconds", "8", "--json", str(sandbox / "r.md"),
            "--overwrite"]


@case("diagnose: --json is a folder", "is a folder")
def _(sandbox):
    return ["diagnose", "--manifests", manifest(sandbox), "--max-seconds", "8", "--json", str(sandbox / "parent")]


@case("diagnose: --json is a device", "not written by moonlora")
def _(sandbox):
    return ["diagnose", "--manifests", manifest(sandbox), "--max-seconds", "8", "--json", "/dev/null", "--overwrite"]


# --- paths no one can create, root included ------------------------------------------------------------------


@case("transcribe: --output-dir under /proc", "cannot create")
def _(sandbox):
    return transcribe_argv(sandbox, UNCREATABLE)


@case("synth: --out under /proc", "cannot create")
def _(sandbox):
    return ["synth", "--n", "4", "--out", UNCREATABLE]


@case("augment: --out under a file", "is a file, not a folder")
def _(sandbox):
    return ["augment", "--manifest", manifest(sandbox), "--snr-db", "10", "--out", str(a_file(sandbox) / "out")]


@case("demo: --output-dir under /proc", "cannot create")
def _(sandbox):
    return ["demo", "--output-dir", UNCREATABLE]


@case("experiment: --output-dir under a file", "is a file, not a folder")
def _(sandbox):
    return experiment_argv(sandbox, a_file(sandbox) / "run")


@case("transcribe: --output-dir is /proc", "not writable")
def _(sandbox):
    return transcribe_argv(sandbox, "/proc")


@case("sweep: --output-dir under /proc", "cannot create")
def _(sandbox):
    return sweep_argv(sandbox, UNCREATABLE)


@case("export: --out under /proc", "cannot create")
def _(sandbox):
    return ["export", str(sandbox / "no-run"), "--out", UNCREATABLE]


@case("decide: --json under /proc", "cannot create")
def _(sandbox):
    return ["decide", str(run_folder(sandbox)), "--json", f"{UNCREATABLE}/d.json"]


@case("compare: --json under a file", "is a file, not a folder")
def _(sandbox):
    return ["compare", str(sandbox / "a"), str(sandbox / "b"), "--json", str(a_file(sandbox) / "c.json")]


@case("report: --out under /proc", "cannot create")
def _(sandbox):
    return ["report", str(run_folder(sandbox).parent), "--out", f"{UNCREATABLE}/r.md"]


@case("diagnose: --json in /proc itself", "not writable")
def _(sandbox):
    return ["diagnose", "--manifests", manifest(sandbox), "--max-seconds", "8", "--json", "/proc/moonlora.json"]


# --- truncated or foreign JSON records ---------------------------------------------------------------------------


@case("decide: a truncated run record", "experiment_metrics.json")
def _(sandbox):
    return ["decide", str(run_folder(sandbox, '{"schema_version": 2, "run_id": "run-a", "stat'))]


@case("decide: a foreign JSON record", "experiment_metrics.json")
def _(sandbox):
    return ["decide", str(run_folder(sandbox, '["not", "a", "run"]\n'))]


@case("experiment --resume: a truncated record", "--resume")
def _(sandbox):
    run = run_folder(sandbox, '{"schema_version": 2, "run_id": "run-a", "stat')
    return experiment_argv(sandbox, run, "--resume")


@case("sweep --resume: a truncated sweep record", "sweep.json")
def _(sandbox):
    out = sandbox / "parent" / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text('{"written_by": "written by moonlora sweep", "ba')
    return sweep_argv(sandbox, out, "--resume")


@case("export: a run with a truncated record", "experiment_metrics.json")
def _(sandbox):
    run = run_folder(sandbox, '{"schema_version": 2, "run_id": "run-a", "stat')
    (run / "adapter").mkdir()
    return ["export", str(run), "--out", str(sandbox / "parent" / "export")]


@case("compare: a truncated summary", "summary.json")
def _(sandbox):
    for name in ("a", "b"):
        (sandbox / name).mkdir()
        (sandbox / name / "summary.json").write_text('{"wer": 0.1, "con')
        (sandbox / name / "transcripts.jsonl").write_text("")
    return ["compare", str(sandbox / "a"), str(sandbox / "b")]


@case("transcribe: a run adapter beside a foreign experiment_config.json", "experiment_config.json")
def _(sandbox):
    run = run_folder(sandbox)
    (run / "adapter").mkdir()
    (run / "experiment_config.json").write_text('{"model": 5, "unknown_setting": true}\n')
    return transcribe_argv(sandbox, sandbox / "parent" / "out", "--adapter", str(run / "adapter"))


# --- manifests that are folders or devices -----------------------------------------------------------------------


@case("transcribe: --manifest is a folder", "clips")
def _(sandbox):
    return ["transcribe", "--manifest", str(sandbox / "clips"), "--device", "cpu", "--output-dir",
            str(sandbox / "parent" / "out")]


@case("transcribe: --manifest is /dev/null", "/dev/null")
def _(sandbox):
    return ["transcribe", "--manifest", "/dev/null", "--device", "cpu", "--output-dir",
            str(sandbox / "parent" / "out")]


@case("augment: --manifest is a folder", "clips")
def _(sandbox):
    return ["augment", "--manifest", str(sandbox / "clips"), "--snr-db", "10", "--out", str(sandbox / "parent" / "out")]


@case("experiment: --dataset-path is a folder", "clips")
def _(sandbox):
    return ["experiment", "--output-dir", str(sandbox / "parent" / "run"), "--dataset-path", str(sandbox / "clips"),
            "--manifest-path", manifest(sandbox), "--device", "cpu"]


# --- bad settings (validated before any work) -------------------------------------------------------------------------


@case("demo: --max-steps 0", "--max-steps")
def _(sandbox):
    return ["demo", "--output-dir", str(sandbox / "parent" / "demo"), "--max-steps", "0"]


@case("demo: a repeated seed", "--seeds")
def _(sandbox):
    return ["demo", "--output-dir", str(sandbox / "parent" / "demo"), "--seeds", "1", "1"]


@case("experiment: --canary-margin -1", "--canary-margin")
def _(sandbox):
    return experiment_argv(sandbox, sandbox / "parent" / "run", "--canary-margin", "-1", "--min-val-clips", "1", "--allow-leakage")


@case("experiment: --export ort with --num-beams 2", "--num-beams")
def _(sandbox):
    return experiment_argv(sandbox, sandbox / "parent" / "run", "--export", "ort", "--num-beams", "2", "--min-val-clips", "1", "--allow-leakage")


# --- the runner -----------------------------------------------------------------------------------------------------


def tripwire(*args, **kwargs):
    raise AssertionError("went on to slow work (a model, synthesis or audio) instead of refusing first")


@pytest.fixture()
def no_slow_work(monkeypatch):
    import moonlora.data.augment
    import moonlora.demo
    import moonlora.model.loading
    import moonlora.train.experiment  # imported before patching: its own name for load_model must not stay a tripwire
    from moonlora.data.synth import espeak

    monkeypatch.setattr(moonlora.model.loading, "load_model", tripwire)
    monkeypatch.setattr(moonlora.train.experiment, "load_model", tripwire)
    monkeypatch.setattr(espeak, "synthesize", tripwire)
    monkeypatch.setattr(moonlora.data.augment, "load_audio", tripwire)
    monkeypatch.setattr(moonlora.demo, "build_domain", tripwire)


def assert_one_line_error(err: str, says: str) -> None:
    line = err.strip()
    assert "Traceback" not in err and line.count("\n") == 0, err
    assert line.startswith("moonlora: error:") and says in line, line


def params():
    for name, (_, _, _, why) in CASES.items():
        yield pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=why)] if why else [])


# --- the studio ----------------------------------------------------------------------------------------------------


@case("studio: --root that does not exist", "no such folder")
def _(sandbox):
    return ["studio", "--root", str(sandbox / "nowhere"), "--port", "0"]


@case("studio: --root is a file", "no such folder")
def _(sandbox):
    return ["studio", "--root", str(sandbox / "users_file.txt"), "--port", "0"]


@case("studio: --port out of range", "--port must be 0..65535")
def _(sandbox):
    return ["studio", "--root", str(sandbox), "--port", "70000"]


@pytest.mark.parametrize("name", params())
def test_hostile_case(name, sandbox, capsys, no_slow_work):
    setup, says, code, _ = CASES[name]
    argv = setup(sandbox)
    before = tree_of(sandbox)
    exit_code = main(argv)
    err = capsys.readouterr().err
    assert exit_code == code, err
    assert_one_line_error(err, says)
    assert tree_of(sandbox) == before


def test_the_suite_covers_every_command_with_forty_cases():
    from moonlora.cli import _subcommands, build_parser

    commands = {name for name, _, _ in _subcommands(build_parser())}
    covered = {name.split(":")[0].split()[0] for name in CASES}
    assert len(CASES) >= 40 and commands <= covered, commands - covered


REAL_PROCESS = ["synth: signed marker listing '..'", "decide: --json is the run's own record",
                "transcribe: --output-dir under /proc", "experiment: a foreign folder"]


@pytest.mark.parametrize("name", REAL_PROCESS)
def test_hostile_case_in_a_real_process(name, sandbox):
    """The same refusal from `python -m moonlora`: exit code and one line, nothing changed."""
    setup, says, code, _ = CASES[name]
    argv = setup(sandbox)
    before = tree_of(sandbox)
    done = subprocess.run([sys.executable, "-m", "moonlora", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert_one_line_error(done.stderr, says)
    assert tree_of(sandbox) == before
