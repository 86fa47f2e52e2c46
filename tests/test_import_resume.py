"""`moonlora import` from the command line: killed mid-way and rerun gives the same manifest, a rerun changes
nothing, and the output policy holds (no writing into a folder moonlora did not create)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import import_corpora as corpora
from moonlora.cli import main
from moonlora.data.importers.run import ImportConfig, run_import
from moonlora.outputs import MARKER

ROOT = Path(__file__).resolve().parents[1]

SLOW_IMPORT = """
import sys, time
from moonlora.data.importers import run
write_clip, written = run.write_clip, []
def slow(path, samples):
    write_clip(path, samples)
    written.append(path)
    print("wrote", path.name, flush=True)
    if len(written) == 2:
        time.sleep(120)  # killed here
run.write_clip = slow
from moonlora.cli import main
sys.exit(main(["--quiet", "import", sys.argv[1], "--out", sys.argv[2]]))
"""


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moonlora", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_killed_import_resumes_to_the_same_manifest(tmp_path):
    source = corpora.librispeech(tmp_path / "ls")
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", SLOW_IMPORT, str(source), str(out)], stdout=subprocess.PIPE,
                               text=True, cwd=ROOT)
    lines = [process.stdout.readline(), process.stdout.readline()]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert all(line.startswith("wrote") for line in lines), lines
    assert len(list((out / "clips" / "test-clean").glob("*.wav"))) == 2 and not (out / "test-clean.jsonl").exists()
    (out / "clips" / "test-clean" / ".84-1000-0001.wav.999.tmp").write_bytes(b"half a clip")

    resumed = run_import(ImportConfig(source=str(source), out_dir=str(out)), progress=False)
    assert resumed.reused == 2 and resumed.clips == 4
    assert not list(out.rglob("*.tmp"))
    fresh = run_import(ImportConfig(source=str(source), out_dir=str(tmp_path / "fresh")), progress=False)
    assert fresh.reused == 0
    manifest = (out / "test-clean.jsonl").read_bytes()
    assert manifest == (tmp_path / "fresh" / "test-clean.jsonl").read_bytes()
    for clip in (tmp_path / "fresh" / "clips" / "test-clean").iterdir():
        assert clip.read_bytes() == (out / "clips" / "test-clean" / clip.name).read_bytes()

    again = run_import(ImportConfig(source=str(source), out_dir=str(out)), progress=False)  # idempotent
    assert again.reused == 4 and (out / "test-clean.jsonl").read_bytes() == manifest


def test_cli_end_to_end_then_diagnose_reads_the_manifest(tmp_path):
    source = corpora.kaldi(tmp_path / "kaldi")[0]
    done = cli("import", str(source), "--out", str(tmp_path / "out"), "--max-seconds", "2.5")
    assert done.returncode == 0, done.stderr
    assert "imported kaldi" in done.stdout and "| train |" in done.stdout and "unsupported 1" in done.stdout
    assert "import:" in done.stderr  # the progress lines (not a terminal)
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["clips"] == 2 and report["skipped_by_kind"] == {"too_long": 1, "unsupported": 1}
    diagnosed = cli("diagnose", "--manifests", str(tmp_path / "out" / "train.jsonl"), "--max-seconds", "30")
    assert diagnosed.returncode == 0, diagnosed.stderr
    rerun = cli("import", str(source), "--out", str(tmp_path / "out"), "--max-seconds", "2.5")
    assert rerun.returncode == 0 and "2 clips reused" in rerun.stdout
    other = cli("import", str(source), "--out", str(tmp_path / "out"))
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "holds an import of another source or other settings; pass --overwrite" in other.stderr
    bad = cli("import", str(tmp_path / "nowhere" / "x"), "--out", str(tmp_path / "o2"))
    assert bad.returncode == 2 and bad.stderr.startswith("moonlora: error:") and bad.stderr.count("\n") == 1


def test_output_policy(tmp_path):
    source = corpora.common_voice(tmp_path / "cv")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my own")
    for overwrite in (False, True):
        with pytest.raises(Exception, match="--out .*mine"):
            run_import(ImportConfig(source=str(source), out_dir=str(foreign), overwrite=overwrite), progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    synth_like = tmp_path / "synth"
    synth_like.mkdir()
    from moonlora.outputs import write_json
    write_json(synth_like / MARKER, {"kind": "synth", "entries": ["clips"]}, command="synth")
    with pytest.raises(Exception, match="a moonlora synth output"):
        run_import(ImportConfig(source=str(source), out_dir=str(synth_like), overwrite=True), progress=False)

    out = tmp_path / "out"
    run_import(ImportConfig(source=str(source), out_dir=str(out)), progress=False)
    (out / "notes.txt").write_text("kept")
    replaced = run_import(ImportConfig(source=str(corpora.text_folder(tmp_path / "recordings")), out_dir=str(out),
                                       overwrite=True), progress=False)
    assert list(replaced.splits) == ["recordings"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "clips", "import_config.json", "import_report.json", "notes.txt", "recordings.jsonl"])
    assert [p.name for p in (out / "clips").iterdir()] == ["recordings"]


@pytest.mark.parametrize("failure", ["disk full", "ctrl-c"])
def test_a_full_disk_or_ctrl_c_is_one_line_and_the_import_continues(tmp_path, monkeypatch, capsys, failure):
    import errno

    from moonlora.data.importers import run

    source = corpora.audio_folder(tmp_path / "af")
    write, calls = run.sf.write, []

    def failing(path, *args, **kwargs):  # soundfile's write, as the import calls it for each clip
        calls.append(path)
        if len(calls) == 2:
            if failure == "ctrl-c":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, *args, **kwargs)

    monkeypatch.setattr(run.sf, "write", failing)
    code = main(["--quiet", "import", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if failure == "ctrl-c":
        assert code == 130 and "rerun the same command to continue" in err
    else:
        assert code == 2 and "disk full while writing" in err
    monkeypatch.setattr(run.sf, "write", write)
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert main(["--quiet", "import", str(source), "--out", str(tmp_path / "out")]) == 0
    assert "1 clips reused" in capsys.readouterr().out


def test_a_csv_with_a_byte_order_mark(tmp_path):
    source = corpora.audio_folder(tmp_path / "af")
    for meta in source.glob("*/metadata.csv"):
        meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    result = run_import(ImportConfig(source=str(source), out_dir=str(tmp_path / "out")), progress=False)
    assert result.clips == 3
