"""The plan's checklist inside `moonlora experiment`: val split size, leakage, headroom, sufficiency."""

import dataclasses
import json

import pytest

from conftest import tone_set
from moonlora.train import experiment as experiment_module
from moonlora.cli import main
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.runfolder import HeadroomCheck, SufficiencyCheck, ValSplitCheck
from moonlora.train.experiment import run_experiment


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {"train": tone_set(folder, "train", 12), "main": tone_set(folder, "main", 4, seed0=50)}


def argv(tiny_model_dir, data, out, *extra):
    return ["--quiet", "experiment", "--output-dir", str(out), "--dataset-path", str(data["train"]),
            "--manifest-path", str(data["main"]), "--model", str(tiny_model_dir), "--device", "cpu",
            "--max-steps", "2", "--eval-interval", "1", "--batch-size", "2", "--grad-accum", "1", "--lora-r", "2",
            *extra]


def test_a_val_split_of_three_clips_is_refused_before_the_folder_exists(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv(tiny_model_dir, data, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data['train']}: the val split has 3 clip(s), fewer than --min-val-clips 10" in err
    assert not out.exists()


def test_leakage_is_refused_naming_the_rows_unless_allowed(tiny_model_dir, data, tmp_path, capsys):
    train_rows = data["train"].read_text().splitlines()
    leaky = tmp_path / "leaky.jsonl"  # row 2 copies the training manifest's row 5 (same audio, text, speaker)
    first = json.loads(data["main"].read_text().splitlines()[0])
    copied = json.loads(train_rows[4])
    rows = [{**first, "audio_filepath": str(data["main"].parent / first["audio_filepath"])},
            {**copied, "audio_filepath": str(data["train"].parent / copied["audio_filepath"])}]
    leaky.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main([*argv(tiny_model_dir, data, out, "--min-val-clips", "1"), "--manifest-path",
                 str(leaky)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leakage between training and evaluated data" in err
    for kind in ("audio", "transcript"):
        assert f"1 {kind}(s) shared by train and main ({data['train']}:5 = {leaky}:2)" in err
    assert f"1 speaker(s) shared by train and main ({data['train']}:1 = {leaky}:2)" in err  # first row of that speaker
    assert "--allow-leakage" in err and not out.exists()
    assert main([*argv(tiny_model_dir, data, out, "--min-val-clips", "1"), "--manifest-path", str(leaky),
                 "--allow-leakage"]) == 0
    record = json.loads((out / "experiment_metrics.json").read_text())
    leakage = record["checklist"]["leakage"]
    assert leakage["allowed"] and {f["kind"] for f in leakage["found"]} == {"audio", "transcript", "speaker"}
    assert any(note.startswith("leakage accepted") for note in record["notes"])


def test_low_headroom_and_few_clips_are_warned_and_recorded(tiny_model_dir, data, tmp_path, monkeypatch):
    original = experiment_module.evaluate_sets

    def planted_baseline(loaded, sets, config, out_dir, progress, label):
        results = original(loaded, sets, config, out_dir, progress, label)
        if label == "baseline" and "main" in results:
            corpus = dataclasses.replace(results["main"].corpus, wer=0.02)
            results["main"] = dataclasses.replace(results["main"], corpus=corpus)
        return results

    monkeypatch.setattr(experiment_module, "evaluate_sets", planted_baseline)
    config = ExperimentConfig(
        output_dir=str(tmp_path / "run"), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), bootstrap_resamples=100, min_val_clips=1,
        train=TrainConfig(max_steps=1, batch_size=2, grad_accum=1, eval_interval=1, seed=3, device="cpu"),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0), decode=DecodeConfig(batch_size=8, device="cpu"))
    record = run_experiment(config, progress=False)
    assert record.checklist.headroom == HeadroomCheck(main_baseline_wer=0.02, threshold=0.05, ok=False)
    assert record.checklist.sufficiency == SufficiencyCheck(train_clips=9, target=200, ok=False)
    assert record.checklist.val_split == ValSplitCheck(clips=3, minimum=1)
    assert any(n.startswith("headroom: main baseline WER 0.0200 is below 5%") for n in record.notes)
    assert any(n.startswith("data sufficiency: 9 training clips") for n in record.notes)
