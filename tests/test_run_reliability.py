"""Run folders you can trust, on the tiny model: early stops, honest timing, step-0 reuse, the
lock, the output policy of `experiment`, failures before training, disk full, strict JSON."""

import dataclasses
import errno
import json
import time
from pathlib import Path

import pytest

from conftest import tone_set
from moonlora.train import experiment as experiment_module
from moonlora import outputs
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.verdict.decide import decide
from moonlora.train.experiment import run_experiment
from moonlora.outputs import OutputError, OutputExists
from moonlora.runfolder import RunLock, RunLocked, read_record
from moonlora.errors import ModelSourceError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {"train": tone_set(folder, "train", 12), "main": tone_set(folder, "main", 4, seed0=50),
            "canary": tone_set(folder, "canary", 3, seed0=80)}


def config_for(model_dir, data, out, canary_margin=10.0, wer_stop_threshold=None, **train_changes):
    train = dict(max_steps=4, learning_rate=5e-3, batch_size=2, grad_accum=2, eval_interval=2, seed=3, device="cpu")
    train.update(train_changes)
    return ExperimentConfig(
        output_dir=str(out), dataset_path=str(data["train"]), manifest_path=str(data["main"]), model=str(model_dir),
        canary_manifest=str(data["canary"]), canary_margin=canary_margin, wer_stop_threshold=wer_stop_threshold,
        bootstrap_resamples=200, min_val_clips=1, train=TrainConfig(**train), lora=LoraSettings(r=2, alpha=4, dropout=0.1),
        decode=DecodeConfig(batch_size=8, device="cpu"),
    )


def plant_interval_wer(monkeypatch, **planted):
    """Interval evaluations report the planted corpus WER for the named sets (val=..., canary=...)."""
    original = experiment_module.evaluate_sets

    def evaluate_sets(loaded, sets, config, out_dir, progress, label):
        results = original(loaded, sets, config, out_dir, progress, label)
        if label.startswith("step"):
            for name, wer in planted.items():
                if name in results:
                    corpus = dataclasses.replace(results[name].corpus, wer=wer)
                    results[name] = dataclasses.replace(results[name], corpus=corpus)
        return results

    monkeypatch.setattr(experiment_module, "evaluate_sets", evaluate_sets)


def test_val_wer_regression_stops_early(tiny_model_dir, data, tmp_path, monkeypatch):
    plant_interval_wer(monkeypatch, val=50.0)
    record = run_experiment(config_for(tiny_model_dir, data, tmp_path / "r", wer_stop_threshold=1.1, max_steps=6),
                            progress=False)
    assert record.status == "stopped_early" and record.reason.startswith("val WER 50.0000 > baseline")
    assert record.training.steps == 2 and record.training.best_step == 0
    assert read_record(tmp_path / "r").status == "stopped_early"


def test_canary_margin_stops_early(tiny_model_dir, data, tmp_path, monkeypatch):
    plant_interval_wer(monkeypatch, canary=50.0)
    record = run_experiment(config_for(tiny_model_dir, data, tmp_path / "c", canary_margin=0.02, max_steps=6),
                            progress=False)
    assert record.status == "stopped_early" and record.reason.startswith("canary WER 50.0000 > baseline + 0.02")
    assert record.training.steps == 2


def test_step_zero_reuses_the_baseline_and_timing_excludes_evaluations(tiny_model_dir, data, tmp_path, monkeypatch):
    labels, original = [], experiment_module.evaluate_sets

    def slow_evaluate_sets(loaded, sets, config, out_dir, progress, label):
        labels.append(label)
        if label.startswith("step"):
            time.sleep(1.0)
        return original(loaded, sets, config, out_dir, progress, label)

    train_walls, original_train = [], experiment_module.train

    def timed_train(*args, **kwargs):  # the wall time of the whole training call, evaluations included
        start = time.perf_counter()
        try:
            return original_train(*args, **kwargs)
        finally:
            train_walls.append(time.perf_counter() - start)

    monkeypatch.setattr(experiment_module, "evaluate_sets", slow_evaluate_sets)
    monkeypatch.setattr(experiment_module, "train", timed_train)
    record = run_experiment(config_for(tiny_model_dir, data, tmp_path / "t", max_steps=4, eval_interval=2),
                            progress=False)
    assert labels[:4] == ["baseline", "step 2", "step 4", "tuned"]  # no decoding at step 0
    assert labels[4:] == ([] if record.training.best_step == 4 else ["last adapter"])  # the other candidate
    zero = record.training.intervals[0]
    assert zero["step"] == 0 and zero["val_wer"] == record.baseline["val"].wer and zero["lora_delta_norm"] == 0
    assert record.training.interval_eval_seconds >= 2.0
    # both sleeps are outside the training time, however slow the machine is: what the training call took,
    # less the two seconds of sleep, bounds the training time from above
    assert record.training.train_seconds <= train_walls[0] - 2.0
    assert record.training.samples == 4 * 2 * 2
    assert record.training.samples_per_second == pytest.approx(16 / record.training.train_seconds)


def test_best_step_zero_is_explained(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    plant_interval_wer(monkeypatch, val=99.0)
    record = run_experiment(config_for(tiny_model_dir, data, tmp_path / "z", max_steps=2), progress=False)
    assert record.training.best_step == 0
    assert any(note.startswith("best step 0:") and "--learning-rate" in note for note in record.notes)
    assert "best step 0:" in capsys.readouterr().err


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tiny_model_dir, data, tmp_path):
    run_dir = tmp_path / "busy"
    run_experiment(config_for(tiny_model_dir, data, run_dir, max_steps=1), progress=False)
    with RunLock(run_dir):
        resume = dataclasses.replace(config_for(tiny_model_dir, data, run_dir, max_steps=1), resume=True)
        with pytest.raises((RunLocked, OutputExists)):
            run_experiment(resume, progress=False)
        again = dataclasses.replace(config_for(tiny_model_dir, data, run_dir, max_steps=1), overwrite=True)
        with pytest.raises(RunLocked, match="in use by process"):
            run_experiment(again, progress=False)
    assert read_record(run_dir).status == "success"  # nothing was removed


