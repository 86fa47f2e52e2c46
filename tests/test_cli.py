import json

import pytest

from moonlora.cli import main


def test_transcribe_writes_results_and_refuses_to_overwrite(tiny_model_dir, tone_manifest, tmp_path, capsys):
    with open(tone_manifest, "a") as handle:
        handle.write(json.dumps({"audio_filepath": "clips/missing.wav", "text": "lost"}) + "\n")
    out = tmp_path / "out"
    args = ["--quiet", "transcribe", "--manifest", str(tone_manifest), "--model", str(tiny_model_dir),
            "--output-dir", str(out), "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "transcribe_config.json").read_text())
    assert len(rows) == 5 and summary["clips"] == 5
    assert summary["skipped"] == 1 and summary["skipped_rows"][0]["kind"] == "missing_audio"
    assert summary["skipped_rows"][0]["line"] == 6
    assert {"ref", "hyp", "duration", "substitutions", "deletions", "insertions", "flags"} <= rows[0].keys()
    assert summary["flags"]["token_cap_hit"] == 5  # a random model never ends on its own
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    assert summary["wer"] == pytest.approx(errors / sum(r["ref_words"] for r in rows))
    assert summary["hours"] == pytest.approx(sum(r["duration"] for r in rows) / 3600, rel=1e-3)
    assert summary["contract"]["fingerprint"] and summary["contract"]["adapter_sha256"] is None
    assert summary["rtfx"] > 0 and config["decode"]["batch_size"] == 2
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--output-dir" in err and "already holds" in err and "summary.json" in err
    assert main(args + ["--overwrite"]) == 0


def test_bad_input_is_one_line_error(tiny_model_dir, tmp_path, capsys):
    assert main(["transcribe", "--manifest", str(tmp_path / "none.jsonl"), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.jsonl" in err and "Traceback" not in err


def test_unreachable_hub_names_the_offline_model(tone_manifest, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["transcribe", "--manifest", str(tone_manifest), "--model", "UsefulSensors/moonshine-tiny",
                 "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "not reachable" in err and "bundled:base-en" in err


def test_bad_adapter_folder_is_one_line_error(tiny_model_dir, tone_manifest, tmp_path, capsys):
    code = main(["transcribe", "--manifest", str(tone_manifest), "--model", str(tiny_model_dir),
                 "--adapter", str(tmp_path), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "adapter_config.json" in err
