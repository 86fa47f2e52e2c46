"""End-to-end on the real converted Moonshine base (bundled:base-en)."""

import json
import subprocess
import sys

import pytest

from moonlora.model import bundled
from moonlora.cli import main
from moonlora.data.manifest import write_manifest

pytestmark = pytest.mark.integration


def test_transcribe_beckett_with_bundled_model(tmp_path):
    manifest = write_manifest([{"audio_filepath": str(bundled.beckett_wav_path()), "text": bundled.BECKETT_TEXT}],
                              tmp_path / "beckett.jsonl")
    out = tmp_path / "out"
    assert main(["--quiet", "transcribe", "--manifest", str(manifest), "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    row = json.loads((out / "transcripts.jsonl").read_text().splitlines()[0])
    assert summary["wer"] <= 0.10, row["hyp"]
    assert row["hyp_norm"] == "ever tried ever failed no matter try again fail again fail better"
    assert summary["flags"] == {"empty_hypothesis": 0, "token_cap_hit": 0, "repeat_loop": 0, "long_loop": 0}


def test_demo_command_runs_as_a_user_would(tmp_path):
    """The whole path on the real model, shortened (2 steps, 1 seed); the full demo is in the README."""
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "moonlora", "--quiet", "demo", "--output-dir", str(out),
                           "--max-steps", "2", "--seeds", "7"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "runs" / "atc-seed7" / "experiment_metrics.json").read_text())
    assert metrics["status"] in ("success", "stopped_early")
    # The synthetic domain must leave headroom (FACTS: 0.54-0.61 on a similar set) ...
    assert metrics["baseline"]["main"]["wer"] >= 0.4
    # ... while the canary's real clip (beckett.wav) is read correctly by the base model.
    canary_rows = [json.loads(line) for line in
                   (out / "runs" / "atc-seed7" / "baseline" / "canary" / "transcripts.jsonl").read_text().splitlines()]
    assert next(r for r in canary_rows if r["speaker"] == "beckett")["wer"] <= 0.10
    assert [row["step"] for row in metrics["training"]["losses"]] == [1, 2]
    decision = json.loads((out / "decision.json").read_text())
    assert {v["criterion"] for v in decision["verdicts"]} == {"primary", "secondary", "H3 (within band)", "sanity",
                                                              "non-speech", "reproducibility", "export parity"}
    nonspeech = metrics["nonspeech"]  # the demo's non-speech canary, base and tuned
    assert nonspeech["clips"] == 42 and set(nonspeech["comparisons"]) == {"words_per_clip", "text_share"}
    assert "Non-speech canary" in (out / "training_report.md").read_text()
    assert set(metrics["candidates"]) == {"best", "last"} and metrics["checklist"]["leakage"]["found"] == []
    parity = metrics["export_parity"]  # the shipped int8 graphs, scored against the torch model
    assert parity["runtime"] == {"name": "onnxruntime", "precision": "int8"}
    assert set(parity["sets"]) == {"main", "canary"}
    assert (out / "runs" / "atc-seed7" / "export" / "ort" / "decoder_model_merged.ort").is_file()
    assert parity["sets"]["main"]["export_wer"] == json.loads(
        (out / "runs" / "atc-seed7" / "export" / "scores" / "main" / "summary.json").read_text())["wer"]
    assert (out / "report.html").is_file() and (out / "training_report.md").is_file()
    assert "report:" in done.stdout and "Overall:" in done.stdout
