"""Decision criteria on planted run folders."""

import json

import pytest

from moonlora.cli import main
from moonlora.contract import ContractMismatch
from moonlora.decide import FAIL, NOT_ASSESSED, PASS, RunUnreadable, decide

CONTRACT = {"manifest_sha256": "m" * 64, "audio": {"sample_rate": 16000}, "normalizer": {"name": "whisper-english"},
            "decode": {"num_beams": 1}, "model_sha256": "w" * 64, "adapter_sha256": None}


def comparison(base, tuned, low, high):
    return {"baseline_wer": base, "tuned_wer": tuned, "delta": tuned - base, "ci_low": low, "ci_high": high,
            "p_tuned_better": 1.0 if high < 0 else 0.4}


def plant(root, name, seed=1, main=(0.5, 0.2, -0.35, -0.25), canary=(0.1, 0.1, -0.02, 0.02),
          losses=(1.0, 0.8, 0.5, 0.3), contract=None, lr=1e-3):
    run = root / name
    run.mkdir(parents=True)
    config = {"output_dir": str(run), "dataset_path": "train.jsonl", "manifest_path": "test.jsonl",
              "train": {"seed": seed, "learning_rate": lr}, "resume": False, "overwrite": False}
    base_contract = contract or CONTRACT
    metrics = {
        "run_id": name, "status": "success", "reason": None, "config": config,
        "baseline": {n: {"wer": c[0], "contract": base_contract} for n, c in (("main", main), ("canary", canary))},
        "comparisons": {"main": comparison(*main), "canary": comparison(*canary)},
        "training": {"losses": [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]},
    }
    (run / "experiment_config.json").write_text(json.dumps(config))
    (run / "experiment_metrics.json").write_text(json.dumps(metrics))
    return run


def outcomes(decision, criterion):
    return [v.outcome for v in decision.verdicts if v.criterion == criterion]


def test_a_clear_gain_passes_primary_secondary_sanity(tmp_path):
    decision = decide([plant(tmp_path, "a")])
    assert outcomes(decision, "primary") == [PASS]
    assert outcomes(decision, "secondary") == [PASS]
    assert outcomes(decision, "sanity") == [PASS]
    assert outcomes(decision, "reproducibility") == [NOT_ASSESSED]
    assert decision.passed


def test_ci_touching_zero_fails_primary(tmp_path):
    decision = decide([plant(tmp_path, "a", main=(0.5, 0.45, -0.1, 0.01))])
    assert outcomes(decision, "primary") == [FAIL] and not decision.passed


def test_significantly_worse_extra_fails_secondary(tmp_path):
    decision = decide([plant(tmp_path, "a", canary=(0.1, 0.3, 0.1, 0.3))])
    assert outcomes(decision, "secondary") == [FAIL]


def test_sanity_catches_flat_loss_and_doubled_wer(tmp_path):
    flat = decide([plant(tmp_path, "a", losses=(1.0, 1.1, 1.2, 1.3))])
    assert outcomes(flat, "sanity") == [FAIL] and "loss did not decrease" in flat.verdicts[2].detail
    doubled = decide([plant(tmp_path, "b", canary=(0.1, 0.25, 0.1, 0.2))])
    assert outcomes(doubled, "sanity") == [FAIL] and "canary WER more than doubled" in doubled.verdicts[2].detail


def test_seed_pair_that_agrees_and_one_that_disagrees(tmp_path):
    agree = decide([plant(tmp_path, "s1", seed=1), plant(tmp_path, "s2", seed=2)])
    assert outcomes(agree, "reproducibility") == [PASS]
    disagree = decide([plant(tmp_path, "s3", seed=3), plant(tmp_path, "s4", seed=4, main=(0.5, 0.48, -0.05, 0.02))])
    assert outcomes(disagree, "reproducibility") == [FAIL]
    assert "s4 (seed 4): fail" in disagree.verdicts[-1].detail
    # Runs that differ in more than the seed are not a reproducibility pair.
    other_lr = decide([plant(tmp_path, "l1", seed=5), plant(tmp_path, "l2", seed=6, lr=1e-4)])
    assert outcomes(other_lr, "reproducibility") == [NOT_ASSESSED]


def test_contract_mismatch_is_refused_naming_the_field(tmp_path):
    other = {**CONTRACT, "decode": {"num_beams": 4}}
    with pytest.raises(ContractMismatch, match="decode.num_beams"):
        decide([plant(tmp_path, "a"), plant(tmp_path, "b", seed=2, contract=other)])


def test_unfinished_run_is_refused(tmp_path):
    run = plant(tmp_path, "a")
    metrics = json.loads((run / "experiment_metrics.json").read_text())
    (run / "experiment_metrics.json").write_text(json.dumps({**metrics, "status": "failed", "reason": "boom"}))
    with pytest.raises(RunUnreadable, match="failed"):
        decide([run])


def test_decide_cli_exit_codes(tmp_path, capsys):
    assert main(["decide", str(plant(tmp_path, "a")), "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["passed"] is True
    assert main(["decide", str(plant(tmp_path, "b", main=(0.5, 0.6, 0.05, 0.15)))]) == 1
    assert main(["decide", str(tmp_path / "nothing")]) == 2
    assert "experiment_metrics.json" in capsys.readouterr().err
