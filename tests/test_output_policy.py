"""The one output policy through every command that writes.

Each command refuses an output that holds earlier results (exit code 2, one line naming the
flag) before any slow work, and `--overwrite` on a folder or file without moonlora's marker or
signature is refused too, deleting nothing. The slow step of each command is replaced by a
tripwire: reaching it fails the test.
"""

import json

import pytest

from conftest import write_tone
from moonlora.cli import main
from moonlora.outputs import MARKER, claim_output_dir, write_json


def tripwire(*args, **kwargs):
    raise AssertionError("the command went on to slow work instead of refusing its output first")


def assert_refused(code: int, capsys, flag: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip()
    assert line.count("\n") == 0 and line.startswith("moonlora: error:") and flag in line and "Traceback" not in line
    return line


def foreign_folder(folder, *names):
    """A folder someone else filled: the given entries, no moonlora marker."""
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("not moonlora's\n")
    (folder / "keep.txt").write_text("mine\n")
    return folder


def assert_untouched(folder, *names):
    assert not (folder / MARKER).exists()
    for name in (*names, "keep.txt"):
        assert (folder / name).read_text() == ("mine\n" if name == "keep.txt" else "not moonlora's\n")


FOREIGN = '{"theirs": true}\n'


def json_outputs(tmp_path, command):
    """A JSON file moonlora's `command` wrote (signed) and one somebody else wrote."""
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    write_json(ours, {"earlier": True}, command=command)
    theirs.write_text(FOREIGN)
    return ours, theirs


@pytest.fixture()
def no_model(monkeypatch):
    import moonlora.model.loading

    monkeypatch.setattr(moonlora.model.loading, "load_model", tripwire)


def test_transcribe(tone_manifest, tmp_path, capsys, no_model):
    base = ["transcribe", "--manifest", str(tone_manifest), "--device", "cpu", "--output-dir"]
    ours = tmp_path / "ours"
    claim_output_dir(ours, "--output-dir", "transcribe", ["summary.json"], overwrite=False)
    (ours / "summary.json").write_text("{}")
    line = assert_refused(main([*base, str(ours)]), capsys, "--output-dir")
    assert "summary.json" in line and "--overwrite" in line
    theirs = foreign_folder(tmp_path / "theirs", "summary.json", "transcripts.jsonl")
    assert_refused(main([*base, str(theirs), "--overwrite"]), capsys, "--output-dir")
    assert_untouched(theirs, "summary.json", "transcripts.jsonl")
    (tmp_path / "file").write_text("x")
    assert "is a file" in assert_refused(main([*base, str(tmp_path / "file")]), capsys, "--output-dir")


def test_synth(tmp_path, capsys, monkeypatch):
    from moonlora.data.synth import espeak

    monkeypatch.setattr(espeak, "synthesize", tripwire)
    ours = tmp_path / "ours"
    claim_output_dir(ours, "--out", "synth", ["clips", "train.jsonl"], overwrite=False)
    (ours / "train.jsonl").write_text("")
    assert_refused(main(["synth", "--n", "4", "--out", str(ours)]), capsys, "--out")
    theirs = foreign_folder(tmp_path / "theirs", "train.jsonl", "test.jsonl")
    (theirs / "clips").mkdir()
    (theirs / "clips" / "original.wav").write_bytes(b"RIFF")
    assert_refused(main(["synth", "--n", "4", "--out", str(theirs), "--overwrite"]), capsys, "--out")
    assert_untouched(theirs, "train.jsonl", "test.jsonl")
    assert (theirs / "clips" / "original.wav").read_bytes() == b"RIFF"


def test_augment(tone_manifest, tmp_path, capsys, monkeypatch):
    import moonlora.data.augment

    monkeypatch.setattr(moonlora.data.augment, "load_audio", tripwire)
    base = ["augment", "--manifest", str(tone_manifest), "--snr-db", "10", "--out"]
    ours = tmp_path / "ours"
    claim_output_dir(ours, "--out", "augment", ["clips", "manifest.jsonl"], overwrite=False)
    (ours / "manifest.jsonl").write_text("")
    assert_refused(main([*base, str(ours)]), capsys, "--out")
    theirs = foreign_folder(tmp_path / "theirs", "manifest.jsonl", "augment_config.json")
    assert_refused(main([*base, str(theirs), "--overwrite"]), capsys, "--out")
    assert_untouched(theirs, "manifest.jsonl", "augment_config.json")


def test_augment_overwrite_never_removes_originals_inside_its_clips(tmp_path, capsys):
    ours = tmp_path / "aug"
    claim_output_dir(ours, "--out", "augment", ["clips", "manifest.jsonl"], overwrite=False)
    (ours / "clips" / "sub").mkdir(parents=True)
    original = write_tone(ours / "clips" / "sub" / "o.wav", 1.0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(original), "text": "an original"}) + "\n")
    code = main(["augment", "--manifest", str(manifest), "--out", str(ours), "--speed", "1.1", "--overwrite"])
    assert "original audio" in assert_refused(code, capsys, "--out")
    assert original.is_file()


