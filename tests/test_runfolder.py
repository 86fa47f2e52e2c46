"""The run folder module: typed record, schema versions, lock, checkpoint publication and recovery."""

import json
import os
import subprocess
import sys

import pytest

from moonlora import runfolder
from moonlora.comparison import Comparison
from moonlora.configs import DecodeConfig, ExperimentConfig, TrainConfig
from moonlora.runfolder import (CHECKPOINT_STATE, METRICS_FILE, Checklist, EvalSummary, ExportParity, HeadroomCheck,
                                LeakageCheck, LoraSummary, ParitySet, RunLock, RunRecord, RunRecordError,
                                ValSplitCheck, checkpoint_staging, describe_state, find_resume_checkpoint,
                                latest_checkpoint_step, publish_checkpoint, read_record, run_state, write_record)

CONFIG = ExperimentConfig("runs/r", "train.jsonl", "test.jsonl", train=TrainConfig(seed=3))


def summary(wer):
    return EvalSummary(wer=wer, cer=wer / 2, raw_wer=wer, clips=3, hours=0.001, flags={"empty_hypothesis": 1},
                       wer_by_duration=[], contract={"manifest_sha256": "x"})


def test_record_round_trips_typed(tmp_path):
    record = RunRecord(run_id="r", config=CONFIG, baseline={"main": summary(0.5)},
                       comparisons={"main": Comparison(0.5, 0.25, -0.25, -0.4, -0.1, 0.99, 100, 3, 3, 0.95)})
    write_record(tmp_path, record)
    loaded = read_record(tmp_path)
    assert loaded.baseline["main"].wer == 0.5 and loaded.comparisons["main"].ci_high == -0.1
    assert loaded.seed == 3 and loaded.status == "running" and loaded.pid == os.getpid()


def parity(main_to_torch: Comparison, main_to_baseline: Comparison) -> ExportParity:
    main = ParitySet(torch_wer=0.2, export_wer=0.21, export_minus_torch=main_to_torch,
                     export_minus_baseline=main_to_baseline, text_agreement=0.9, contract={"manifest_sha256": "x"})
    return ExportParity(format="ort", folder="runs/r/export/ort", runtime={"name": "onnxruntime", "precision": "int8"},
                        margin=0.005, outcome="pass", quantization={"rounding": "nearest"}, sets={"main": main})


def test_a_schema_3_record_round_trips_every_typed_section(tmp_path):
    config = ExperimentConfig("runs/r", "train.jsonl", "test.jsonl", extra_manifests=("x.jsonl",), export="ort",
                              train=TrainConfig(seed=5, device="cpu"), decode=DecodeConfig(device="cpu"))
    delta = Comparison(0.2, 0.21, 0.01, -0.004, 0.003, 0.3, 100, 5, 3)
    record = RunRecord(
        run_id="r", config=config, export_parity=parity(delta, Comparison(0.9, 0.21, -0.69, -0.8, -0.6, 1.0, 100, 5, 3)),
        lora=LoraSummary(trainable_params=10, total_params=100, trainable_percent=10.0, lora_modules=2),
        checklist=Checklist(val_split=ValSplitCheck(clips=3, minimum=1),
                            leakage=LeakageCheck(checked=["train x main"], allowed=False, found=[]),
                            headroom=HeadroomCheck(main_baseline_wer=0.9, threshold=0.05, ok=True)))
    write_record(tmp_path, record)
    saved = json.loads((tmp_path / METRICS_FILE).read_text())
    assert saved["schema_version"] == 3 and saved["config"]["train"]["device"] == "cpu"
    assert saved["export_parity"]["sets"]["main"]["export_minus_torch"]["excludes_zero"] is False
    loaded = read_record(tmp_path)
    assert loaded == record
    assert loaded.config.extra_manifests == ("x.jsonl",) and loaded.export_parity.main.export_minus_torch == delta
    assert loaded.checklist.sufficiency is None and loaded.data is None


