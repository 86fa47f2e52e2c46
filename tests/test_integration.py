"""End-to-end on the real converted Moonshine base (bundled:base-en)."""

import json
import subprocess
import sys

import pytest

from moonlora import bundled
from moonlora.cli import main
from moonlora.manifest import write_manifest

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
    assert summary["flags"] == {"empty_hypothesis": 0, "token_cap_hit": 0, "repeat_loop": 0}


def test_demo_command_runs_as_a_user_would(tmp_path):
    done = subprocess.run([sys.executable, "-m", "moonlora", "--quiet", "demo", "--output-dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "samples" / "summary.json").read_text())
    assert summary["clips"] >= 1 and summary["wer"] <= 0.10
    assert "results in" in done.stdout
