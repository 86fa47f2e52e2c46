"""Run settings (moonlora.configs): torch-free, and an experiment config reads back typed from its JSON."""

import json
import subprocess
import sys

import pytest

from moonlora.data.audio import AudioConfig
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig


def test_experiment_config_round_trips_through_json():
    config = ExperimentConfig(
        output_dir="runs/a", dataset_path="train.jsonl", manifest_path="heldout.jsonl", max_seconds=None,
        extra_manifests=("x.jsonl", "y.jsonl"), canary_manifest="canary.jsonl", replay_manifest="replay.jsonl",
        train=TrainConfig(max_steps=7, learning_rate=3e-4, replay_ratio=0.25, device="cpu"),
        lora=LoraSettings(r=4, target_modules=("q_proj", "v_proj")),
        audio=AudioConfig(rms_target_dbfs=-20.0), decode=DecodeConfig(batch_size=8, device="cpu"), resume=True,
    )
    saved = json.loads(json.dumps(config.to_dict()))  # as experiment_config.json holds it: tuples become lists
    loaded = ExperimentConfig.from_dict(saved)
    assert loaded == config
    assert isinstance(loaded.train, TrainConfig) and isinstance(loaded.decode, DecodeConfig)
    assert loaded.lora.target_modules == ("q_proj", "v_proj") and loaded.extra_manifests == ("x.jsonl", "y.jsonl")
    assert ExperimentConfig.from_dict(ExperimentConfig("o", "d", "m").to_dict()) == ExperimentConfig("o", "d", "m")


def test_from_dict_validates_and_refuses_unknown_fields():
    data = ExperimentConfig("o", "d", "m").to_dict()
    with pytest.raises(ValueError):
        ExperimentConfig.from_dict({**data, "decode": {**data["decode"], "dtype": "int4"}})
    with pytest.raises(TypeError):
        ExperimentConfig.from_dict({**data, "train": {**data["train"], "no_such_setting": 1}})


def test_configs_contract_and_report_tables_load_without_the_model_stack():
    code = ("import sys, moonlora.configs, moonlora.eval.contract, moonlora.verdict.tables; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft', 'accelerate'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