def test_a_hand_written_schema_2_record_is_read(tmp_path):
    """A record as moonlora wrote it before the typed sections: its config saved without a training device
    (training ran on the decode one), data and lora still {} at setup, the checklist a plain object."""
    comparison = {"baseline_wer": 0.5, "tuned_wer": 0.25, "delta": -0.25, "ci_low": -0.4, "ci_high": -0.1,
                  "p_tuned_better": 0.99, "resamples": 100, "seed": 7, "clips": 3, "confidence": 0.95,
                  "excludes_zero": True, "relative_delta": -0.5}
    config = {"output_dir": "runs/old", "dataset_path": "train.jsonl", "manifest_path": "test.jsonl",
              "train": {"seed": 7, "max_steps": 4}, "decode": {"device": "cpu", "batch_size": 8},
              "lora": {"target_modules": ["q_proj", "v_proj"]}, "resume": False, "overwrite": False}
    (tmp_path / METRICS_FILE).write_text(json.dumps({
        "schema_version": 2, "run_id": "old", "config": config, "status": "success", "phase": "done",
        "data": {}, "lora": {}, "comparisons": {"main": comparison},
        "checklist": {"val_split": {"clips": 3, "minimum": 1}}}))
    record = read_record(tmp_path)
    assert record.schema_version == 2 and record.seed == 7 and record.config.train.max_steps == 4
    assert (record.config.train.device, record.config.decode.device) == ("cpu", "cpu")
    assert record.config.lora.target_modules == ("q_proj", "v_proj")
    assert record.comparisons["main"] == Comparison(0.5, 0.25, -0.25, -0.4, -0.1, 0.99, 100, 7, 3)
    assert record.checklist == Checklist(val_split=ValSplitCheck(clips=3, minimum=1))
    assert record.data is None and record.lora is None
    write_record(tmp_path, record)  # rewritten (a resumed run) in this version's schema
    assert json.loads((tmp_path / METRICS_FILE).read_text())["schema_version"] == 3


def test_a_schema_2_export_parity_without_its_outcome_is_judged_by_the_one_rule(tmp_path):
    write_record(tmp_path, RunRecord(run_id="r", config=CONFIG, export_parity=parity(
        Comparison(0.2, 0.21, 0.01, -0.019, 0.008, 0.3, 100, 5, 3), Comparison(0.9, 0.21, -0.69, -0.8, -0.6, 1.0, 100, 5, 3))))
    data = json.loads((tmp_path / METRICS_FILE).read_text())
    del data["export_parity"]["outcome"]  # as runs wrote it before the outcome was stored
    (tmp_path / METRICS_FILE).write_text(json.dumps({**data, "schema_version": 2}))
    assert read_record(tmp_path).export_parity.outcome == "inconclusive"  # the CI straddles the 0.005 margin
    (tmp_path / METRICS_FILE).write_text(json.dumps(data))  # schema 3 stores the outcome: lacking it is refused
    with pytest.raises(RunRecordError, match=r"record.export_parity: lacks outcome"):
        read_record(tmp_path)


@pytest.mark.parametrize("change, where", [
    ({"schema_version": 4}, "schema version 4 was written by another moonlora"),
    ({"bogus": 1}, r"record: unknown field\(s\) bogus"),
    ({"checklist": {"headroom": {"main_baseline_wer": 0.1, "threshold": 0.05, "ok": True, "why": "?"}}},
     r"record.checklist.headroom: unknown field\(s\) why"),
    ({"comparisons": {"main": {"delta": 0.1}}}, r"record.comparisons.main: lacks baseline_wer"),
    ({"config": {"output_dir": "o", "dataset_path": "d", "manifest_path": "m", "train": {"speed": 2}}},
     r"record.config: .*speed"),
])
def test_an_unknown_schema_is_refused_in_one_line_naming_the_file_and_field(tmp_path, change, where):
    write_record(tmp_path, RunRecord(run_id="r", config=CONFIG))
    data = {**json.loads((tmp_path / METRICS_FILE).read_text()), **change}
    (tmp_path / METRICS_FILE).write_text(json.dumps(data))
    with pytest.raises(RunRecordError, match=where) as caught:
        read_record(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / METRICS_FILE)) and "\n" not in str(caught.value)


