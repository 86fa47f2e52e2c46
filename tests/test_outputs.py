"""The one output policy: refuse, overwrite only moonlora's own outputs, atomic strict writes."""

import errno
import json
import math
import os

import pytest

from moonlora import outputs
from moonlora.outputs import (MARKER, OutputError, OutputExists, check_output_dir, check_output_file, claim_output_dir,
                              write_json, write_signed_text, written_by_moonlora)


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


# --- the marker is trusted only as moonlora wrote it -------------------------------------------------------------


def sandbox(tmp_path):
    """An output folder beside a user's own file, inside a parent the user also owns."""
    parent = tmp_path / "parent"
    folder = parent / "out"
    folder.mkdir(parents=True)
    (parent / "users_file.txt").write_text("keep me")
    (folder / "train.jsonl").write_text("theirs\n")
    return parent, folder


def signed_marker(kind, entries):
    return json.dumps({"written_by": f"written by moonlora {kind}", "kind": kind, "entries": entries}, indent=2)


@pytest.mark.parametrize("entries", [[".."], ["."], [""], ["../users_file.txt"], ["/tmp"], ["clips/../.."],
                                     ["train.jsonl", None], [5], "..", ["users_file.txt"], ["keep.txt"]])
def test_a_marker_listing_anything_but_the_commands_own_plain_names_removes_nothing(tmp_path, entries):
    parent, folder = sandbox(tmp_path)
    (folder / MARKER).write_text(signed_marker("synth", entries))
    with pytest.raises(OutputExists, match="nothing was removed"):
        claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=True)
    assert (parent / "users_file.txt").read_text() == "keep me" and (folder / "train.jsonl").read_text() == "theirs\n"


def test_the_marker_of_the_issue_deletes_nothing(tmp_path):
    """The hand-written marker that once removed the parent folder: unsigned and listing '..'."""
    parent, folder = sandbox(tmp_path)
    (folder / MARKER).write_text(json.dumps({"kind": "synth", "entries": [".."]}))
    with pytest.raises(OutputExists, match="no moonlora marker"):
        claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=True)
    assert (parent / "users_file.txt").read_text() == "keep me"


def test_a_marker_that_is_a_link_is_not_moonloras(tmp_path):
    parent, folder = sandbox(tmp_path)
    (parent / "a_real_marker.json").write_text(signed_marker("synth", ["train.jsonl"]))
    (folder / MARKER).symlink_to(parent / "a_real_marker.json")
    with pytest.raises(OutputExists, match="no moonlora marker"):
        claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=True)
    assert (folder / "train.jsonl").read_text() == "theirs\n"


def test_a_listed_entry_that_is_a_link_outside_is_refused(tmp_path):
    parent, folder = sandbox(tmp_path)
    outside = parent / "my_clips"
    outside.mkdir()
    (outside / "a.wav").write_bytes(b"RIFF")
    (folder / "clips").symlink_to(outside)
    (folder / MARKER).write_text(signed_marker("synth", ["clips", "train.jsonl"]))
    with pytest.raises(OutputExists, match="clips is a link"):
        claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=True)
    assert (outside / "a.wav").read_bytes() == b"RIFF" and (folder / "clips").is_symlink()


def test_an_entry_the_marker_does_not_list_is_refused(tmp_path):
    parent, folder = sandbox(tmp_path)
    (folder / MARKER).write_text(signed_marker("synth", ["clips"]))
    with pytest.raises(OutputExists, match="holds train.jsonl, which its marker"):
        claim_output_dir(folder, "--out", "synth", ["clips", "train.jsonl"], overwrite=True)
    assert (folder / "train.jsonl").read_text() == "theirs\n"


def test_known_names_of_the_same_command_are_replaced(tmp_path):
    """An earlier `export --format ort` folder overwritten by `--format hf`: the command's own list
    (`known`) covers both formats."""
    folder = tmp_path / "out"
    claim_output_dir(folder, "--out", "export", ["model.ort"], overwrite=False, known=["model.ort", "config.json"])
    (folder / "model.ort").write_bytes(b"ort")
    removed = claim_output_dir(folder, "--out", "export", ["config.json"], overwrite=True,
                               known=["model.ort", "config.json"])
    assert sorted(removed) == sorted(["model.ort", MARKER]) and not (folder / "model.ort").exists()


def test_a_failed_delete_is_one_line_naming_the_entry(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    claim_output_dir(folder, "--out", "synth", ["clips"], overwrite=False)
    (folder / "clips").mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(outputs.shutil, "rmtree", refuse)
    with pytest.raises(OutputError, match="cannot remove moonlora's earlier clips \\(Permission denied\\)"):
        claim_output_dir(folder, "--out", "synth", ["clips"], overwrite=True)


# --- a single file is replaced only by the command that wrote it --------------------------------------------------


def test_a_file_signed_by_another_command_is_not_replaced(tmp_path):
    record = tmp_path / "experiment_metrics.json"
    write_json(record, {"status": "success"}, command="experiment")
    with pytest.raises(OutputExists, match="written by moonlora experiment, not by decide"):
        check_output_file(record, "--json", overwrite=True, command="decide")
    report = tmp_path / "r.md"
    write_signed_text(report, "# r\n", "report")
    with pytest.raises(OutputExists, match="not by diagnose"):
        check_output_file(report, "--json", overwrite=True, command="diagnose")
    assert check_output_file(report, "--out", overwrite=True, command="report") == report


def test_the_signature_must_open_the_file(tmp_path):
    """Quoting a signature inside a file (a transcript, a note) does not make it moonlora's."""
    quoted = tmp_path / "notes.json"
    quoted.write_text(json.dumps({"note": "written by moonlora decide"}))
    assert not written_by_moonlora(quoted)
    with pytest.raises(OutputExists, match="not written by moonlora"):
        check_output_file(quoted, "--json", overwrite=True, command="decide")


def test_a_link_or_a_device_is_never_replaced(tmp_path):
    ours = tmp_path / "ours.json"
    write_json(ours, {"a": 1}, command="decide")
    link = tmp_path / "link.json"
    link.symlink_to(ours)
    with pytest.raises(OutputError, match="is a link"):
        check_output_file(link, "--json", overwrite=True, command="decide")
    with pytest.raises(OutputExists, match="not written by moonlora"):
        check_output_file("/dev/null", "--json", overwrite=True, command="decide")


# --- an output path is proven by creating it (root passes every access test) --------------------------------------


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_a_path_that_cannot_be_created_is_refused_even_for_root(tmp_path, where):
    (tmp_path / "f").write_text("x")
    path = "/proc/moonlora-nope/out" if where == "proc" else str(tmp_path / "f" / "sub" / "out")
    with pytest.raises(OutputError, match="--output-dir"):
        check_output_dir(path, "--output-dir", "transcribe", ["summary.json"], overwrite=False)
    with pytest.raises(OutputError, match="--json"):
        check_output_file(f"{path}/x.json", "--json", overwrite=False, command="decide")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_an_existing_folder_that_cannot_take_a_file_is_refused(tmp_path):
    with pytest.raises(OutputError, match="--output-dir /proc: /proc is not writable"):
        check_output_dir("/proc", "--output-dir", "transcribe", ["summary.json"], overwrite=False)


def test_the_proof_leaves_nothing_behind(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b" / "c", "--out", "synth", ["clips"], overwrite=False)
    check_output_file(tmp_path / "x" / "y" / "r.json", "--json", overwrite=False, command="decide")
    (tmp_path / "existing").mkdir()
    check_output_dir(tmp_path / "existing", "--out", "synth", ["clips"], overwrite=False)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["existing"]
