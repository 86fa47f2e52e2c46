"""`moonlora import` on tiny corpora in each file layout: rows, durations, speakers, texts and skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import import_corpora as corpora
from import_corpora import UTTERANCES, read_manifest, seconds
from moonlora.data.importers.layouts import detect
from moonlora.data.importers.run import ImportConfig, run_import
from moonlora.data.manifest import load_manifest
from moonlora.errors import MoonloraError


def imported(source, out, **settings):
    return run_import(ImportConfig(source=str(source), out_dir=str(out), **settings), progress=False)


def assert_loads(manifest_path, count):
    """The one manifest reader takes the import's manifest as it is."""
    manifest = load_manifest(manifest_path)
    assert len(manifest.utterances) == count and not manifest.skipped
    for utterance in manifest.utterances:
        info = sf.info(str(utterance.audio_filepath))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert utterance.duration == pytest.approx(utterance.file_duration, abs=1e-4)
    return manifest


def test_librispeech_tree_lowercased_with_speakers(tmp_path):
    source = corpora.librispeech(tmp_path / "ls")
    assert detect(str(source)) == "librispeech"
    result = imported(source, tmp_path / "out")
    assert result.text_mode == "lower" and list(result.splits) == ["test-clean"]
    rows = read_manifest(tmp_path / "out" / "test-clean.jsonl")
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == 4 and {row["speaker"] for row in rows} == {"84", "174"}
    assert by_id["84-1000-0000"]["text"] == "cleared for takeoff" and by_id["174-1000-0002"]["text"] == "hola mundo"
    assert by_id["84-1000-0001"]["duration"] == pytest.approx(seconds(1), abs=1e-4)
    samples, _ = sf.read(tmp_path / "out" / by_id["84-1000-0000"]["audio_filepath"], dtype="int16")
    original, _ = sf.read(source / "test-clean" / "84" / "1000" / "84-1000-0000.flac", dtype="int16")
    assert np.array_equal(samples, original)  # 16 kHz PCM_16 is copied sample for sample
    assert_loads(tmp_path / "out" / "test-clean.jsonl", 4)
    assert imported(source, tmp_path / "kept", text_mode="none").splits["test-clean"].clips == 4
    assert read_manifest(tmp_path / "kept" / "test-clean.jsonl")[0]["text"].isupper()


def test_multilingual_librispeech_opus(tmp_path):
    source = corpora.mls(tmp_path / "mls_german")
    assert detect(str(source)) == "mls"
    result = imported(source, tmp_path / "out")
    rows = read_manifest(tmp_path / "out" / "test.jsonl")
    assert [(row["id"], row["speaker"], row["text"]) for row in rows] == [
        ("174_77_000002", "174", "hola mundo"), ("174_77_000003", "174", "guten tag")]
    for row, index in zip(rows, (2, 3)):
        assert row["duration"] == pytest.approx(seconds(index), abs=1e-3)
    assert result.skipped_by_kind() == {"bad_line": 1} and result.skipped[0].origin.endswith("transcripts.txt:3")
    assert_loads(tmp_path / "out" / "test.jsonl", 2)


def test_common_voice_mp3_resampled_and_a_missing_clip_counted(tmp_path):
    source = corpora.common_voice(tmp_path / "cv")
    assert detect(str(source)) == "commonvoice"
    result = imported(source, tmp_path / "out")
    assert {name: split.clips for name, split in result.splits.items()} == {"test": 1, "train": 3}
    assert result.skipped_by_kind() == {"missing_audio": 1}
    assert "test.tsv:3" in result.skipped[0].origin
    train = read_manifest(tmp_path / "out" / "train.jsonl")
    assert [row["speaker"] for row in train] == ["client84", "client84", "client174"]
    assert train[2]["text"] == 'Hola Mundo "quoted"'  # Common Voice TSVs are not quoted
    for row, index in zip(train, range(3)):  # mp3 at 48 kHz: the codec pads a little
        assert row["duration"] == pytest.approx(seconds(index), abs=0.08)
    assert_loads(tmp_path / "out" / "train.jsonl", 3)
    only_test = imported(source, tmp_path / "only", splits=("test",))
    assert list(only_test.splits) == ["test"]


def test_kaldi_segments_cut_clips_of_the_right_length(tmp_path):
    source, spans = corpora.kaldi(tmp_path / "kaldi")
    assert detect(str(source)) == "kaldi"
    result = imported(source, tmp_path / "out", text_mode="none")
    train = read_manifest(tmp_path / "out" / "train.jsonl")
    assert [row["id"] for row in train] == ["utt0", "utt1"] and [row["speaker"] for row in train] == ["pilot", "tower"]
    for row, (start, end) in zip(train, spans):
        assert row["duration"] == pytest.approx(end - start, abs=1e-3)
    assert train[1]["duration"] == pytest.approx(seconds(1), abs=2e-3)
    assert [row["text"] for row in train] == [UTTERANCES[0][0], UTTERANCES[1][0]]
    test = read_manifest(tmp_path / "out" / "test.jsonl")
    assert [row["id"] for row in test] == ["utt2"]  # a relative wav.scp path resolves against the recipe folder
    assert result.skipped_by_kind() == {"unsupported": 1} and "command pipe" in result.skipped[0].reason
    assert_loads(tmp_path / "out" / "train.jsonl", 2)


