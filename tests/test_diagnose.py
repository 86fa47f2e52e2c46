import json

import pytest
import soundfile as sf

from conftest import write_tone
from moonlora.data.diagnose import DiagnoseConfig, diagnose, render_markdown, run, write_json

LENGTHS = [0.6, 2.0, 4.5, 7.0, 12.0]
THRESHOLDS = (5, 8, 10, 15, 20)


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def profile_manifest(tmp_path):
    """Five clips of LENGTHS; the fourth is stereo and the fifth is 8 kHz; no speakers."""
    rows = []
    for i, seconds in enumerate(LENGTHS):
        write_tone(tmp_path / f"p{i}.wav", seconds, seed=i,
                   channels=2 if i == 3 else 1, sample_rate=8000 if i == 4 else 16000)
        rows.append({"audio_filepath": f"p{i}.wav", "text": f"profile clip {i}"})
    return write_rows(tmp_path / "profile.jsonl", rows)


def test_profile_counts_split_and_markdown(profile_manifest):
    config = DiagnoseConfig((str(profile_manifest),), max_seconds=8)
    report = diagnose(config)
    (m,) = report.manifests
    expected_counts = [sum(s <= t for s in LENGTHS) for t in THRESHOLDS]
    assert expected_counts == [3, 4, 4, 5, 5]
    assert m.profile.samples == 5 and m.profile.at_most == tuple(expected_counts)
    assert m.profile.mean_seconds == pytest.approx(sum(LENGTHS) / 5)
    assert m.sample_rates == {8000: 1, 16000: 4} and m.channels == {1: 4, 2: 1}

    kept = sum(s <= 8 for s in LENGTHS)
    assert (m.split.filtered, m.split.val, m.split.train) == (kept, round(kept * 0.2), kept - round(kept * 0.2))
    assert m.split.method == "random" and m.split.reason == "no speaker field: random"
    source = f"uv run moonlora diagnose --manifests {profile_manifest} --max-seconds 8"
    assert m.split.source == source

    md = render_markdown(report)
    lines = md.splitlines()
    assert "| Manifest | Samples | Mean (s) | <=5s | <=8s | <=10s | <=15s | <=20s |" in lines
    assert "| --- | --- | --- | --- | --- | --- | --- | --- |" in lines
    assert "| Manifest | Filtered | Train | Val | Split | Source |" in lines
    assert "| --- | --- | --- | --- | --- | --- |" in lines
    mean = f"{sum(LENGTHS) / 5:.2f}"
    assert (f"| `{profile_manifest}` | 5 | {mean} | 3 (60.0%) | 4 (80.0%) | 4 (80.0%) "
            f"| 5 (100.0%) | 5 (100.0%) |") in lines
    assert f"| `{profile_manifest}` | 4 | 3 | 1 | random | `{source}` |" in lines
    assert "### Duration profile (max-seconds=8)" in lines
    assert "### Split sizes (max-seconds=8, seed=42)" in lines


def test_format_and_short_clip_problems(profile_manifest):
    report = diagnose(DiagnoseConfig((str(profile_manifest),), max_seconds=8))
    found = {(p.kind, p.line) for p in report.problems}
    assert found == {("too_short", 1), ("format_mix", 4), ("format_mix", 5)}
    assert all(p.manifest == str(profile_manifest) for p in report.problems)