def test_diagnose(tone_manifest, tmp_path, capsys, monkeypatch):
    import moonlora.data.diagnose

    base = ["diagnose", "--manifests", str(tone_manifest), "--max-seconds", "8", "--json"]
    ours, theirs = json_outputs(tmp_path, "diagnose")
    with monkeypatch.context() as patch:
        patch.setattr(moonlora.data.diagnose, "diagnose", tripwire)
        assert "--overwrite" in assert_refused(main([*base, str(ours)]), capsys, "--json")
        assert "not written by moonlora" in assert_refused(main([*base, str(theirs), "--overwrite"]), capsys, "--json")
    assert theirs.read_text() == FOREIGN
    assert main([*base, str(ours), "--overwrite"]) == 0  # moonlora's own file is replaced
    assert "earlier" not in json.loads(ours.read_text())


def dummy_runs(folder):
    (folder / "run-a").mkdir(parents=True)
    (folder / "run-a" / "experiment_metrics.json").write_text("{}")
    return folder


def test_decide(tmp_path, capsys, monkeypatch):
    import moonlora.verdict.decide

    monkeypatch.setattr(moonlora.verdict.decide, "decide", tripwire)
    run = dummy_runs(tmp_path / "runs") / "run-a"
    ours, theirs = json_outputs(tmp_path, "decide")
    assert_refused(main(["decide", str(run), "--json", str(ours)]), capsys, "--json")
    assert_refused(main(["decide", str(run), "--json", str(theirs), "--overwrite"]), capsys, "--json")
    assert theirs.read_text() == FOREIGN


def test_report(tmp_path, capsys, monkeypatch):
    import moonlora.verdict.report

    monkeypatch.setattr(moonlora.verdict.report, "discover_runs", tripwire)
    runs = dummy_runs(tmp_path / "runs")
    (runs / "training_report.md").write_text("an earlier report\n")  # the default --out
    line = assert_refused(main(["report", str(runs)]), capsys, "--out")
    assert "training_report.md" in line
    theirs = tmp_path / "theirs.html"
    theirs.write_text("<html>theirs</html>\n")
    assert_refused(main(["report", str(runs), "--out", str(tmp_path / "new.md"), "--html", str(theirs),
                         "--overwrite"]), capsys, "--html")
    assert theirs.read_text() == "<html>theirs</html>\n" and not (tmp_path / "new.md").exists()


def test_demo(tmp_path, capsys, monkeypatch, no_model):
    import moonlora.demo

    monkeypatch.setattr(moonlora.demo, "build_domain", tripwire)
    ours = tmp_path / "ours"
    claim_output_dir(ours, "--output-dir", "demo", ["runs"], overwrite=False, require_empty=True)
    assert_refused(main(["demo", "--output-dir", str(ours)]), capsys, "--output-dir")
    theirs = foreign_folder(tmp_path / "theirs", "runs")
    assert_refused(main(["demo", "--output-dir", str(theirs)]), capsys, "--output-dir")
    assert_refused(main(["demo", "--output-dir", str(theirs), "--overwrite"]), capsys, "--output-dir")
    assert_untouched(theirs, "runs")


# --- experiment, sweep and export refuse their output before the model stack loads ---------------------------------

HEAVY = ("torch", "transformers", "peft", "accelerate")