def test_overwrite_replaces_only_a_moonlora_run(tiny_model_dir, data, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExists, match="no moonlora marker"):
        run_experiment(dataclasses.replace(config_for(tiny_model_dir, data, foreign), overwrite=True), progress=False)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    run_dir = tmp_path / "run"
    run_experiment(config_for(tiny_model_dir, data, run_dir, max_steps=1), progress=False)
    (run_dir / "my_notes.txt").write_text("keep")
    record = run_experiment(dataclasses.replace(config_for(tiny_model_dir, data, run_dir, max_steps=2), overwrite=True),
                            progress=False)
    assert record.training.steps == 2 and (run_dir / "my_notes.txt").read_text() == "keep"


def test_a_run_that_failed_before_training_can_be_rerun_without_overwrite(tiny_model_dir, data, tmp_path):
    run_dir = tmp_path / "typo"
    broken = dataclasses.replace(config_for(tiny_model_dir, data, run_dir, max_steps=1), model=str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="not a folder, a hub id"):
        run_experiment(broken, progress=False)
    first = read_record(run_dir)
    assert first.status == "failed" and first.phase == "setup"
    record = run_experiment(config_for(tiny_model_dir, data, run_dir, max_steps=1), progress=False)
    assert record.status == "success" and len(record.legs) == 1
    with pytest.raises(OutputExists):  # a run that trained is never replaced without --overwrite
        run_experiment(config_for(tiny_model_dir, data, run_dir, max_steps=1), progress=False)


def test_bad_manifest_fails_before_the_folder_is_touched(tiny_model_dir, data, tmp_path):
    config = dataclasses.replace(config_for(tiny_model_dir, data, tmp_path / "never"), manifest_path=str(tmp_path / "x.jsonl"))
    with pytest.raises(Exception, match="x.jsonl"):
        run_experiment(config, progress=False)
    assert not (tmp_path / "never").exists()


def test_disk_full_during_a_checkpoint_fails_cleanly_and_resume_works(tiny_model_dir, data, tmp_path, monkeypatch):
    run_dir = tmp_path / "full"
    real_fsync = outputs.os.fsync

    def fsync(handle):
        if any(p.name.startswith(".step-00000004") for p in (run_dir / "checkpoints").glob(".*")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(handle)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    config = config_for(tiny_model_dir, data, run_dir, max_steps=4, eval_interval=2)
    with pytest.raises(OutputError, match="disk full while writing trainer_state.pt"):
        run_experiment(config, progress=False)
    monkeypatch.undo()
    record = read_record(run_dir)
    assert record.status == "failed" and "disk full" in record.reason and record.phase == "training"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert leftovers == ["step-00000002"]  # no partial checkpoint
    resumed = run_experiment(dataclasses.replace(config, resume=True), progress=False)
    assert resumed.status == "success" and resumed.training.steps == 4


def test_every_json_a_run_writes_is_strict(tiny_model_dir, data, tmp_path):
    run_dir = tmp_path / "strict"
    run_experiment(config_for(tiny_model_dir, data, run_dir, max_steps=2, eval_interval=1), progress=False)
    files = [p for p in run_dir.rglob("*") if p.suffix in (".json", ".jsonl")]
    assert len(files) >= 10
    for path in files:
        for line in (path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]):
            json.loads(line, parse_constant=lambda name: pytest.fail(f"{path}: non-standard JSON {name}"))
    decision = decide([run_dir])
    assert decision.runs == ["strict"]


def test_skipped_and_filtered_rows_are_printed_and_reported(tiny_model_dir, data, tmp_path, capsys):
    from moonlora.verdict.report import build_report

    rows = [json.loads(line) for line in data["train"].read_text().splitlines()]
    rows[0]["audio_filepath"] = str(data["train"].parent / rows[0]["audio_filepath"])
    rows.append({**rows[0], "text": "?!"})  # a reference without words: skipped, never scored
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({**r, "audio_filepath": str(data["train"].parent / Path(r["audio_filepath"]).name)})
                             + "\n" for r in rows))
    config = dataclasses.replace(config_for(tiny_model_dir, data, tmp_path / "runs" / "s", max_steps=1),
                                 dataset_path=str(train), max_seconds=1.5)
    record = run_experiment(config, progress=False)
    skipped = next(n for n in record.notes if n.startswith("training manifest"))
    assert "skipped 1 row(s) (text_normalizes_to_nothing 1)" in skipped
    dropped = next(n for n in record.notes if n.startswith("--max-seconds 1.5"))
    kept = sum(1 for r in rows[:-1] if 0.8 + 0.25 * (int(Path(r["audio_filepath"]).stem[5:]) % 5) <= 1.5)
    assert f"dropped {len(rows) - 1 - kept} training clip(s)" in dropped and " h)" in dropped
    err = capsys.readouterr().err
    assert skipped in err and dropped in err
    report = build_report(tmp_path / "runs")
    assert "text_normalizes_to_nothing 1" in report.markdown and "dropped" in report.markdown
    assert "text_normalizes_to_nothing 1" in report.html_path.read_text()