def test_kaldi_bad_segment_and_unknown_recording_are_counted(tmp_path):
    source, _ = corpora.kaldi(tmp_path / "kaldi")
    (source / "train" / "segments").write_text("utt0 rec1 0.5 0.2\nutt1 nothere 0 1\nutt8 rec1 30 31\n"
                                               "utt9 rec1 1.0 -1\n")
    with open(source / "train" / "text", "a") as handle:
        handle.write("utt8 past the end\nutt9 to the end\n")
    result = imported(source / "train", tmp_path / "out")
    assert result.skipped_by_kind() == {"bad_segment": 1, "no_audio": 1, "unreadable_audio": 1}
    assert [skip.origin.rsplit("/", 1)[1] for skip in result.skipped[:2]] == ["segments:1", "segments:2"]
    assert "outside the recording" in result.skipped[2].reason
    (row,) = read_manifest(tmp_path / "out" / "train.jsonl")
    recording = sf.info(str(source.parent / "wav" / "rec1.wav")).duration
    assert row["id"] == "utt9" and row["duration"] == pytest.approx(recording - 1.0, abs=1e-3)


def test_fine_tuner_rows_with_an_inline_array(tmp_path):
    source = corpora.rows_jsonl(tmp_path / "rows")
    assert detect(str(source)) == "rows"
    result = imported(source, tmp_path / "out")
    rows = read_manifest(tmp_path / "out" / "rows.jsonl")
    assert [row["text"] for row in rows] == ["cleared for takeoff", "hold short of runway two", "hola mundo"]
    assert [row.get("speaker") for row in rows] == ["p1", "p2", None]  # the fine-tuner's `group` is a speaker
    assert rows[1]["duration"] == pytest.approx(seconds(1), abs=2e-3)  # 8 kHz FLAC resampled
    inline, _ = sf.read(tmp_path / "out" / rows[2]["audio_filepath"], dtype="int16")
    assert inline.size == corpora.speech(2).size
    assert result.skipped_by_kind() == {"bad_line": 1, "empty_text": 1}
    assert [skip.origin.rsplit(":", 1)[1] for skip in result.skipped] == ["4", "5"]
    assert_loads(tmp_path / "out" / "rows.jsonl", 3)


@pytest.mark.parametrize("kind", ["json", "tsv"])
def test_fine_tuner_json_and_tsv(tmp_path, kind):
    folder = tmp_path / "rows"
    folder.mkdir()
    for index in (0, 3):
        sf.write(folder / f"c{index}.wav", corpora.speech(index), 16000, subtype="PCM_16")
    if kind == "json":
        (folder / "set.json").write_text(json.dumps({"utterances": [
            {"audio": "c0.wav", "text": "cleared for takeoff", "speaker": "a"}, {"audio": "c3.wav", "text": "guten tag"}]}))
    else:
        (folder / "set.tsv").write_text("# the fine-tuner's TSV\nc0.wav\tcleared for takeoff\nc3.wav\tguten tag\nc9.wav\n")
    result = imported(folder / f"set.{kind}", tmp_path / "out")
    assert [row["text"] for row in read_manifest(tmp_path / "out" / "set.jsonl")] == ["cleared for takeoff", "guten tag"]
    assert result.skipped_by_kind() == ({} if kind == "json" else {"bad_line": 1})


def test_a_folder_of_manifests_is_one_split_per_file(tmp_path):
    from moonlora.data.synth.build import build_domain

    build_domain("atc", n=3, seed=1, out_dir=tmp_path / "synth", progress=False)
    assert detect(str(tmp_path / "synth")) == "rows"
    result = imported(tmp_path / "synth", tmp_path / "out")
    assert sorted(result.splits) == ["test", "train"] and result.clips == 3
    for split in ("train", "test"):
        original = load_manifest(tmp_path / "synth" / f"{split}.jsonl")
        copy = assert_loads(tmp_path / "out" / f"{split}.jsonl", len(original.utterances))
        assert [u.text for u in copy.utterances] == [u.text for u in original.utterances]
        assert [u.speaker for u in copy.utterances] == [u.speaker for u in original.utterances]
        assert [u.audio_sha256 for u in copy.utterances] == [u.audio_sha256 for u in original.utterances]


def test_text_folder_and_audio_folder(tmp_path):
    folder = corpora.text_folder(tmp_path / "recordings")
    assert detect(str(folder)) == "textfolder"
    result = imported(folder, tmp_path / "out")
    rows = read_manifest(tmp_path / "out" / "recordings.jsonl")
    assert [(row["id"], row["text"]) for row in rows] == [("one", "cleared for takeoff"), ("sub-two", "guten tag")]
    assert rows[0]["duration"] == pytest.approx(seconds(0), abs=2e-3)  # 44.1 kHz resampled
    assert result.skipped_by_kind() == {"no_transcript": 1}

    folder = corpora.audio_folder(tmp_path / "af")
    assert detect(str(folder)) == "audiofolder"
    result = imported(folder, tmp_path / "out-af")
    assert {name: split.clips for name, split in result.splits.items()} == {"test": 1, "train": 2}
    train = read_manifest(tmp_path / "out-af" / "train.jsonl")
    assert train[0]["text"] == "cleared for takeoff, said" and train[0]["speaker"] == "84"


