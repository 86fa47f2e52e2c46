"""Fault injection on the tiny model, in subprocesses through the CLI: a kill -9 mid-step and at
every point of a checkpoint save, SIGINT and SIGTERM inside an interval evaluation. Each run is
then resumed and must end exactly where an uninterrupted run ends: same best step, same adapter
tensors (<= 1e-6), same tuned WER, no manual step, and no baseline decoded twice."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from moonlora.train import experiment as experiment_module
from moonlora.cli import main
from moonlora.verdict.decide import decide
from moonlora.verdict.report import build_report
from moonlora.runfolder import CHECKPOINT_STATE, read_record

from conftest import tone_set

# Interval val WER planted so that the best step is 4, in the middle: an interrupted run that
# skipped or repeated the step-4 evaluation would choose another step and another adapter.
PLANTED_VAL_WER = {2: 1.4, 4: 1.0, 6: 1.2}


def plant_val_wer(module) -> None:
    real = module.evaluate_sets

    def evaluate_sets(loaded, sets, config, out_dir, progress, label):
        results = real(loaded, sets, config, out_dir, progress, label)
        if label.startswith("step ") and "val" in results:
            corpus = dataclasses.replace(results["val"].corpus, wer=PLANTED_VAL_WER[int(label.split()[1])])
            results["val"] = dataclasses.replace(results["val"], corpus=corpus)
        return results

    module.evaluate_sets = evaluate_sets

# The driver runs `moonlora experiment` in a fresh process with one fault planted.
DRIVER = textwrap.dedent('''
    import os, pathlib, signal, sys, time
    # A process a non-interactive shell starts in the background inherits SIGINT ignored, and Python
    # then keeps it ignored; these tests are about what moonlora does when SIGINT does reach it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from moonlora import cli, runfolder
    from moonlora.train import experiment
    from moonlora.train import loop as train
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from test_fault_injection import plant_val_wer
    plant_val_wer(experiment)
    fault = os.environ["FAULT"]
    saves = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def at_third_save(make):
        def wrapper(original):
            def call(*args, **kwargs):
                result = original(*args, **kwargs)
                if saves["n"] == 3 and make(*args):
                    die()
                return result
            return call
        return wrapper

    real_staging = train.checkpoint_staging
    def staging(run_dir, step):
        saves["n"] += 1
        folder = real_staging(run_dir, step)
        if fault == "save:staged" and saves["n"] == 3:
            die()
        return folder
    train.checkpoint_staging = staging
    if fault == "save:state-written":
        train.write_bytes_atomic = at_third_save(lambda path, data: True)(train.write_bytes_atomic)
    if fault == "save:sealed":
        runfolder.write_json = at_third_save(lambda path, *a: path.name == "checkpoint.json")(runfolder.write_json)
    if fault == "save:renamed":
        real_rename = pathlib.Path.rename
        def rename(self, target):
            result = real_rename(self, target)
            if saves["n"] == 3 and pathlib.Path(target).name.startswith("step-"):
                die()
            return result
        pathlib.Path.rename = rename
    if fault == "save:pruning":
        real_remove = runfolder.remove_path
        def remove_path(path):
            if saves["n"] == 3 and path.name.startswith("step-"):
                (path / "checkpoint.json").unlink()  # half removed, then killed
                die()
            return real_remove(path)
        runfolder.remove_path = remove_path
    if fault == "step":
        real_loss, calls = train.batch_loss, {"n": 0}
        def batch_loss(*args):
            calls["n"] += 1
            if calls["n"] == 7:  # the first micro-batch of step 4, after step 3 was logged
                die()
            return real_loss(*args)
        train.batch_loss = batch_loss
    if fault in ("sigint-eval", "sigterm-eval"):
        real_sets = experiment.evaluate_sets
        number = signal.SIGINT if fault == "sigint-eval" else signal.SIGTERM
        def evaluate_sets(loaded, sets, config, out_dir, progress, label):
            if label == "step 4":
                os.kill(os.getpid(), number)
                time.sleep(30)
            return real_sets(loaded, sets, config, out_dir, progress, label)
        experiment.evaluate_sets = evaluate_sets
    sys.exit(cli.main(sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("faults")
    data = {"train": tone_set(root / "d", "train", 12), "main": tone_set(root / "d", "main", 4, seed0=50),
            "canary": tone_set(root / "d", "canary", 3, seed0=80)}
    driver = root / "driver.py"
    driver.write_text(DRIVER)

    def argv(out):
        return ["--quiet", "experiment", "--output-dir", str(out), "--dataset-path", str(data["train"]),
                "--manifest-path", str(data["main"]), "--canary-manifest", str(data["canary"]), "--canary-margin", "10",
                "--model", str(tiny_model_dir), "--device", "cpu", "--max-steps", "6", "--eval-interval", "2",
                "--learning-rate", "5e-3", "--batch-size", "2", "--grad-accum", "2", "--seed", "3", "--lora-r", "2",
                "--lora-alpha", "4", "--lora-dropout", "0.1", "--decode-batch-size", "8", "--min-val-clips", "1"]

    reference = root / "reference"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment_module, "evaluate_sets", experiment_module.evaluate_sets)
        plant_val_wer(experiment_module)
        assert main(argv(reference)) == 0
    assert read_record(reference).training.best_step == 4
    return {"root": root, "driver": driver, "argv": argv, "reference": reference}


def run_with_fault(setup, fault, name):
    out = setup["root"] / name
    env = {**os.environ, "FAULT": fault, "PYTHONPATH": os.pathsep.join(sys.path),
           "TESTS_DIR": os.path.dirname(__file__)}
    done = subprocess.run([sys.executable, str(setup["driver"]), *setup["argv"](out)], env=env, capture_output=True,
                          text=True, timeout=300)
    return out, done


def resume_and_compare(setup, out, monkeypatch):
    """Resume in this process (counting baseline decodes) and compare with the uninterrupted run."""
    monkeypatch.setattr(experiment_module, "evaluate_sets", experiment_module.evaluate_sets)
    plant_val_wer(experiment_module)
    labels, real_sets = [], experiment_module.evaluate_sets

    def counting(loaded, sets, config, out_dir, progress, label):
        labels.extend(f"{label} {name}" for name in sets)
        return real_sets(loaded, sets, config, out_dir, progress, label)

    monkeypatch.setattr(experiment_module, "evaluate_sets", counting)
    assert main([*setup["argv"](out), "--resume"]) == 0
    assert not [label for label in labels if label.startswith("baseline")]  # the first leg's baseline is reused
    reference, resumed = read_record(setup["reference"]), read_record(out)
    assert resumed.status == "success" and resumed.training.best_step == reference.training.best_step
    assert [r["step"] for r in resumed.training.intervals] == [r["step"] for r in reference.training.intervals]
    assert resumed.tuned["main"].wer == reference.tuned["main"].wer
    expected = load_file(setup["reference"] / "adapter" / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) <= 1e-6
    last = "step-00000006/" + CHECKPOINT_STATE  # the trained (not only the chosen) adapter matches too
    trained = [torch.load(folder / "checkpoints" / last, weights_only=False)["adapter"] for folder in (setup["reference"], out)]
    assert max(float((trained[0][k] - trained[1][k]).abs().max()) for k in trained[0]) <= 1e-6
    assert max(float(t.abs().max()) for k, t in trained[0].items() if "lora_B" in k) > 0
    complete = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert complete == ["step-00000004", "step-00000006"]
    return resumed


@pytest.mark.parametrize("point", ["staged", "state-written", "sealed", "renamed", "pruning"])
def test_kill_at_every_point_of_a_checkpoint_save_then_resume(setup, point, monkeypatch):
    out, done = run_with_fault(setup, f"save:{point}", f"save-{point}")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert read_record(out).status == "running"  # a kill -9 leaves no chance to write anything else
    resume_and_compare(setup, out, monkeypatch)


def test_kill_mid_step_is_shown_as_died_and_resumes_exactly(setup, monkeypatch):
    out, done = run_with_fault(setup, "step", "step-kill")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    record = read_record(out)
    assert record.status == "running" and record.phase == "training"
    verdict = [v for v in decide([out]).verdicts if v.criterion == "run"]
    assert verdict and verdict[0].outcome == "not assessed"
    assert "died at training" in verdict[0].detail and "resumable from step 2" in verdict[0].detail
    report = build_report(setup["root"], out_markdown=setup["root"] / "r.md", out_html=setup["root"] / "r.html",
                          overwrite=True)
    assert "died at training" in report.markdown
    resumed = resume_and_compare(setup, out, monkeypatch)
    assert [leg.resumed_from_step for leg in resumed.legs] == [None, 2]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # one stream, no repeats
    assert [event.step for event in events.Scalars("wer/val")] == [0, 2, 4, 6]


@pytest.mark.parametrize("fault", ["sigint-eval", "sigterm-eval"])
def test_signal_inside_an_interval_eval_resumes_to_the_same_choice(setup, fault, monkeypatch):
    out, done = run_with_fault(setup, fault, fault)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    record = read_record(out)
    assert record.status == "interrupted" and record.phase == "training"
    assert [r["step"] for r in record.training.intervals] == [0, 2]  # the step-4 eval was cut off
    resume_and_compare(setup, out, monkeypatch)


def test_truncated_newest_checkpoint_falls_back_before_any_decoding(setup, monkeypatch):
    out, done = run_with_fault(setup, "save:sealed", "truncated")
    assert done.returncode == -signal.SIGKILL
    newest = out / "checkpoints" / "step-00000004" / CHECKPOINT_STATE
    newest.write_bytes(newest.read_bytes()[:100])
    order, real_find = [], experiment_module.find_resume_checkpoint

    def find(*args, **kwargs):
        order.append("checkpoint")
        return real_find(*args, **kwargs)

    monkeypatch.setattr(experiment_module, "find_resume_checkpoint", find)
    real_load = experiment_module.load_model
    monkeypatch.setattr(experiment_module, "load_model", lambda *a, **k: order.append("model") or real_load(*a, **k))
    resumed = resume_and_compare(setup, out, monkeypatch)
    assert order[:2] == ["checkpoint", "model"]
    assert any("step-00000004" in note and "truncated" in note for note in resumed.notes)
    assert resumed.legs[-1].resumed_from_step == 2
    json.loads((out / "experiment_metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
