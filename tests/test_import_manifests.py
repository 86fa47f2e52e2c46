"""Manifests as the official fine-tuner writes them load through the one reader; inline audio is refused
there with a pointer to `moonlora import`, which writes it to files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import soundfile as sf

import import_corpora as corpora
from moonlora.cli import main
from moonlora.data.importers.layouts import Columns
from moonlora.data.manifest import ManifestError, load_manifest


@pytest.fixture()
def clips(tmp_path):
    for index in (0, 2):
        sf.write(tmp_path / f"c{index}.wav", corpora.speech(index), 16000, subtype="PCM_16")
    return tmp_path


@pytest.mark.parametrize("name, content", [
    ("set.jsonl", '{"audio": "c0.wav", "text": "cleared for takeoff", "group": "g1"}\n'
                  '{"audio": "c2.wav", "text": "hola mundo", "seconds": 1.5}\n'),
    ("set.json", json.dumps([{"audio": "c0.wav", "text": "cleared for takeoff", "group": "g1"},
                             {"path": "c2.wav", "transcript": "hola mundo", "seconds": 1.5}])),
    ("set.json", json.dumps({"utterances": [{"audio": "c0.wav", "text": "cleared for takeoff", "speaker": "g1"},
                                            {"wav": "c2.wav", "text": "hola mundo", "duration": 1.5}]})),
])
def test_fine_tuner_manifests_load_as_they_are(clips, name, content):
    (clips / name).write_text(content)
    manifest = load_manifest(clips / name)
    assert [(u.audio_filepath.name, u.text, u.speaker, u.line) for u in manifest.utterances] == [
        ("c0.wav", "cleared for takeoff", "g1", 1), ("c2.wav", "hola mundo", None, 2)]
    assert manifest.utterances[1].duration == 1.5 and not manifest.skipped


def test_fine_tuner_tsv_loads_and_a_bad_line_is_counted(clips):
    (clips / "set.tsv").write_text("# audio<TAB>text\nc0.wav\tcleared for takeoff\nno transcript here\n"
                                   f"{clips / 'c2.wav'}\thola mundo\n")
    manifest = load_manifest(clips / "set.tsv")
    assert [(u.text, u.line) for u in manifest.utterances] == [("cleared for takeoff", 2), ("hola mundo", 4)]
    assert [(row.line, row.reason) for row in manifest.skipped] == [(3, "expected path<TAB>text")]


def test_a_bad_json_manifest_is_one_line(clips):
    (clips / "set.json").write_text('{"utterances": 3}')
    with pytest.raises(ManifestError, match=r'set.json: a .json manifest is a list of rows or \{"utterances"'):
        load_manifest(clips / "set.json")
    (clips / "set.json").write_text("[{")
    with pytest.raises(ManifestError, match=r"set.json:1: invalid JSON"):
        load_manifest(clips / "set.json")


def test_inline_audio_is_refused_by_the_reader_and_imported_to_files(clips):
    inline = clips / "inline.jsonl"
    inline.write_text(json.dumps({"audio": "c0.wav", "text": "cleared for takeoff"}) + "\n" + json.dumps(
        {"audio": {"array": corpora.speech(2).tolist(), "sampling_rate": 16000}, "text": "hola mundo"}) + "\n")
    with pytest.raises(ManifestError) as refused:
        load_manifest(inline)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{inline}:2: the audio is inline (an array)")
    assert f"moonlora import {inline} --out DIR" in message
    hf_path = clips / "paths.jsonl"  # a Hugging Face audio value that only names its file is read as that path
    hf_path.write_text(json.dumps({"audio": {"path": "c0.wav", "bytes": None}, "text": "cleared for takeoff"}) + "\n")
    assert load_manifest(hf_path).utterances[0].audio_filepath.name == "c0.wav"

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--quiet", "diagnose", "--manifests", str(inline), "--max-seconds", "30"])
    assert code == 1 and "the audio is inline (an array)" in stdout.getvalue() + stderr.getvalue()

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--quiet", "import", str(inline), "--out", str(clips / "imported")]) == 0
    manifest = load_manifest(clips / "imported" / "inline.jsonl")
    assert [u.text for u in manifest.utterances] == ["cleared for takeoff", "hola mundo"]
    assert manifest.utterances[1].duration == pytest.approx(corpora.seconds(2), abs=1e-4)


@pytest.mark.parametrize("name", ["set.jsonl", "set.json", "set.tsv", "set.csv"])
def test_the_same_rows_as_the_official_fine_tuner_reads(clips, name):
    """moonshine_voice.lora's own reader and moonlora's (the manifest reader and the importer) agree row by row."""
    official = pytest.importorskip("moonshine_voice.lora.manifest")
    from moonlora.data.importers.layouts import read_rows

    rows = [{"audio": "c0.wav", "text": "cleared for takeoff", "group": "tower"},
            {"path": str(clips / "c2.wav"), "transcription": "hola mundo", "speaker": "p2", "seconds": 1.5},
            {"wav": "c0.wav", "transcript": "cleared again", "id": "again"}]
    if name.endswith(".jsonl"):
        (clips / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif name.endswith(".json"):
        (clips / name).write_text(json.dumps(rows))
    else:
        separator = "\t" if name.endswith(".tsv") else ","
        (clips / name).write_text("".join(f"{row.get('audio') or row.get('path') or row.get('wav')}{separator}"
                                          f"{row.get('text') or row.get('transcription') or row.get('transcript')}\n"
                                          for row in rows))
    theirs = [(Path(u.audio).resolve(), u.text, u.speaker) for u in official.load_manifest(str(clips / name))]
    ours = [(u.audio_filepath.resolve(), u.text, u.speaker) for u in load_manifest(clips / name).utterances]
    imported = [(item.audio.path.resolve(), item.text, item.speaker) for item in read_rows(clips / name, Columns()).items]
    assert ours == theirs == imported and len(theirs) == 3


def test_transcribe_scores_a_fine_tuner_json_manifest(clips, tiny_model_dir, tmp_path):
    (clips / "set.json").write_text(json.dumps({"utterances": [
        {"audio": "c0.wav", "text": "cleared for takeoff"}, {"audio": "c2.wav", "text": "hola mundo"}]}))
    out = tmp_path / "scored"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["--quiet", "transcribe", "--manifest", str(clips / "set.json"), "--model", str(tiny_model_dir),
                     "--device", "cpu", "--output-dir", str(out)])
    assert code == 0
    lines = (out / "transcripts.jsonl").read_text().splitlines()
    assert [json.loads(line)["ref"] for line in lines] == ["cleared for takeoff", "hola mundo"]