def test_older_or_foreign_records_get_one_line_errors(tmp_path):
    (tmp_path / METRICS_FILE).write_text(json.dumps({"status": "success", "run_id": "old"}))
    with pytest.raises(RunRecordError, match="schema version 1 was written by an older moonlora"):
        read_record(tmp_path)
    (tmp_path / METRICS_FILE).write_text(json.dumps({"schema_version": 2, "run_id": "x", "config": {}, "bogus": 1,
                                                     "baseline": {"main": {"wer": 1}}}))
    with pytest.raises(RunRecordError, match="does not match the run record schema"):
        read_record(tmp_path)
    (tmp_path / METRICS_FILE).write_text('{"schema_version": 2, "loss": NaN}')
    with pytest.raises(RunRecordError, match="unreadable"):
        read_record(tmp_path)
    with pytest.raises(RunRecordError, match="no run record"):
        read_record(tmp_path / "nothing")


def test_second_process_is_refused_with_the_holders_pid(tmp_path):
    with RunLock(tmp_path):
        probe = ("import sys; from moonlora.runfolder import RunLock, RunLocked\n"
                 "try:\n    RunLock(sys.argv[1]).acquire()\nexcept RunLocked as e:\n    print(e); sys.exit(3)\n")
        done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 3, done.stderr
        assert f"in use by process {os.getpid()}" in done.stdout
    with RunLock(tmp_path):  # released: takes it again
        pass


def test_running_record_without_a_live_holder_is_died_and_resumable(tmp_path):
    record = RunRecord(run_id="r", config=CONFIG, phase="training", pid=2**22 + 12345)
    write_record(tmp_path, record)
    staging = checkpoint_staging(tmp_path, 4)
    (staging / CHECKPOINT_STATE).write_bytes(b"state-4")
    publish_checkpoint(tmp_path, staging, 4)
    assert run_state(record, tmp_path) == "died"
    assert describe_state(record, tmp_path).startswith("died at training")
    assert "resumable from step 4" in describe_state(record, tmp_path)
    alive = RunRecord(run_id="r", config=CONFIG, phase="baseline")
    with RunLock(tmp_path):
        assert run_state(alive, tmp_path) == "running"


def publish(run_dir, step, payload=None):
    staging = checkpoint_staging(run_dir, step)
    (staging / CHECKPOINT_STATE).write_bytes(payload or f"state-{step}".encode() * 100)
    return publish_checkpoint(run_dir, staging, step)


def test_last_two_checkpoints_kept_and_corrupt_one_skipped(tmp_path):
    for step in (2, 4, 6):
        publish(tmp_path, step)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000006"]
    newest = tmp_path / "checkpoints" / "step-00000006" / CHECKPOINT_STATE
    newest.write_bytes(newest.read_bytes()[:50])  # truncated
    chosen, notes = find_resume_checkpoint(tmp_path)
    assert chosen.step == 4
    assert any("step-00000006" in n and "truncated" in n for n in notes)
    newest.write_bytes(b"X" * len((tmp_path / "checkpoints" / "step-00000004" / CHECKPOINT_STATE).read_bytes()))
    assert latest_checkpoint_step(tmp_path) == 4


def test_leftovers_of_an_interrupted_save_are_cleaned_and_next_save_works(tmp_path):
    publish(tmp_path, 2)
    staging = checkpoint_staging(tmp_path, 4)
    (staging / CHECKPOINT_STATE).write_bytes(b"half")  # killed before publishing
    chosen, notes = find_resume_checkpoint(tmp_path)
    assert chosen.step == 2 and notes == ["removed an unfinished checkpoint save (.step-00000004.tmp)"]
    publish(tmp_path, 4)
    publish(tmp_path, 4)  # the same step saved again replaces it
    assert latest_checkpoint_step(tmp_path) == 4