def refused_in_a_fresh_interpreter(argv: list[str]) -> tuple[int, str, list[str]]:
    """Exit code, stderr and the heavy modules loaded when `moonlora ARGV` ran in a new Python."""
    import subprocess
    import sys

    code = ("import contextlib, io, json, sys\nfrom moonlora.cli import main\nerr = io.StringIO()\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
            f"    code = main({argv!r})\n"
            f"print(json.dumps([code, err.getvalue(), [m for m in {HEAVY!r} if m in sys.modules]]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("command", ["experiment", "sweep", "export"])
def test_model_commands_refuse_their_output_before_the_model_stack_loads(command, tone_manifest, tmp_path):
    theirs = foreign_folder(tmp_path / "theirs", "notes.md")
    argv = {"experiment": ["experiment", "--output-dir", str(theirs), "--dataset-path", str(tone_manifest),
                           "--manifest-path", str(tone_manifest), "--overwrite"],
            "sweep": ["sweep", "--output-dir", str(theirs), "--dataset-path", str(tone_manifest),
                      "--manifest-path", str(tone_manifest), "--overwrite"],
            "export": ["export", str(tmp_path / "no-such-run"), "--out", str(theirs), "--overwrite"]}[command]
    code, err, heavy = refused_in_a_fresh_interpreter(argv)
    assert code == 2 and err.count("\n") == 1 and "no moonlora marker" in err, err
    assert heavy == []
    assert_untouched(theirs, "notes.md")


# --- single files: only the command that wrote one replaces it ---------------------------------------------------


def test_decide_never_replaces_the_runs_own_record(tmp_path, capsys, monkeypatch):
    """`decide RUN --json RUN/experiment_metrics.json --overwrite` once replaced the run's record."""
    import moonlora.verdict.decide

    monkeypatch.setattr(moonlora.verdict.decide, "decide", tripwire)
    run = tmp_path / "run"
    write_json(run / "experiment_metrics.json", {"status": "success"}, command="experiment")
    before = (run / "experiment_metrics.json").read_bytes()
    line = assert_refused(main(["decide", str(run), "--json", str(run / "experiment_metrics.json"), "--overwrite"]),
                          capsys, "--json")
    assert "moonlora experiment, not by decide" in line
    assert (run / "experiment_metrics.json").read_bytes() == before


def test_report_never_replaces_a_sweep_record(tmp_path, capsys, monkeypatch):
    import moonlora.verdict.report

    monkeypatch.setattr(moonlora.verdict.report, "discover_runs", tripwire)
    sweep = dummy_runs(tmp_path / "sweep")
    write_json(sweep / "sweep.json", {"runs": []}, command="sweep")
    before = (sweep / "sweep.json").read_bytes()
    assert_refused(main(["report", str(sweep), "--out", str(sweep / "sweep.json"), "--overwrite"]), capsys, "--out")
    assert (sweep / "sweep.json").read_bytes() == before


# --- an output path root cannot create is refused before any work -------------------------------------------------


def test_transcribe_refuses_an_uncreatable_output_before_decoding(tone_manifest, capsys, no_model):
    """As root, `--output-dir /proc/nope/out` passed the access check and failed after decoding."""
    line = assert_refused(main(["transcribe", "--manifest", str(tone_manifest), "--device", "cpu",
                                "--output-dir", "/proc/moonlora-nope/out"]), capsys, "--output-dir")
    assert "cannot create" in line


def test_synth_overwrite_with_a_crafted_marker_deletes_nothing(tmp_path, capsys, monkeypatch):
    """The issue's trial: a marker listing '..' once removed the parent folder and the user's files."""
    from moonlora.data.synth import espeak

    monkeypatch.setattr(espeak, "synthesize", tripwire)
    out = tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    (tmp_path / "parent" / "users_file.txt").write_text("keep me")
    (out / MARKER).write_text(json.dumps({"kind": "synth", "entries": [".."]}))
    assert_refused(main(["synth", "--n", "4", "--out", str(out), "--overwrite"]), capsys, "--out")
    assert (tmp_path / "parent" / "users_file.txt").read_text() == "keep me" and (out / MARKER).is_file()
