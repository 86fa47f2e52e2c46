"""The experiment runner end to end on the tiny model: artifacts, refusal, exact resume."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tone_set
from moonlora.train import loop as train_module
from moonlora.train.loop import adapter_loaded, copy_adapter
from moonlora.cli import build_parser, main
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.train.experiment import run_experiment
from moonlora.outputs import OutputExists

# Every experiment command line of the seed plan (its Test Matrix and headroom runs), verbatim (program name aside).
PLAN_COMMANDS = [
    "--output-dir outputs/experiment_h1_20260218 --max-steps 200 --learning-rate 1e-5 --eval-interval 50 --dataset-path data/train_manifest.jsonl --manifest-path data/heldout_manifest.jsonl --seed 42",
    "--output-dir outputs/experiment_h2_20260218 --max-steps 2000 --learning-rate 1e-4 --eval-interval 200 --dataset-path data/train_manifest.jsonl --manifest-path data/heldout_manifest.jsonl --seed 42 --wer-stop-threshold 1.1",
    "--output-dir outputs/experiment_h3_lr1e4_20260218 --max-steps 200 --learning-rate 1e-4 --eval-interval 50 --dataset-path data/train_manifest.jsonl --manifest-path data/heldout_manifest.jsonl --seed 42",
    "--output-dir outputs/experiment_h3_lr3e4_20260218 --max-steps 200 --learning-rate 3e-4 --eval-interval 50 --dataset-path data/train_manifest.jsonl --manifest-path data/heldout_manifest.jsonl --seed 42",
    "--output-dir outputs/experiment_h4_20260218 --max-steps 200 --learning-rate 1e-4 --eval-interval 50 --dataset-path data/train_manifest.jsonl --manifest-path data/test_manifest.jsonl --seed 42",
    "--output-dir outputs/experiment_h1_expanded_20260218 --max-steps 200 --learning-rate 1e-5 --eval-interval 50 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/heldout_manifest.jsonl --max-seconds 20 --seed 42",
    "--output-dir outputs/experiment_h2_expanded_20260218 --max-steps 2000 --learning-rate 1e-4 --eval-interval 200 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/heldout_manifest.jsonl --max-seconds 20 --seed 42 --wer-stop-threshold 1.1",
    "--output-dir outputs/experiment_h3_lr1e4_expanded_20260218 --max-steps 200 --learning-rate 1e-4 --eval-interval 50 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/heldout_manifest.jsonl --max-seconds 20 --seed 42",
    "--output-dir outputs/experiment_h3_lr3e4_expanded_20260218 --max-steps 200 --learning-rate 3e-4 --eval-interval 50 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/heldout_manifest.jsonl --max-seconds 20 --seed 42",
    "--output-dir outputs/experiment_h4_domain_expanded_20260218 --max-steps 200 --learning-rate 1e-4 --eval-interval 50 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/domain_manifest.jsonl --max-seconds 20 --seed 42",
    "--output-dir outputs/experiment_headroom_heldout_20260218 --max-steps 100 --learning-rate 1e-4 --eval-interval 50 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/heldout_manifest.jsonl --max-seconds 20 --seed 42",
    "--output-dir outputs/experiment_headroom_domain_20260218 --max-steps 100 --learning-rate 1e-4 --eval-interval 50 --dataset-path data/train_manifest_expanded.jsonl --manifest-path data/domain_manifest.jsonl --max-seconds 20 --seed 42",
]


@pytest.fixture()
def data(tmp_path):
    return {"train": tone_set(tmp_path / "d", "train", 12), "main": tone_set(tmp_path / "d", "main", 4, seed0=50),
            "canary": tone_set(tmp_path / "d", "canary", 3, seed0=80)}


def config_for(tiny_model_dir, data, out, **train_changes):
    train = dict(max_steps=4, learning_rate=5e-3, batch_size=2, grad_accum=2, eval_interval=2, seed=3, device="cpu")
    train.update(train_changes)
    return ExperimentConfig(
        output_dir=str(out), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), canary_manifest=str(data["canary"]), canary_margin=10.0,
        extra_manifests=(str(data["canary"]),), bootstrap_resamples=200, min_val_clips=1,
        train=TrainConfig(**train), lora=LoraSettings(r=2, alpha=4, dropout=0.1),
        decode=DecodeConfig(batch_size=8, device="cpu"),
    )


def test_run_folder_holds_every_artifact_and_is_not_overwritten(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    metrics = run_experiment(config_for(tiny_model_dir, data, out), progress=False)
    assert metrics.status == "success" and metrics.reason is None
    for relative in ("experiment_config.json", "experiment_metrics.json", "adapter/adapter_config.json",
                     "adapter/adapter_model.safetensors", "baseline/main/transcripts.jsonl", "tuned/main/transcripts.jsonl",
                     "baseline/val/summary.json", "tuned/canary/summary.json", "tuned/extra-canary/summary.json"):
        assert (out / relative).is_file(), relative
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((out / "experiment_metrics.json").read_text())
    training = saved["training"]
    assert [row["step"] for row in training["losses"]] == [1, 2, 3, 4]
    assert [row["step"] for row in training["intervals"]] == [0, 2, 4]
    norms = {row["step"]: row["lora_delta_norm"] for row in training["intervals"]}
    assert norms[0] == 0 and norms[4] > 0  # identity at start, then the adapter moved
    assert training["lora_delta_norm"] == pytest.approx(norms[training["best_step"]])  # the chosen one is restored
    assert saved["data"]["split"]["method"] == "speaker"
    assert saved["provenance"]["model_sha256"] and "git_sha" in saved["provenance"]
    comparison = saved["comparisons"]["main"]
    assert comparison["delta"] == pytest.approx(saved["tuned"]["main"]["wer"] - saved["baseline"]["main"]["wer"])
    assert comparison["ci_low"] <= comparison["delta"] <= comparison["ci_high"]
    base_contract, tuned_contract = saved["baseline"]["main"]["contract"], saved["tuned"]["main"]["contract"]
    assert base_contract["manifest_sha256"] == tuned_contract["manifest_sha256"]
    best = training["best_step"]
    assert training["best_val_wer"] == min(row["val_wer"] for row in training["intervals"])
    assert saved["tuned"]["val"]["wer"] == pytest.approx(
        next(row["val_wer"] for row in training["intervals"] if row["step"] == best))
    assert metrics.status == "success" and metrics.training.steps == 4
    with pytest.raises(OutputExists):
        run_experiment(config_for(tiny_model_dir, data, out), progress=False)


def test_a_stored_score_is_read_back_and_a_damaged_transcripts_line_is_named(tiny_model_dir, data, tmp_path):
    """The resume reader (evaluate.read_eval) reads transcripts.jsonl through runfolder: a line that is not
    JSON is a one-line error naming the file and the line, not a silent re-decode."""
    from moonlora.data.manifest import load_manifest
    from moonlora.eval.evaluate import read_eval
    from moonlora.runfolder import TranscriptsError

    out = tmp_path / "run"
    record = run_experiment(config_for(tiny_model_dir, data, out, max_steps=1, eval_interval=1), progress=False)
    scored, manifest = out / "baseline" / "main", load_manifest(data["main"])
    assert read_eval(scored, manifest).corpus.wer == record.baseline["main"].wer
    rows = (scored / "transcripts.jsonl").read_text().splitlines()
    (scored / "transcripts.jsonl").write_text("\n".join([rows[0], rows[1][:-7], *rows[2:]]) + "\n")
    with pytest.raises(TranscriptsError, match=rf"^{re.escape(str(scored / 'transcripts.jsonl'))}:2: not valid JSON"):
        read_eval(scored, manifest)
    assert read_eval(tmp_path / "nothing", manifest) is None  # absent: decoded again


def test_resume_repeats_an_uninterrupted_run(tiny_model_dir, data, tmp_path, monkeypatch):
    straight = run_experiment(config_for(tiny_model_dir, data, tmp_path / "a", max_steps=5, eval_interval=3), progress=False)

    def interrupt(state):
        if state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_after_update", interrupt)
    cut = config_for(tiny_model_dir, data, tmp_path / "b", max_steps=5, eval_interval=3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cut, progress=False)
    assert json.loads((tmp_path / "b" / "experiment_metrics.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    import dataclasses

    resumed = run_experiment(dataclasses.replace(cut, resume=True), progress=False)
    a = [row["loss"] for row in straight.training.losses]
    b = [row["loss"] for row in resumed.training.losses]
    assert len(a) == len(b) == 5
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert resumed.tuned["main"].wer == straight.tuned["main"].wer
    assert [leg.resumed_from_step for leg in resumed.legs] == [None, 2]


def test_resume_refuses_changed_settings(tiny_model_dir, data, tmp_path):
    import dataclasses

    config = config_for(tiny_model_dir, data, tmp_path / "c", max_steps=2)
    run_experiment(config, progress=False)
    changed = dataclasses.replace(config, resume=True, train=dataclasses.replace(config.train, learning_rate=1e-3))
    with pytest.raises(ValueError, match="learning_rate"):
        run_experiment(changed, progress=False)


def test_the_list_holds_every_command_line_of_the_plan():
    plan = Path(__file__).resolve().parents[2] / "shared" / "seed" / "experiment_plan.md"
    if not plan.is_file():
        pytest.skip("the seed plan lives beside the repository on the development machines only")
    found = re.findall(r"uv run python src/lora/runners/experiment\.py ([^|`]+?)\s*[|`]", plan.read_text())
    assert len(PLAN_COMMANDS) == 12 and set(PLAN_COMMANDS) == {line.strip() for line in found}


def test_plan_command_lines_parse_unchanged():
    parser = build_parser()
    for line in PLAN_COMMANDS:
        args = parser.parse_args(["experiment", *shlex.split(line)])
        flags = dict(zip(shlex.split(line)[::2], shlex.split(line)[1::2]))
        assert args.output_dir == flags["--output-dir"] and args.max_steps == int(flags["--max-steps"])
        assert args.learning_rate == float(flags["--learning-rate"]) and args.seed == 42
        assert args.wer_stop_threshold == (float(flags["--wer-stop-threshold"]) if "--wer-stop-threshold" in flags else None)


def test_plan_command_runs_through_the_cli(tiny_model_dir, data, tmp_path, capsys):
    line = PLAN_COMMANDS[1].replace("--max-steps 2000", "--max-steps 2").replace("--eval-interval 200", "--eval-interval 1")
    line = line.replace("outputs/experiment_h2_20260218", str(tmp_path / "h2"))
    line = line.replace("data/train_manifest.jsonl", str(data["train"])).replace("data/heldout_manifest.jsonl", str(data["main"]))
    argv = ["--quiet", "experiment", *shlex.split(line), "--model", str(tiny_model_dir), "--device", "cpu",
            "--min-val-clips", "1"]
    assert main(argv) == 0
    assert "baseline WER" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "h2" / "experiment_metrics.json").read_text())
    assert metrics["config"]["wer_stop_threshold"] == 1.1 and metrics["config"]["train"]["grad_accum"] == 4
    assert main(argv) == 2  # the run folder is not overwritten
    assert "already holds" in capsys.readouterr().err


def test_non_finite_loss_skips_the_update_and_is_counted(tiny_model_dir, data, tmp_path, monkeypatch):
    original, calls = train_module.batch_loss, []

    def sometimes_nan(*args):
        calls.append(1)
        loss = original(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_module, "batch_loss", sometimes_nan)
    metrics = run_experiment(config_for(tiny_model_dir, data, tmp_path / "nan", max_steps=3, grad_accum=1,
                                        eval_interval=3), progress=False)
    training = metrics.training
    assert training.skipped_updates == 1
    assert [row["skipped"] for row in training.losses] == [False, False, True]
    assert training.losses[2]["loss"] is None and all(row["loss"] > 0 for row in training.losses[:2])
    assert all(row["lora_delta_norm"] == row["lora_delta_norm"] for row in training.intervals)  # no NaN weights
    saved = json.loads((tmp_path / "nan" / "experiment_metrics.json").read_text(),
                       parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert saved["training"]["losses"][2]["loss"] is None


def test_train_stream_is_a_pure_function_of_seed_and_step():
    from moonlora.train.loop import TrainStream

    train = [f"t{i}" for i in range(10)]
    replay = [f"r{i}" for i in range(5)]
    config = TrainConfig(batch_size=4, seed=9, replay_ratio=0.25)
    first = [TrainStream(train, replay, config).micro_batch(g) for g in range(20)]
    again = TrainStream(train, replay, config)
    assert [again.micro_batch(g) for g in reversed(range(20))][::-1] == first  # order of asking is irrelevant
    items = [item for batch in first for item in batch]
    replay_share = sum(item.startswith("r") for item in items) / len(items)
    assert 0.15 < replay_share < 0.35
    no_replay = TrainStream(train, [], TrainConfig(batch_size=5, seed=9))
    epoch = no_replay.micro_batch(0) + no_replay.micro_batch(1)
    assert sorted(epoch) == sorted(train)  # one epoch visits every clip once
    ranks = [no_replay.micro_batch(0, rank=r, world=2) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])  # processes see different clips


def test_group_by_length_batches_similar_durations_each_epoch_in_a_new_order():
    from types import SimpleNamespace

    from moonlora.train.loop import TrainStream

    rng = np.random.default_rng(3)
    train = [SimpleNamespace(name=f"t{i}", duration=float(d)) for i, d in enumerate(rng.uniform(1, 20, 24))]
    config = TrainConfig(batch_size=4, seed=9, group_by_length=True)
    stream = TrainStream(train, [], config)
    epochs = [[stream.micro_batch(e * 6 + b) for b in range(6)] for e in range(2)]
    for batches in epochs:
        assert sorted(u.name for batch in batches for u in batch) == sorted(u.name for u in train)
        by_duration = sorted(train, key=lambda u: u.duration)
        groups = {frozenset(u.name for u in by_duration[i:i + 4]) for i in range(0, 24, 4)}
        assert {frozenset(u.name for u in batch) for batch in batches} == groups  # neighbours in duration
    assert [b[0].name for b in epochs[0]] != [b[0].name for b in epochs[1]]  # batch order reshuffled
    plain = TrainStream(train, [], TrainConfig(batch_size=4, seed=9))
    spread = np.mean([np.ptp([u.duration for u in plain.micro_batch(b)]) for b in range(6)])
    grouped = np.mean([np.ptp([u.duration for u in batch]) for batch in epochs[0]])
    assert grouped < spread / 3


def test_only_the_main_process_writes_run_files(tiny_model_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # as a second process of `accelerate launch` would see it
    out = tmp_path / "rank1"
    metrics = run_experiment(config_for(tiny_model_dir, data, out, max_steps=2), progress=False)
    assert metrics.status == "success"
    assert not out.exists() or not any(out.iterdir())


def test_best_and_last_adapters_are_both_kept_and_scored(tiny_model_dir, data, tmp_path, monkeypatch):
    import dataclasses

    from moonlora.train import experiment as experiment_module
    original = experiment_module.evaluate_sets
    planted = {"step 2": 0.1, "step 4": 0.5}  # best at step 2, mid-run; the last adapter is another one

    def evaluate_sets(loaded, sets, config, out_dir, progress, label):
        results = original(loaded, sets, config, out_dir, progress, label)
        if label in planted:
            results["val"] = dataclasses.replace(results["val"], corpus=dataclasses.replace(results["val"].corpus,
                                                                                           wer=planted[label]))
        return results

    monkeypatch.setattr(experiment_module, "evaluate_sets", evaluate_sets)
    real_score_candidates, held = experiment_module.score_candidates, {}

    def score_candidates(loaded, *args):
        """Score with a third adapter loaded (neither candidate): the scorer names its adapters and hands
        the model back as it found it."""
        held["foreign"] = {name: torch.full_like(tensor, 0.01) for name, tensor in copy_adapter(loaded.model).items()}
        with adapter_loaded(loaded.model, held["foreign"]):
            candidates = real_score_candidates(loaded, *args)
            held["after"] = copy_adapter(loaded.model)
        return candidates

    monkeypatch.setattr(experiment_module, "score_candidates", score_candidates)
    out = tmp_path / "run"
    config = dataclasses.replace(config_for(tiny_model_dir, data, out), select="last")
    record = run_experiment(config, progress=False)
    assert held["after"].keys() == held["foreign"].keys()
    assert all(torch.equal(held["after"][name], held["foreign"][name]) for name in held["foreign"])
    best, last = record.candidates["best"], record.candidates["last"]
    assert (best.step, best.val_wer, best.selected) == (2, 0.1, False)
    assert (last.step, last.val_wer, last.selected) == (4, 0.5, True)
    assert last.main.wer == record.tuned["main"].wer  # the selected one is the run's tuned score
    assert last.comparison.delta == pytest.approx(record.comparisons["main"].delta)
    assert (out / "tuned-best" / "main" / "transcripts.jsonl").is_file()  # the other one was decoded
    assert best.comparison.ci_low <= best.comparison.delta <= best.comparison.ci_high
    weights = {name: (out / name / "adapter_model.safetensors").read_bytes()
               for name in ("adapter", "adapter-best", "adapter-last")}
    assert weights["adapter"] == weights["adapter-last"] != weights["adapter-best"]
    saved = json.loads((out / "experiment_metrics.json").read_text())
    assert saved["candidates"]["best"]["adapter_dir"] == "adapter-best" and saved["config"]["select"] == "last"
    assert any(note.startswith("adapters: best (step 2) main WER") for note in record.notes)


def test_a_nonspeech_manifest_is_scored_at_baseline_and_tuned_with_the_guard_recorded(tiny_model_dir, data, tmp_path):
    import dataclasses

    from moonlora.data.synth.nonspeech import build_nonspeech
    from moonlora.runfolder import read_record

    canary = build_nonspeech(tmp_path / "ns", progress=False).manifest
    small = canary.with_name("four.jsonl")
    small.write_text("".join(canary.read_text().splitlines(keepends=True)[:4]))
    config = config_for(tiny_model_dir, data, tmp_path / "run", max_steps=2)
    config = dataclasses.replace(config, nonspeech_manifest=str(small),
                                 decode=dataclasses.replace(config.decode, repetition_guard=4))
    record = run_experiment(config, progress=False)
    stored = read_record(tmp_path / "run").nonspeech
    assert stored == record.nonspeech and stored.clips == 4 and stored.path == str(small)
    assert set(stored.comparisons) == {"words_per_clip", "text_share"}
    assert stored.comparisons["words_per_clip"].tuned_wer == stored.tuned.words_per_clip
    assert stored.baseline.contract["nonspeech"] is True and stored.baseline.contract["decode"]["repetition_guard"] == 4
    assert record.baseline["main"].contract["nonspeech"] is False and "nonspeech" not in record.baseline
    assert record.data.eval_sets["nonspeech"].clips == 4
    for side in ("baseline", "tuned"):
        rows = [json.loads(line) for line in (tmp_path / "run" / side / "nonspeech" / "transcripts.jsonl").open()]
        assert len(rows) == 4 and {row["ref"] for row in rows} == {""}
