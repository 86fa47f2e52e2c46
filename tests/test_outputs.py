"""The one output policy: refuse, overwrite only moonlora's own outputs, atomic strict writes."""

import errno
import json
import math
import os

import pytest

from moonlora import outputs
from moonlora.outputs import (MARKER, OutputError, OutputExists, check_output_file, claim_output_dir, write_json,
                              write_signed_text, written_by_moonlora)


def test_new_folder_gets_marker_and_existing_results_are_refused(tmp_path):
    folder = tmp_path / "out"
    assert claim_output_dir(folder, "--out", "transcribe", ["summary.json"], overwrite=False) == []
    marker = json.loads((folder / MARKER).read_text())
    assert marker["kind"] == "transcribe" and marker["entries"] == ["summary.json"]
    (folder / "summary.json").write_text("{}")
    with pytest.raises(OutputExists, match="--out .*already holds"):
        claim_output_dir(folder, "--out", "transcribe", ["summary.json"], overwrite=False)


def test_overwrite_removes_only_moonloras_entries(tmp_path):
    folder = tmp_path / "out"
    claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=False)
    (folder / "clips").mkdir()
    (folder / "clips" / "a.wav").write_bytes(b"x")
    (folder / "train.jsonl").write_text("{}\n")
    (folder / "my_notes.txt").write_text("keep me")
    removed = claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=True)
    assert sorted(removed) == sorted(["clips", "train.jsonl", MARKER])
    assert (folder / "my_notes.txt").read_text() == "keep me"
    assert not (folder / "clips").exists() and (folder / MARKER).exists()


@pytest.mark.parametrize("marker_kind", [None, "transcribe"])
def test_overwrite_refuses_a_folder_without_our_marker(tmp_path, marker_kind):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "train.jsonl").write_text("theirs\n")
    if marker_kind:
        (folder / MARKER).write_text(json.dumps({"kind": marker_kind, "entries": ["train.jsonl"]}))
    with pytest.raises(OutputExists, match="nothing was removed"):
        claim_output_dir(folder, "--out", "synth", ["train.jsonl"], overwrite=True)
    assert (folder / "train.jsonl").read_text() == "theirs\n"


def test_require_empty_refuses_any_content(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputExists, match="--output-dir"):
        claim_output_dir(tmp_path, "--output-dir", "run", ["a"], overwrite=False, require_empty=True)
    with pytest.raises(OutputExists, match="no moonlora marker"):
        claim_output_dir(tmp_path, "--output-dir", "run", ["a"], overwrite=True, require_empty=True)
    assert (tmp_path / "file.txt").exists()


def test_file_path_is_refused_for_a_folder_and_unwritable_parent(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="--output-dir .*is a file"):
        claim_output_dir(tmp_path / "f", "--output-dir", "run", [], overwrite=False)
    with pytest.raises(OutputError, match="--json .*is a file, not a folder"):
        check_output_file(tmp_path / "f" / "x.json", "--json", overwrite=False, command="decide")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "--json", overwrite=False, command="decide")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder_is_named(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_file(locked / "x.json", "--json", overwrite=False, command="decide")
    finally:
        locked.chmod(0o700)


def test_single_files_are_signed_and_only_signed_files_are_replaced(tmp_path):
    ours, theirs = tmp_path / "ours.md", tmp_path / "theirs.md"
    write_signed_text(ours, "# report\n", "report")
    theirs.write_text("# my own notes\n")
    assert written_by_moonlora(ours) and not written_by_moonlora(theirs)
    with pytest.raises(OutputExists, match="pass --overwrite"):
        check_output_file(ours, "--out", overwrite=False, command="report")
    assert check_output_file(ours, "--out", overwrite=True, command="report") == ours
    with pytest.raises(OutputExists, match="not written by moonlora"):
        check_output_file(theirs, "--out", overwrite=True, command="report")
    data = tmp_path / "d.json"
    write_json(data, {"a": 1}, command="decide")
    assert written_by_moonlora(data) and json.loads(data.read_text())["a"] == 1


def test_json_is_strict_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json(path, {"loss": math.nan, "rows": [1.0, math.inf], "ok": 2})
    loaded = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard {name}"))
    assert loaded == {"loss": None, "rows": [1.0, None], "ok": 2}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(OutputError, match="disk full while writing m.json"):
        write_json(path, {"big": "x" * 1000})
    assert json.loads(path.read_text())["ok"] == 2  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind
