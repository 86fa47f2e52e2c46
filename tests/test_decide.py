"""Decision criteria on run folders written through moonlora.runfolder (the real writer)."""

import json
import os
import socket

import pytest

from moonlora.cli import main
from moonlora.comparison import Comparison
from moonlora.configs import ExperimentConfig, TrainConfig
from moonlora.eval.contract import ContractMismatch
from moonlora.verdict.decide import FAIL, NOT_ASSESSED, PASS, DecideConfig, decide
from moonlora.runfolder import (CHECKPOINT_STATE, METRICS_FILE, EvalSummary, ExportParity, ParitySet, RunLock,
                                RunRecord, RunRecordError, TrainingSummary, checkpoint_staging, process_alive,
                                publish_checkpoint, write_config_dict, write_record)

CONTRACT = {"manifest_sha256": "m" * 64, "audio": {"sample_rate": 16000}, "normalizer": {"name": "whisper-english"},
            "decode": {"num_beams": 1}, "model_sha256": "w" * 64, "adapter_sha256": None,
            "runtime": {"name": "torch", "precision": "float32"}}


def comparison(base, tuned, low, high):
    return Comparison(baseline_wer=base, tuned_wer=tuned, delta=tuned - base, ci_low=low, ci_high=high,
                      p_tuned_better=1.0 if high < 0 else 0.4, resamples=1000, seed=0, clips=20, confidence=0.95)


def summary(wer, contract):
    return EvalSummary(wer=wer, cer=wer / 2, raw_wer=wer, clips=20, hours=0.01, flags={}, wer_by_duration=[],
                       contract=contract)


def training(losses):
    return TrainingSummary(steps=len(losses), best_step=len(losses), best_val_wer=0.2, stop_reason=None,
                           skipped_updates=0, train_clips=50, processes=1, samples=8 * len(losses),
                           epochs=1.0, train_seconds=10.0, interval_eval_seconds=1.0, checkpoint_seconds=0.5,
                           samples_per_second=8.0, lora_delta_norm=1.2,
                           losses=[{"step": i + 1, "loss": v, "lr": 1e-3, "skipped": False}
                                   for i, v in enumerate(losses)],
                           intervals=[])


def plant(root, name, seed=1, main=(0.5, 0.2, -0.35, -0.25), canary=(0.1, 0.1, -0.02, 0.002),
          losses=(1.0, 0.8, 0.5, 0.3), contract=None, lr=1e-3, status="success", reason=None, phase="done",
          extra=None, **record_fields):
    """A run folder written by runfolder.write_record / write_config_dict, like `moonlora experiment` does."""
    run = root / name
    run.mkdir(parents=True)
    config = ExperimentConfig(output_dir=str(run), dataset_path="train.jsonl", manifest_path="test.jsonl",
                              train=TrainConfig(seed=seed, learning_rate=lr))
    base_contract = contract or CONTRACT
    sets = (("main", main), ("canary", canary)) + ((("extra-clean", extra),) if extra else ())
    record = RunRecord(
        run_id=name, config=config, status=status, reason=reason, phase=phase,
        command=f"moonlora experiment --output-dir {run} --seed {seed}", started_at="2026-02-01T09:00:00+00:00",
        baseline={n: summary(c[0], base_contract) for n, c in sets},
        tuned={n: summary(c[1], {**base_contract, "adapter_sha256": "a" * 64}) for n, c in sets},
        comparisons={n: comparison(*c) for n, c in sets},
        training=training(losses), **record_fields)
    write_config_dict(run, config.to_dict())
    write_record(run, record)
    return run


def dead_pid():
    """A pid (near the top of Linux's pid range) that no process has."""
    pid = 4194000
    while process_alive(pid):
        pid += 1
    return pid


def publish(run, step):
    staging = checkpoint_staging(run, step)
    (staging / CHECKPOINT_STATE).write_bytes(b"trainer state at step %d" % step)
    publish_checkpoint(run, staging, step)


def outcomes(decision, criterion):
    return [v.outcome for v in decision.verdicts if v.criterion == criterion]


def details(decision, criterion):
    return [v.detail for v in decision.verdicts if v.criterion == criterion]


def test_a_clear_gain_passes_primary_secondary_sanity(tmp_path):
    decision = decide([plant(tmp_path, "a")])
    assert outcomes(decision, "primary") == [PASS]
    assert outcomes(decision, "secondary") == [PASS]
    assert outcomes(decision, "sanity") == [PASS]
    assert outcomes(decision, "reproducibility") == [NOT_ASSESSED]
    assert details(decision, "primary") == ["a: main WER 0.5000 -> 0.2000, delta -0.3000 [-0.3500, -0.2500]"]
    assert decision.runs == ["a"] and decision.passed


def test_ci_touching_zero_fails_primary(tmp_path):
    decision = decide([plant(tmp_path, "a", main=(0.5, 0.45, -0.1, 0.01))])
    assert outcomes(decision, "primary") == [FAIL]
    assert decision.passed is False


def test_significantly_worse_extra_fails_secondary(tmp_path):
    decision = decide([plant(tmp_path, "a", canary=(0.1, 0.3, 0.1, 0.3))])
    assert outcomes(decision, "secondary") == [FAIL]
    assert details(decision, "secondary") == ["a: canary WER 0.1000 -> 0.3000, delta +0.2000 [+0.1000, +0.3000]; "
                                              "not shown non-inferior (CI high +0.3000 > margin 0.01)"]


def test_a_canary_going_from_10_to_19_percent_on_13_clips_fails_secondary(tmp_path):
    # The CI's low end is below 0 (13 clips cannot show a difference), which the old rule passed.
    decision = decide([plant(tmp_path, "a", canary=(0.10, 0.19, -0.01, 0.21))])
    assert outcomes(decision, "secondary") == [FAIL]
    assert decision.passed is False


def test_each_extra_manifest_is_judged_apart_so_the_canary_cannot_mask_a_worse_clean_set(tmp_path):
    decision = decide([plant(tmp_path, "a", extra=(0.05, 0.08, 0.01, 0.05))])
    assert outcomes(decision, "secondary") == [PASS, FAIL]
    assert [d.split(" WER")[0] for d in details(decision, "secondary")] == ["a: canary", "a: extra-clean"]
    loose = decide([plant(tmp_path, "b", extra=(0.05, 0.08, 0.01, 0.05))], DecideConfig(margin=0.06))
    assert outcomes(loose, "secondary") == [PASS, PASS] and loose.thresholds.margin == 0.06


@pytest.mark.parametrize("tuned, expected", [(0.52, PASS), (0.525, PASS), (0.53, FAIL), (0.30, PASS)])
def test_h3_band_of_five_percent_around_the_baseline(tmp_path, tuned, expected):
    decision = decide([plant(tmp_path, "a", main=(0.5, tuned, tuned - 0.5 - 0.02, tuned - 0.5 + 0.02))])
    assert outcomes(decision, "H3 (within band)") == [expected]
    assert "limit 0.5250 = baseline x (1 + 0.05)" in details(decision, "H3 (within band)")[0]
    assert outcomes(decide([plant(tmp_path, "w", main=(0.5, 0.53, 0.01, 0.05))], DecideConfig(h3_band=0.1)),
                    "H3 (within band)") == [PASS]


def test_a_rise_from_a_zero_baseline_beyond_the_margin_fails_sanity(tmp_path):
    decision = decide([plant(tmp_path, "a", extra=(0.0, 0.02, 0.0, 0.04))])
    assert outcomes(decision, "sanity") == [FAIL]
    assert details(decision, "sanity") == ["a: extra-clean WER rose from 0.0 to 0.0200 (> margin 0.01)"]
    within = decide([plant(tmp_path, "b", extra=(0.0, 0.005, 0.0, 0.01))])
    assert outcomes(within, "sanity") == [PASS]


def test_sanity_catches_flat_loss_and_doubled_wer(tmp_path):
    flat = decide([plant(tmp_path, "a", losses=(1.0, 1.1, 1.2, 1.3))])
    assert outcomes(flat, "sanity") == [FAIL]
    assert details(flat, "sanity") == ["a: training loss did not decrease"]
    doubled = decide([plant(tmp_path, "b", canary=(0.1, 0.25, 0.1, 0.2))])
    assert outcomes(doubled, "sanity") == [FAIL]
    assert details(doubled, "sanity") == ["b: canary WER more than 2x (0.1000 -> 0.2500)"]


def test_seed_pair_that_agrees_and_one_that_disagrees(tmp_path):
    agree = decide([plant(tmp_path, "s1", seed=1), plant(tmp_path, "s2", seed=2)])
    assert outcomes(agree, "reproducibility") == [PASS]
    assert details(agree, "reproducibility") == ["s1 (seed 1): pass, s2 (seed 2): pass"]
    disagree = decide([plant(tmp_path, "s3", seed=3), plant(tmp_path, "s4", seed=4, main=(0.5, 0.48, -0.05, 0.02))])
    assert outcomes(disagree, "reproducibility") == [FAIL]
    assert details(disagree, "reproducibility") == ["s3 (seed 3): pass, s4 (seed 4): fail"]
    # Runs that differ in more than the seed are not a reproducibility pair.
    other_lr = decide([plant(tmp_path, "l1", seed=5), plant(tmp_path, "l2", seed=6, lr=1e-4)])
    assert outcomes(other_lr, "reproducibility") == [NOT_ASSESSED]


def test_contract_mismatch_is_refused_naming_the_field(tmp_path):
    other = {**CONTRACT, "decode": {"num_beams": 4}}
    with pytest.raises(ContractMismatch, match=r"decode\.num_beams \(1 vs 4\)"):
        decide([plant(tmp_path, "a"), plant(tmp_path, "b", seed=2, contract=other)])


@pytest.mark.parametrize("status, reason, expected", [
    ("failed", "boom", "a: failed at training: boom"),
    ("interrupted", None, "a: interrupted at training"),
])
def test_unfinished_run_is_not_assessed_with_where_it_stands(tmp_path, status, reason, expected):
    decision = decide([plant(tmp_path, "a", status=status, reason=reason, phase="training")])
    assert [(v.criterion, v.outcome, v.detail) for v in decision.verdicts[:1]] == [("run", NOT_ASSESSED, expected)]
    assert outcomes(decision, "primary") == [] and outcomes(decision, "sanity") == []
    assert outcomes(decision, "reproducibility") == [NOT_ASSESSED]
    assert decision.passed is False


def test_unfinished_run_beside_a_finished_one_is_judged_apart(tmp_path):
    decision = decide([plant(tmp_path, "ok"), plant(tmp_path, "bad", seed=2, status="failed", reason="boom",
                                                     phase="baseline")])
    assert outcomes(decision, "primary") == [PASS]
    assert details(decision, "run") == ["bad: failed at baseline: boom"]
    assert decision.passed is True  # nothing failed, one criterion passed


def test_running_record_whose_process_died_is_resumable_from_its_checkpoint(tmp_path):
    pid = dead_pid()
    run = plant(tmp_path, "a", status="running", phase="training", pid=pid, host=socket.gethostname())
    publish(run, 2)
    publish(run, 4)
    decision = decide([run])
    assert outcomes(decision, "run") == [NOT_ASSESSED]
    assert details(decision, "run") == [f"a: died at training (pid {pid} on {socket.gethostname()}), "
                                        "resumable from step 4 with --resume"]
    assert outcomes(decision, "primary") == [] and decision.passed is False


def test_died_run_without_a_checkpoint_is_resumable_from_the_start(tmp_path):
    run = plant(tmp_path, "a", status="running", phase="baseline", pid=dead_pid(), host="elsewhere")
    [detail] = details(decide([run]), "run")
    assert detail.startswith("a: died at baseline (pid ") and detail.endswith("resumable from the start with --resume")


def test_running_record_with_a_live_holder_is_still_running(tmp_path):
    run = plant(tmp_path, "a", status="running", phase="training", pid=os.getpid(), host=socket.gethostname())
    with RunLock(run):
        [detail] = details(decide([run]), "run")
    assert detail == f"a: still running at training (pid {os.getpid()} on {socket.gethostname()})"


def test_missing_corrupt_and_older_records_raise_run_record_error(tmp_path):
    with pytest.raises(RunRecordError, match="no run record"):
        decide([tmp_path / "nothing"])
    corrupt = plant(tmp_path, "corrupt")
    (corrupt / METRICS_FILE).write_text("{not json")
    with pytest.raises(RunRecordError, match="unreadable run record"):
        decide([corrupt])
    old = plant(tmp_path, "old")
    data = json.loads((old / METRICS_FILE).read_text())
    del data["schema_version"]
    (old / METRICS_FILE).write_text(json.dumps(data))
    with pytest.raises(RunRecordError, match="schema version 1 was written by an older moonlora"):
        decide([old])


def test_decide_cli_exit_codes(tmp_path):
    assert main(["decide", str(plant(tmp_path, "a")), "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["passed"] is True
    assert main(["decide", str(plant(tmp_path, "b", main=(0.5, 0.6, 0.05, 0.15))),
                 "--json", str(tmp_path / "b.json")]) == 1
    assert json.loads((tmp_path / "b.json").read_text())["passed"] is False
    assert main(["decide", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("stored", ["pass", "inconclusive", "fail"])
def test_export_parity_reports_the_outcome_the_run_stored(tmp_path, stored):
    """decide does not judge the export again (comparison.parity_outcome did, once, in the run): the
    CIs below would pass, so only the stored outcome can give another verdict."""
    to_torch, to_baseline = comparison(0.2, 0.201, -0.004, 0.003), comparison(0.5, 0.201, -0.35, -0.25)
    main = ParitySet(torch_wer=0.2, export_wer=0.201, export_minus_torch=to_torch, export_minus_baseline=to_baseline,
                     text_agreement=0.95, contract=CONTRACT)
    parity = ExportParity(format="ort", folder="export/ort", runtime={"name": "onnxruntime", "precision": "int8"},
                          margin=0.005, outcome=stored, quantization={}, sets={"main": main})
    [verdict] = [v for v in decide([plant(tmp_path, "a", export_parity=parity)]).verdicts
                 if v.criterion == "export parity"]
    assert verdict.outcome == stored
    assert verdict.detail.startswith("a: ort (int8) main WER 0.2000 (torch) -> 0.2010 (export), delta +0.0010 "
                                     "[-0.0040, +0.0030] (margin 0.005)")
    assert verdict.detail.endswith("score more clips to decide") is (stored == "inconclusive")
