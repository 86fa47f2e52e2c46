import json

import pytest

from conftest import write_tone
from moonlora.data.manifest import ManifestError, load_manifest


def write_rows(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_aliases_relative_paths_and_header_duration(tmp_path):
    (tmp_path / "a").mkdir()
    write_tone(tmp_path / "a" / "x.wav", 1.5)
    write_tone(tmp_path / "a" / "y.wav", 2.0)
    manifest = write_rows(tmp_path / "m.jsonl", [
        {"audio_filepath": "a/x.wav", "text": "hello there", "duration": 1.25, "speaker": 7},
        {"wav": str(tmp_path / "a" / "y.wav"), "transcript": " second clip ", "speaker_id": "bob"},
        {"path": "a/x.wav", "transcription": "third", "seconds": "1.5"},
    ])
    loaded = load_manifest(manifest)
    assert not loaded.skipped
    first, second, third = loaded.utterances
    assert first.audio_filepath == tmp_path / "a" / "x.wav"
    assert first.duration == 1.25 and first.file_duration == pytest.approx(1.5)
    assert first.speaker == "7"
    assert second.duration == pytest.approx(2.0) and second.text == "second clip" and second.speaker == "bob"
    assert third.duration == 1.5 and third.speaker is None
    assert loaded.total_seconds == pytest.approx(4.75)


def test_bad_rows_are_skipped_counted_and_named(tmp_path):
    write_tone(tmp_path / "ok.wav", 1.0)
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all")
    manifest = write_rows(tmp_path / "m.jsonl", [
        {"audio_filepath": "ok.wav", "text": "good"},
        "{not json",
        {"audio_filepath": "missing.wav", "text": "gone"},
        {"audio_filepath": "corrupt.wav", "text": "broken"},
        {"audio_filepath": "ok.wav", "text": "   "},
        {"text": "no audio"},
        {"audio_filepath": "ok.wav", "text": "neg", "duration": -3},
        "[1, 2]",
    ])
    loaded = load_manifest(manifest)
    assert [u.line for u in loaded.utterances] == [1]
    kinds = {row.line: row.kind for row in loaded.skipped}
    assert kinds == {2: "bad_json", 3: "missing_audio", 4: "unreadable_audio", 5: "empty_text",
                     6: "no_audio_field", 7: "bad_duration", 8: "bad_json"}
    assert loaded.skipped_by_kind()["bad_json"] == 2
    assert all(str(manifest) in str(row) and f":{row.line}:" in str(row) for row in loaded.skipped)


def test_whole_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match="nope.jsonl"):
        load_manifest(tmp_path / "nope.jsonl")
    empty = write_rows(tmp_path / "empty.jsonl", [{"audio_filepath": "missing.wav", "text": "x"}])
    with pytest.raises(ManifestError, match=r"empty.jsonl: no usable rows .*empty.jsonl:1"):
        load_manifest(empty)


def test_content_hash_tracks_audio_and_text_not_formatting(tmp_path):
    write_tone(tmp_path / "x.wav", 1.0, seed=1)
    one = write_rows(tmp_path / "one.jsonl", [{"audio_filepath": "x.wav", "text": "same"}])
    two = write_rows(tmp_path / "two.jsonl", [{"wav": str(tmp_path / "x.wav"), "text": "same", "duration": 1.0}])
    other_text = write_rows(tmp_path / "three.jsonl", [{"audio_filepath": "x.wav", "text": "different"}])
    assert load_manifest(one).content_hash == load_manifest(two).content_hash
    assert load_manifest(one).content_hash != load_manifest(other_text).content_hash
    before = load_manifest(one).content_hash
    write_tone(tmp_path / "x.wav", 1.0, seed=2)
    assert load_manifest(one).content_hash != before


@pytest.mark.parametrize("text", ["...", "?!", "  . . .  ", "Uh, um.", "…"])
def test_reference_without_words_is_skipped_with_its_line(tmp_path, text):
    write_tone(tmp_path / "x.wav", 1.0, seed=1)
    write_tone(tmp_path / "y.wav", 1.0, seed=2)
    manifest = write_rows(tmp_path / "m.jsonl", [
        {"audio_filepath": "x.wav", "text": "hello there"},
        {"audio_filepath": "y.wav", "text": text},
        {"audio_filepath": "x.wav", "text": "Wait... what?"},
    ])
    loaded = load_manifest(manifest)
    assert [u.line for u in loaded.utterances] == [1, 3]
    (row,) = loaded.skipped
    assert (row.kind, row.line) == ("text_normalizes_to_nothing", 2)
    assert str(row).startswith(f"{manifest}:2: ") and "no words once normalized" in str(row)
    assert loaded.skipped_by_kind() == {"text_normalizes_to_nothing": 1}


def test_skipped_wordless_row_leaves_the_content_hash_of_the_rest(tmp_path):
    write_tone(tmp_path / "x.wav", 1.0, seed=1)
    write_tone(tmp_path / "y.wav", 1.0, seed=2)
    good = {"audio_filepath": "x.wav", "text": "hello there"}
    plain = write_rows(tmp_path / "plain.jsonl", [good])
    with_noise = write_rows(tmp_path / "noise.jsonl", [{"audio_filepath": "y.wav", "text": "?!"}, good])
    assert load_manifest(with_noise).content_hash == load_manifest(plain).content_hash


def test_only_wordless_rows_is_a_whole_manifest_error(tmp_path):
    write_tone(tmp_path / "x.wav", 1.0)
    manifest = write_rows(tmp_path / "m.jsonl", [{"audio_filepath": "x.wav", "text": "..."}])
    with pytest.raises(ManifestError, match=r"no usable rows .*m.jsonl:1: transcript '...' has no words"):
        load_manifest(manifest)
