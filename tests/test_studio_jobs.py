"""Train from the studio: the form's settings checked as the CLI checks them, a background experiment stopped with
SIGINT (the run records `interrupted`, as after Ctrl-C) and resumed with --resume."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from moonlora.configs import StudioConfig  # noqa: E402
from moonlora.runfolder import RunRecordError, read_record  # noqa: E402
from moonlora.studio.server import build_app  # noqa: E402

FLAGS = {"device": "cpu", "min_val_clips": "1", "train_batch_size": "2", "grad_accum": "1", "lora_r": "2",
         "lora_alpha": "4", "lora_dropout": "0", "decode_batch_size": "8", "learning_rate": "5e-3", "seed": "3"}


@pytest.fixture()
def root(tmp_path, tiny_model_dir) -> Path:
    from conftest import tone_set

    tone_set(tmp_path / "data", "train", 12)
    tone_set(tmp_path / "data", "main", 4, seed0=50)
    return tmp_path


def client_for(root: Path):
    app, studio = build_app(StudioConfig(root=str(root), device="cpu"))
    return TestClient(app, base_url="http://127.0.0.1:8765"), studio


def post(client, studio, path: str, json: dict):
    return client.post(path, json=json, headers={"X-Moonlora-Token": studio.tokens.session})


def wait_for(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def record_of(run: Path):
    try:
        return read_record(run)
    except RunRecordError:
        return None


def test_a_bad_form_is_refused_before_any_process_starts(root, tiny_model_dir):
    client, studio = client_for(root)
    form = {"output_dir": "runs/x", "dataset_path": "data/train.jsonl", "manifest_path": "data/main.jsonl",
            "model": str(tiny_model_dir), "max_steps": "0", **FLAGS}
    refused = post(client, studio, "/api/train/start", {"kind": "experiment", "form": form})
    assert refused.status_code == 400 and "max-steps" in refused.json()["error"].replace("_", "-")
    outside = post(client, studio, "/api/train/start", {"kind": "experiment", "form": {**form, "max_steps": "2",
                                                                                         "dataset_path": "../x.jsonl"}})
    assert outside.status_code == 403
    unknown = post(client, studio, "/api/train/start", {"kind": "experiment", "form": {**form, "bogus": "1"}})
    assert unknown.status_code == 400 and "--bogus" in unknown.json()["error"]
    assert studio.jobs.listing() == [] and not (root / "runs").exists()


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored in this process, as in a background job of a non-interactive shell (how CI once ran the
    suite): the studio's jobs inherit that disposition."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_stop_is_a_clean_interrupt_and_resume_continues_the_run(root, tiny_model_dir, sigint_ignored):
    client, studio = client_for(root)
    run = root / "runs" / "long"
    form = {"output_dir": "runs/long", "dataset_path": "data/train.jsonl", "manifest_path": "data/main.jsonl",
            "model": str(tiny_model_dir), "max_steps": "5000", "eval_interval": "1000", **FLAGS}
    job = post(client, studio, "/api/train/start", {"kind": "experiment", "form": form}).json()
    assert job["state"] == "running" and job["command"].startswith("moonlora experiment --output-dir ")
    try:
        wait_for(lambda: (r := record_of(run)) is not None and r.phase == "training", 240, "training to start")
        time.sleep(1.0)
        stopped = post(client, studio, "/api/train/stop", {"job": job["id"]}).json()
        assert stopped["stopped"]
        wait_for(lambda: studio.jobs.listing()[0]["state"] != "running", 120, "the job to end")
        assert studio.jobs.listing()[0]["returncode"] == 130  # what Ctrl-C gives
        record = read_record(run)
        assert record.status == "interrupted" and "--resume" in record.reason
        listed = client.get("/api/runs").json()["runs"]
        assert [(r["path"], r["state"]) for r in listed] == [("runs/long", "interrupted")]
        resumed = post(client, studio, "/api/run/resume", {"path": "runs/long"}).json()  # the Runs view's button
        assert resumed["state"] == "running" and resumed["command"].endswith("--resume")
        again = post(client, studio, "/api/train/resume", {"job": job["id"]})  # the job's own resume: one at a time
        assert again.status_code == 400 and "already running" in again.json()["error"]
        wait_for(lambda: (r := record_of(run)) is not None and len(r.legs) == 2 and r.phase == "training"
                 and r.status == "running", 240, "the resumed leg to train")
        assert "in use" not in (studio.jobs.log_tail("runs/long") or "")
    finally:
        studio.jobs.interrupt_all()
    assert read_record(run).status == "interrupted"


def test_a_sweep_form_becomes_the_sweep_command_checked_first(root, tiny_model_dir):
    (root / "grid.toml").write_text(f'[experiment]\ndataset-path = "data/train.jsonl"\nmanifest-path = "data/main.jsonl"\n'
                                    f'model = "{tiny_model_dir}"\n\n[grid]\nseed = [1, 2]\n')
    _, studio = client_for(root)
    argv, out = studio.jobs.sweep_argv({"grid": "grid.toml", "output_dir": "sweeps/s", "max_steps": "2"})
    assert argv == ["sweep", str((root / "grid.toml").resolve()), "--output-dir", str((root / "sweeps/s").resolve()),
                    "--max-steps", "2"] and out == (root / "sweeps/s").resolve()
    (root / "bad.toml").write_text("[grid]\nbogus = [1, 2]\n")
    from moonlora.sweep import SweepError

    with pytest.raises(SweepError, match="bogus"):
        studio.jobs.sweep_argv({"grid": "bad.toml", "output_dir": "sweeps/t"})
    assert not (root / "sweeps").exists()
