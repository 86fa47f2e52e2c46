"""Parity after training: `transcribe --adapter RUN/adapter` measures under the run's own settings."""

import json

import pytest

from conftest import tone_set
from moonlora.data.audio import AudioConfig
from moonlora.cli import main
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.train.experiment import run_experiment


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("parity")
    data = {"train": tone_set(folder / "d", "train", 12), "main": tone_set(folder / "d", "main", 4, seed0=50)}
    config = ExperimentConfig(
        output_dir=str(folder / "run"), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), bootstrap_resamples=100, min_val_clips=1,
        train=TrainConfig(max_steps=2, learning_rate=5e-3, batch_size=2, grad_accum=1, eval_interval=1, seed=3),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0), audio=AudioConfig(rms_target_dbfs=-25.0),
        decode=DecodeConfig(batch_size=8, device="cpu"))
    record = run_experiment(config, progress=False)
    return folder / "run", data, record


@pytest.mark.parametrize("adapter", ["adapter", "adapter-best", "adapter-last", "."])
def test_a_runs_adapter_is_scored_under_the_runs_model_audio_and_decode(run, tmp_path, adapter):
    run_dir, data, record = run
    out = tmp_path / "t"
    assert main(["--quiet", "transcribe", "--manifest", str(data["main"]), "--adapter", str(run_dir / adapter),
                 "--output-dir", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    tuned = record.tuned["main"].contract
    assert summary["contract"]["audio"] == tuned["audio"] and summary["contract"]["audio"]["rms_target_dbfs"] == -25.0
    assert summary["contract"]["model_sha256"] == tuned["model_sha256"]  # the run's base model, not the default
    assert summary["contract"]["decode"] == tuned["decode"]
    if adapter in ("adapter", "."):  # the selected adapter: the very texts of the run's tuned score
        assert summary["contract"] == tuned
        ours = [json.loads(line)["hyp"] for line in (out / "transcripts.jsonl").read_text().splitlines()]
        theirs = [json.loads(line)["hyp"] for line in
                  (run_dir / "tuned" / "main" / "transcripts.jsonl").read_text().splitlines()]
        assert ours == theirs


def test_a_flag_contradicting_the_run_is_refused_naming_both(run, tmp_path, capsys):
    run_dir, data, _ = run
    assert main(["--quiet", "transcribe", "--manifest", str(data["main"]), "--adapter", str(run_dir / "adapter"),
                 "--output-dir", str(tmp_path / "t"), "--rms-target-dbfs", "-20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rms-target-dbfs -20.0 conflicts with the run" in err
    assert "experiment_config.json: -25.0" in err and not (tmp_path / "t").exists()
    # The same value as the run's is no conflict.
    assert main(["--quiet", "transcribe", "--manifest", str(data["main"]), "--adapter", str(run_dir / "adapter"),
                 "--output-dir", str(tmp_path / "u"), "--rms-target-dbfs", "-25", "--device", "cpu"]) == 0
