"""The data commands end to end through the CLI: synth -> diagnose -> augment."""

import json
from pathlib import Path

from moonlora.cli import main


def test_synth_diagnose_augment(tmp_path, capsys):
    domain = tmp_path / "atc"
    assert main(["--quiet", "synth", "--n", "12", "--seed", "5", "--out", str(domain)]) == 0
    train = [json.loads(line) for line in (domain / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (domain / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 12
    assert not {r["speaker"] for r in train} & {r["speaker"] for r in test}
    capsys.readouterr()
    # A second synth into the same folder is refused, not overwritten.
    assert main(["--quiet", "synth", "--n", "12", "--out", str(domain)]) == 2
    err = capsys.readouterr().err
    assert "moonlora: error:" in err and str(domain) in err

    report_path = tmp_path / "diag.json"
    assert main(["diagnose", "--manifests", str(domain / "train.jsonl"), str(domain / "test.jsonl"),
                 "--max-seconds", "20", "--json", str(report_path)]) == 0
    markdown = capsys.readouterr().out
    assert "| Manifest | Samples | Mean (s) | <=5s | <=8s | <=10s | <=15s | <=20s |" in markdown
    assert "| Manifest | Filtered | Train | Val | Split | Source |" in markdown
    report = json.loads(report_path.read_text())
    profiles = {Path(m["manifest"]).name: m["profile"]["samples"] for m in report["manifests"]}
    assert profiles == {"train.jsonl": len(train), "test.jsonl": len(test)}
    assert report["leaks"] == []  # synth never shares a voice, a clip or a sentence between splits

    shifted = tmp_path / "radio"
    assert main(["--quiet", "augment", "--manifest", str(domain / "test.jsonl"), "--out", str(shifted),
                 "--band", "radio", "--snr-db", "15", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in (shifted / "manifest.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [r["text"] for r in test]
    assert all((shifted / r["audio_filepath"]).is_file() for r in rows)


def test_diagnose_reports_unloadable_manifest(tmp_path, capsys):
    code = main(["diagnose", "--manifests", str(tmp_path / "missing.jsonl"), "--max-seconds", "8"])
    out = capsys.readouterr().out
    assert code == 1 and "missing.jsonl" in out