def test_publish_is_one_rename(tmp_path, monkeypatch):
    """A kill at any point of publish leaves either the old set or the old set plus the new one."""
    publish(tmp_path, 2)
    renames = []
    real_rename = type(tmp_path).rename
    monkeypatch.setattr(type(tmp_path), "rename", lambda self, target: renames.append(target) or real_rename(self, target))
    publish(tmp_path, 4)
    assert len(renames) == 1 and renames[0].name == "step-00000004"
    assert runfolder.latest_checkpoint_step(tmp_path) == 4


def test_no_complete_checkpoint_left_is_a_one_line_error(tmp_path):
    from moonlora.runfolder import CheckpointError

    only = publish(tmp_path, 2) / CHECKPOINT_STATE
    only.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no complete checkpoint left .*step-00000002.*--overwrite"):
        find_resume_checkpoint(tmp_path)


# --- cleanup removes only moonlora's own temporary names, and says when it cannot ---------------------------------


def test_cleanup_leaves_every_name_moonlora_did_not_give(tmp_path):
    publish(tmp_path, 2)
    root = tmp_path / "checkpoints"
    (root / ".DS_Store").write_bytes(b"finder")
    (root / ".my-notes").mkdir()
    (root / ".my-notes" / "n.txt").write_text("mine")
    (root / ".step-00000004.tmp").mkdir()  # moonlora's own unfinished save
    (root / ".step-00000002.retired").mkdir()  # moonlora's own, from replacing a step
    chosen, notes = find_resume_checkpoint(tmp_path)
    assert chosen.step == 2 and len(notes) == 2
    assert sorted(p.name for p in root.iterdir()) == [".DS_Store", ".my-notes", "step-00000002"]
    assert (root / ".my-notes" / "n.txt").read_text() == "mine"


def test_a_failed_delete_is_reported_naming_the_path(tmp_path, monkeypatch):
    from moonlora.outputs import OutputError

    publish(tmp_path, 2)
    leftover = tmp_path / "checkpoints" / ".step-00000004.tmp"
    leftover.mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runfolder.shutil, "rmtree", refuse)
    with pytest.raises(OutputError, match=r"\.step-00000004\.tmp: cannot remove \(Permission denied\)"):
        find_resume_checkpoint(tmp_path)
    assert leftover.is_dir()


# --- the adapter swap: the new one in, then the old one out ---------------------------------------------------------


class Killed(BaseException):
    """A kill in the middle of a save."""


class FakeAdapterModel:
    def __init__(self, text):
        self.text = text

    def save_pretrained(self, folder):
        os.makedirs(folder)
        with open(os.path.join(folder, "adapter_model.safetensors"), "w") as handle:
            handle.write(self.text)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_adapter_swap_never_leaves_a_run_without_an_adapter(tmp_path, monkeypatch, exchange):
    """A kill while the old adapter is being removed leaves the new one in place (the old order,
    remove then rename, left none)."""
    from moonlora.train import experiment

    experiment.save_adapter(FakeAdapterModel("old"), tmp_path)
    if not exchange:
        monkeypatch.setattr(runfolder, "exchange_paths", lambda first, second: False)
    real_remove = runfolder.remove_path

    def killed_while_removing_the_old_one(path):
        if (path / "adapter_model.safetensors").is_file() and (path / "adapter_model.safetensors").read_text() == "old":
            raise Killed
        real_remove(path)

    monkeypatch.setattr(runfolder, "remove_path", killed_while_removing_the_old_one)
    monkeypatch.setattr(experiment, "remove_path", killed_while_removing_the_old_one)
    with pytest.raises(Killed):
        experiment.save_adapter(FakeAdapterModel("new"), tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_text() == "new"


def test_adapter_swap_leaves_only_the_new_adapter(tmp_path):
    from moonlora.train import experiment

    experiment.save_adapter(FakeAdapterModel("old"), tmp_path)
    experiment.save_adapter(FakeAdapterModel("new"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_text() == "new"
