"""`accelerate launch` with two processes on the CPU (gloo), tiny model, to the end: one run
folder, one record counting both processes' samples, and no hang when only one rank sees a
non-finite loss (all ranks skip that update together)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moonlora.runfolder import read_record

from conftest import tone_set

DRIVER = textwrap.dedent('''
    import os, sys
    from moonlora import cli
    from moonlora.train import loop as train
    if os.environ.get("NAN_ON_RANK") == os.environ["RANK"]:
        real_loss, calls = train.batch_loss, {"n": 0}
        def batch_loss(*args):
            calls["n"] += 1
            loss = real_loss(*args)
            return loss * float("nan") if calls["n"] == 3 else loss  # the first micro-batch of step 2
        train.batch_loss = batch_loss
    sys.exit(cli.main(sys.argv[1:]))
''')


@pytest.mark.parametrize("nan_on_rank", [None, "1"])
def test_two_cpu_processes_train_to_the_end(tiny_model_dir, tmp_path, nan_on_rank):
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists():
        launcher = shutil.which("accelerate")
    data = {"train": tone_set(tmp_path / "d", "train", 12), "main": tone_set(tmp_path / "d", "main", 4, seed0=50)}
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "NAN_ON_RANK": nan_on_rank or "",
           "OMP_NUM_THREADS": "1"}
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               # the README's command (-m moonlora), or a driver that plants a NaN on one rank
               *([str(driver)] if nan_on_rank else ["-m", "moonlora"]),
               "--quiet", "experiment", "--output-dir", str(out), "--dataset-path", str(data["train"]),
               "--manifest-path", str(data["main"]), "--model", str(tiny_model_dir), "--device", "cpu",
               "--max-steps", "4", "--eval-interval", "2", "--learning-rate", "5e-3", "--train-batch-size", "2",
               "--grad-accum", "2", "--lora-r", "2", "--decode-batch-size", "8", "--min-val-clips", "1"]
    launched = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        stdout, stderr = launched.communicate(timeout=240)  # a hang in the gradient sync fails here
    except subprocess.TimeoutExpired:
        os.killpg(launched.pid, signal.SIGKILL)  # the launcher and both ranks
        launched.communicate()
        pytest.fail("the two processes hung")
    assert launched.returncode == 0, stderr[-3000:]
    assert stdout.count("moonlora experiment run:") == 1  # only the main process prints
    record = read_record(out)
    assert record.status == "success" and record.training.processes == 2
    assert record.training.samples == 4 * 2 * 2 * 2  # steps x batch x accumulation x processes
    assert [p.name for p in tmp_path.iterdir() if (p / "experiment_metrics.json").exists()] == ["run"]
    skipped = [row["skipped"] for row in record.training.losses]
    assert skipped == ([False, True, False, False] if nan_on_rank else [False] * 4)
    assert record.training.skipped_updates == (1 if nan_on_rank else 0)
    json.loads((out / "experiment_metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