def test_limit_seed_max_seconds_and_duplicates(tmp_path):
    source = corpora.librispeech(tmp_path / "ls")
    first = imported(source, tmp_path / "a", limit=2, seed=3)
    again = imported(source, tmp_path / "b", limit=2, seed=3)
    assert first.splits["test-clean"].clips == 2 and first.splits["test-clean"].not_selected == 2
    assert (tmp_path / "a" / "test-clean.jsonl").read_bytes() == (tmp_path / "b" / "test-clean.jsonl").read_bytes()
    for seed in range(4):
        imported(source, tmp_path / f"s{seed}", limit=2, seed=seed)
    samples = {frozenset(row["id"] for row in read_manifest(tmp_path / f"s{seed}" / "test-clean.jsonl"))
               for seed in range(4)}
    assert len(samples) > 1  # the seed decides the sample
    short = imported(source, tmp_path / "short", max_seconds=2.0)
    assert short.splits["test-clean"].clips == 2 and short.skipped_by_kind() == {"too_long": 2}
    chapter = source / "test-clean" / "84" / "1000"
    (chapter / "84-1000-0009.flac").write_bytes((chapter / "84-1000-0000.flac").read_bytes())
    with open(chapter / "84-1000.trans.txt", "a") as handle:
        handle.write("84-1000-0009 CLEARED FOR TAKEOFF AGAIN\n")
    duplicated = imported(source, tmp_path / "dup")
    assert duplicated.splits["test-clean"].clips == 4 and duplicated.skipped_by_kind() == {"duplicate_audio": 1}
    assert duplicated.duplicates[0]["origin"].endswith("trans.txt:3")
    report = json.loads((tmp_path / "dup" / "import_report.json").read_text())
    assert report["duplicates"] == duplicated.duplicates and report["clips"] == 4


def test_clip_names_stay_unique(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    for index in range(3):
        sf.write(folder / f"c{index}.wav", corpora.speech(index), 16000, subtype="PCM_16")
    rows = [{"audio": "c0.wav", "text": "one", "id": "x"}, {"audio": "c1.wav", "text": "two", "id": "X"},
            {"audio": "c2.wav", "text": "three", "id": "x-2"}]
    (folder / "set.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    imported(folder / "set.jsonl", tmp_path / "out")
    assert [row["id"] for row in read_manifest(tmp_path / "out" / "set.jsonl")] == ["x", "X-2", "x-2-2"]


def test_link_points_at_originals_already_16k_and_converts_the_rest(tmp_path):
    folder = corpora.text_folder(tmp_path / "recordings")
    result = imported(folder, tmp_path / "out", mode="link")
    rows = read_manifest(tmp_path / "out" / "recordings.jsonl")
    assert rows[0]["audio_filepath"] == "clips/recordings/one.wav"  # 44.1 kHz: converted
    assert rows[1]["audio_filepath"] == str((folder / "sub" / "two.flac").resolve())
    assert result.splits["recordings"].linked == 1
    assert_loads(tmp_path / "out" / "recordings.jsonl", 2)


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "cv" / "clips").mkdir(parents=True)
    (tmp_path / "cv" / "train.tsv").write_text("client_id\tpath\tsentence\n")
    with pytest.raises(MoonloraError, match=r"no clips found to import"):
        imported(tmp_path / "cv", tmp_path / "out")
    (tmp_path / "bad.json").write_text('{"rows": 3}')
    with pytest.raises(MoonloraError, match=r'bad.json: expected a JSON list of rows or \{"utterances"'):
        imported(tmp_path / "bad.json", tmp_path / "out")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "metadata.csv").write_text("file_name,words\nx.wav,hello\n")
    with pytest.raises(MoonloraError, match=r"metadata.csv:1: no transcript column found .*--text-column"):
        imported(tmp_path / "meta", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoonloraError, match="no layout moonlora imports was found"):
        imported(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(MoonloraError, match="not found"):
        imported(tmp_path / "no" / "such", tmp_path / "out")
    (tmp_path / "silent").mkdir()
    sf.write(tmp_path / "silent" / "a.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "silent" / "a.txt").write_text("nothing")
    with pytest.raises(MoonloraError, match=r"no clip could be imported \(1 skipped.*a.txt: digital silence"):
        imported(tmp_path / "silent", tmp_path / "out-silent")
    with pytest.raises(MoonloraError, match="--limit 0: must be at least 1"):
        imported(tmp_path / "silent", tmp_path / "out-silent", limit=0)
    with pytest.raises(MoonloraError, match="--config clean: names a hub dataset's configuration"):
        imported(tmp_path / "silent", tmp_path / "out-silent", config="clean")
    with pytest.raises(MoonloraError, match="inside the source"):
        imported(corpora.text_folder(tmp_path / "tf"), tmp_path / "tf" / "out")
