"""The light CLI: no model stack for --help and the data commands, documented flags, signals.

The checks of what gets imported run in a fresh interpreter: pytest's own process has torch
loaded already (conftest builds a tiny model).
"""

import argparse
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from moonlora.data.audio import AudioConfig
from moonlora.data.augment import AugmentConfig
from moonlora.cli import build_parser, commands_markdown
from moonlora.configs import DecodeConfig, DemoConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.data.diagnose import DiagnoseConfig

README = Path(__file__).resolve().parents[1] / "README.md"
HEAVY = ("torch", "transformers", "peft", "accelerate")
REPORT_HEAVY = f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; print(json.dumps(heavy))"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def heavy_modules(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_loads_no_model_stack():
    assert heavy_modules(run_python(f"import json, sys, moonlora.cli; {REPORT_HEAVY}")) == []


def test_help_loads_no_model_stack():
    code = ("import contextlib, io, json, sys\nfrom moonlora.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit as stop:\n        assert stop.code == 0\n"
            "assert 'exit codes' in out.getvalue()\n" + REPORT_HEAVY)
    assert heavy_modules(run_python(code)) == []


def test_diagnose_loads_no_model_stack(tmp_path):
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, dtype=np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": "hello there"}) + "\n")
    report = tmp_path / "diag.json"
    code = ("import contextlib, io, json, sys\nfrom moonlora.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['--quiet', 'diagnose', '--manifests', {str(manifest)!r}, '--max-seconds', '8', "
            f"'--json', {str(report)!r}]) == 0\n" + REPORT_HEAVY)
    assert heavy_modules(run_python(code)) == []
    assert json.loads(report.read_text())["written_by"] == "written by moonlora diagnose"


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A real finished run folder (tiny model, two updates) in runs/."""
    from conftest import tone_set
    from moonlora.train.experiment import run_experiment

    root = tmp_path_factory.mktemp("light")
    data = {"train": tone_set(root / "d", "train", 12), "main": tone_set(root / "d", "main", 4, seed0=50)}
    run = root / "runs" / "run-a"
    record = run_experiment(ExperimentConfig(
        output_dir=str(run), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), bootstrap_resamples=100, min_val_clips=1,
        train=TrainConfig(max_steps=2, learning_rate=5e-3, batch_size=2, grad_accum=1, eval_interval=1, seed=3),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0), decode=DecodeConfig(batch_size=8, device="cpu")),
        progress=False)
    assert record.finished
    return run


@pytest.mark.parametrize("command", ["decide", "report"])
def test_verdict_commands_load_no_model_stack(command, finished_run):
    from moonlora.verdict.decide import decide

    argv = ["decide", str(finished_run)] if command == "decide" else ["report", str(finished_run.parent)]
    code = ("import contextlib, io, json, sys\nfrom moonlora.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:\n"
            f"    code = main({argv!r})\n"
            "print(json.dumps([code, out.getvalue(), err.getvalue()]))\n" + REPORT_HEAVY)
    result = run_python(code)
    assert heavy_modules(result) == []
    exit_code, out, err = json.loads(result.stdout.strip().splitlines()[-2])
    if command == "decide":  # the documented code of the verdict (1 = FAIL), nothing on stderr
        assert exit_code == (0 if decide([finished_run]).passed else 1) and err == ""
        assert "primary" in out.lower() and ("PASS" in out or "FAIL" in out)
    else:
        assert exit_code == 0 and err == "" and "run-a" in out
        assert (finished_run.parent / "training_report.md").is_file() and (finished_run.parent / "report.html").is_file()


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {name: action for action in parser._actions for name in action.option_strings}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (slot,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(slot.choices)


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    for name, sub in {"": parser, **subparsers(parser)}.items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"moonlora {name} {action.option_strings or action.dest}: no help line"
        shown = len(re.findall(r"\((default: [^)]*|required)\)", " ".join(text.split())))
        # sweep's shared flags (default SUPPRESS) say in their help that the experiment's default applies
        flags = [a for a in sub._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        assert shown == len(flags), f"moonlora {name} --help: {shown} defaults shown for {len(flags)} flags"


def test_defaults_come_from_the_config_dataclasses():
    commands = subparsers(build_parser())
    experiment, train, lora = options(commands["experiment"]), TrainConfig(), LoraSettings()
    assert experiment["--max-seconds"].default == ExperimentConfig.max_seconds
    assert experiment["--val-fraction"].default == ExperimentConfig.val_fraction
    assert experiment["--lora-r"].default == lora.r and experiment["--lora-alpha"].default == lora.alpha
    assert experiment["--target-modules"].default.split(",") == list(lora.target_modules)
    assert experiment["--max-steps"].default == train.max_steps and experiment["--seed"].default == train.seed
    assert experiment["--decode-batch-size"].default == DecodeConfig().batch_size
    assert experiment["--rms-target-dbfs"].default == AudioConfig().rms_target_dbfs
    demo = options(commands["demo"])
    assert demo["--max-steps"].default == DemoConfig().max_steps
    assert tuple(demo["--seeds"].default) == DemoConfig().seeds
    diagnose, augment = options(commands["diagnose"]), options(commands["augment"])
    assert tuple(diagnose["--thresholds"].default) == DiagnoseConfig.thresholds
    assert augment["--noise-color"].default == AugmentConfig.noise_color


def test_experiment_names_its_two_batch_sizes_apart():
    experiment = subparsers(build_parser())["experiment"]
    flags = options(experiment)
    assert flags["--train-batch-size"] is flags["--batch-size"]  # the old name stays an alias
    assert flags["--train-batch-size"].dest == "train_batch_size"
    assert flags["--decode-batch-size"].dest == "decode_batch_size"
    required = ["--output-dir", "o", "--dataset-path", "d", "--manifest-path", "m"]
    args = experiment.parse_args([*required, "--batch-size", "3", "--decode-batch-size", "5"])
    assert (args.train_batch_size, args.decode_batch_size) == (3, 5)
    plan = ["--output-dir", "--max-steps", "--learning-rate", "--eval-interval", "--dataset-path", "--manifest-path",
            "--max-seconds", "--seed", "--wer-stop-threshold"]
    assert set(plan) <= set(flags)
    assert {"--manifests", "--max-seconds", "--thresholds"} <= set(options(subparsers(build_parser())["diagnose"]))


def test_readme_commands_section_is_generated_from_the_parser():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- commands:start[^\n]*-->\n(.*?)<!-- commands:end -->", text, re.S)
    assert found, "README.md lacks the <!-- commands:start --> ... <!-- commands:end --> section"
    assert found.group(1).strip() == commands_markdown().strip(), (
        "README.md's commands section differs from the parser; regenerate it with\n"
        '  uv run python -c "from moonlora.cli import commands_markdown; print(commands_markdown())"\n'
        "and paste the output between the commands:start and commands:end markers")


SLOW_COMMAND = """
import signal, sys, time
# Started from a background job, this process may inherit SIGINT ignored; the test is about delivery.
signal.signal(signal.SIGINT, signal.default_int_handler)
import moonlora.cli as cli

def slow(args):
    print("ready", flush=True)
    time.sleep(60)
    return 0

cli.cmd_diagnose = slow  # stands for a handler busy with its lazy imports or its work
sys.exit(cli.main(["diagnose", "--manifests", "m.jsonl", "--max-seconds", "8"]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_130_with_one_line(signum):
    process = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip() == "moonlora: interrupted" and "Traceback" not in err


def test_ctrl_c_while_modules_load_is_one_line(monkeypatch, capsys):
    import builtins

    from moonlora import entry
    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "moonlora.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    assert entry.main() == 130
    assert capsys.readouterr().err == "moonlora: interrupted\n"