def test_every_bad_row_kind_is_reported_with_file_and_line(tmp_path):
    write_tone(tmp_path / "ok.wav", 1.5, seed=1)
    write_tone(tmp_path / "other.wav", 2.0, seed=2)
    write_tone(tmp_path / "long.wav", 31.0, sample_rate=8000, seed=3)
    sf.write(str(tmp_path / "empty.wav"), [], 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all")
    manifest = write_rows(tmp_path / "bad.jsonl", [
        {"audio_filepath": "ok.wav", "text": "first good clip"},         # 1
        "{not json",                                                      # 2
        {"text": "no audio key"},                                         # 3
        {"audio_filepath": "missing.wav", "text": "gone"},                # 4
        {"audio_filepath": "corrupt.wav", "text": "broken"},              # 5
        {"audio_filepath": "empty.wav", "text": "nothing"},               # 6
        {"audio_filepath": "other.wav", "text": "  "},                    # 7
        {"audio_filepath": "other.wav", "text": "x", "duration": -1},     # 8
        {"audio_filepath": "other.wav", "text": "declared wrong", "duration": 3.0},  # 9
        {"audio_filepath": "long.wav", "text": "a very long clip"},       # 10
        {"audio_filepath": "ok.wav", "text": "same audio again"},         # 11
        {"audio_filepath": "other.wav", "text": "First good clip!"},      # 12
    ])
    report = diagnose(DiagnoseConfig((str(manifest),), max_seconds=20))
    found = {(p.kind, p.line) for p in report.problems}
    assert found >= {
        ("bad_json", 2), ("no_audio_field", 3), ("missing_audio", 4), ("unreadable_audio", 5),
        ("unreadable_audio", 6), ("empty_text", 7), ("bad_duration", 8), ("duration_mismatch", 9),
        ("too_long", 10), ("duplicate_audio", 11), ("duplicate_transcript", 12),
    }
    assert all(p.manifest == str(manifest) for p in report.problems)
    (m,) = report.manifests
    assert m.profile.samples == 5 and m.split.filtered == 4  # the 31 s clip is over max-seconds
    md = render_markdown(report)
    assert "duplicate_transcript" in md and "none found" in md  # problems, but no leakage


def test_wordless_transcripts_are_counted_with_their_lines(tmp_path):
    for i in range(4):
        write_tone(tmp_path / f"w{i}.wav", 1.5, seed=i)
    manifest = write_rows(tmp_path / "wordless.jsonl", [
        {"audio_filepath": "w0.wav", "text": "a real sentence"},  # 1
        {"audio_filepath": "w1.wav", "text": "..."},              # 2
        {"audio_filepath": "w2.wav", "text": "?!"},               # 3
        {"audio_filepath": "w3.wav", "text": "another one"},      # 4
    ])
    report = diagnose(DiagnoseConfig((str(manifest),), max_seconds=8))
    wordless = [(p.kind, p.line) for p in report.problems if p.kind == "text_normalizes_to_nothing"]
    assert wordless == [("text_normalizes_to_nothing", 2), ("text_normalizes_to_nothing", 3)]
    (m,) = report.manifests
    assert m.profile.samples == 2  # neither wordless row is counted as a clip
    assert f"| `{manifest}` | text_normalizes_to_nothing | 2 | 2, 3 |" in render_markdown(report)
    kinds = [p["kind"] for p in report.to_dict()["manifests"][0]["problems"]]
    assert kinds.count("text_normalizes_to_nothing") == 2


def test_unloadable_manifests_are_problems_not_crashes(tmp_path, profile_manifest):
    empty = write_rows(tmp_path / "useless.jsonl", ["{bad", {"text": "no audio"}])
    absent = tmp_path / "absent.jsonl"
    config = DiagnoseConfig((str(profile_manifest), str(empty), str(absent)), max_seconds=8)
    report = diagnose(config)
    assert report.unloaded == [str(empty), str(absent)]
    unloadable = [(p.kind, p.manifest, p.line) for p in report.problems if p.kind == "unloadable_manifest"]
    assert unloadable == [("unloadable_manifest", str(empty), None), ("unloadable_manifest", str(absent), None)]
    md = render_markdown(report)
    assert f"| `{profile_manifest}` | 5 |" in md and f"| `{profile_manifest}` | 4 | 3 | 1 | random |" in md
    assert f"| `{empty}` | 0" not in md  # unloaded manifests have no table rows, only problems
    assert f"`{absent}` | unloadable_manifest" in md
    assert json.loads(json.dumps(report.to_dict()))["manifests"][2]["loaded"] is False


def test_planted_leakage_is_found(tmp_path):
    for i in range(4):
        write_tone(tmp_path / f"a{i}.wav", 1.2, seed=10 + i)
        write_tone(tmp_path / f"b{i}.wav", 1.3, seed=20 + i)
    train = write_rows(tmp_path / "train.jsonl", [
        {"audio_filepath": "a0.wav", "text": "shared audio here", "speaker": "t1"},
        {"audio_filepath": "a1.wav", "text": "Hello, world.", "speaker": "t2"},
        {"audio_filepath": "a2.wav", "text": "only in train", "speaker": "alice"},
    ])
    test = write_rows(tmp_path / "test.jsonl", [
        {"audio_filepath": "b0.wav", "text": "only in test", "speaker": "e1"},
        {"audio_filepath": "b1.wav", "text": "something else", "speaker": "alice"},
        {"audio_filepath": "b2.wav", "text": "hello world", "speaker": "e2"},
        {"audio_filepath": "a0.wav", "text": "a different label", "speaker": "e3"},
    ])
    report = diagnose(DiagnoseConfig((str(train), str(test)), max_seconds=8))
    leaks = {leak.kind: leak for leak in report.leaks}
    assert set(leaks) == {"audio", "transcript", "speaker"}
    for leak in leaks.values():
        assert leak.manifests == (str(train), str(test)) and leak.shared == 1
    assert [(la, lb) for _, la, lb in leaks["audio"].examples] == [(1, 4)]
    assert leaks["transcript"].examples == (("hello world", 2, 3),)
    assert leaks["speaker"].examples == (("alice", 3, 2),)
    md = render_markdown(report)
    assert "### Leakage" in md and f"`{train}:3` = `{test}:2`" in md


def test_transcript_leakage_compares_under_the_manifests_language(tmp_path):
    """The CJK normalizer drops spaces: "你 好 世界" and "你好世界" are one transcript in Chinese, two in English."""
    for i in range(2):
        write_tone(tmp_path / f"z{i}.wav", 1.2, seed=30 + i)
    train = write_rows(tmp_path / "train.jsonl", [{"audio_filepath": "z0.wav", "text": "你 好 世界"}])
    test = write_rows(tmp_path / "test.jsonl", [{"audio_filepath": "z1.wav", "text": "你好世界。"}])
    kinds = {language: [leak.kind for leak in diagnose(DiagnoseConfig((str(train), str(test)), max_seconds=8,
                                                                      language=language)).leaks]
             for language in ("zh", "en")}
    assert kinds == {"zh": ["transcript"], "en": []}


def test_same_manifest_twice_is_not_leakage(profile_manifest):
    report = diagnose(DiagnoseConfig((str(profile_manifest), str(profile_manifest)), max_seconds=8))
    assert report.leaks == []
    assert render_markdown(report).rstrip().endswith("none found")


def test_speaker_split_reported(tmp_path):
    rows = []
    for i in range(12):
        write_tone(tmp_path / f"s{i}.wav", 1.0 + 0.1 * i, seed=i)
        rows.append({"audio_filepath": f"s{i}.wav", "text": f"speaker clip {i}", "speaker": f"spk{i % 4}"})
    manifest = write_rows(tmp_path / "spk.jsonl", rows)
    report = diagnose(DiagnoseConfig((str(manifest),), max_seconds=20, seed=3))
    split = report.manifests[0].split
    assert split.method == "speaker" and split.reason == "4 speakers, 12 clips: speaker-disjoint"
    assert split.filtered == split.train + split.val == 12 and split.val == 3 and len(split.val_speakers) == 1
    assert split.source.endswith("--max-seconds 20 --seed 3")
    assert "| 12 | 9 | 3 | speaker |" in render_markdown(report)


def test_json_output(tmp_path, profile_manifest):
    out = tmp_path / "out" / "diag.json"
    config = DiagnoseConfig([str(profile_manifest)], max_seconds=6.5, json_path=str(out))
    report, md = run(config)
    data = json.loads(out.read_text())
    assert data["config"]["max_seconds"] == 6.5
    entry = data["manifests"][0]
    assert entry["profile"]["at_most"][0] == {"seconds": 5.0, "count": 3, "percent": 60.0}
    assert entry["split"]["filtered"] == 3 and entry["split"]["source"].endswith("--max-seconds 6.5")
    assert {p["kind"] for p in entry["problems"]} == {"too_short", "format_mix"}
    assert write_json(report, tmp_path / "again.json").read_text() == out.read_text()
    assert "### Split sizes (max-seconds=6.5, seed=42)" in md


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"manifests": (), "max_seconds": 8}, "at least one manifest"),
        ({"manifests": ("m",), "max_seconds": 0}, "max_seconds"),
        ({"manifests": ("m",), "max_seconds": float("nan")}, "max_seconds"),
        ({"manifests": ("m",), "max_seconds": 8, "thresholds": ()}, "threshold"),
        ({"manifests": ("m",), "max_seconds": 8, "thresholds": (5, -1)}, "positive"),
        ({"manifests": ("m",), "max_seconds": 8, "thresholds": (8, 5)}, "increasing"),
        ({"manifests": ("m",), "max_seconds": 8, "val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiagnoseConfig(**kwargs)
