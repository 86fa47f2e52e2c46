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
from moonlora.configs import (DecodeConfig, DemoConfig, ExperimentConfig, ExportConfig, LoraSettings, SynthConfig,
                              TrainConfig)
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
        train=TrainConfig(max_steps=2, learning_rate=5e-3, batch_size=2, grad_accum=1, eval_interval=1, seed=3,
                          device="cpu"),
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
    export, synth = options(commands["export"]), options(commands["synth"])
    assert (export["--format"].default, export["--rounding"].default) == (ExportConfig.format, ExportConfig.rounding)
    assert (synth["--domain"].default, synth["--n"].default, synth["--seed"].default) == (
        SynthConfig.domain, SynthConfig.n, SynthConfig.seed)


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


# One non-default value per experiment flag (valid on its own): each must set exactly its table's field.
NON_DEFAULT = {
    "max_steps": ["--max-steps", "7"], "learning_rate": ["--learning-rate", "0.003"],
    "eval_interval": ["--eval-interval", "3"], "max_seconds": ["--max-seconds", "12.5"], "seed": ["--seed", "5"],
    "wer_stop_threshold": ["--wer-stop-threshold", "1.1"], "model": ["--model", "some/model"],
    "lora_r": ["--lora-r", "3"], "lora_alpha": ["--lora-alpha", "5"], "lora_dropout": ["--lora-dropout", "0.2"],
    "target_modules": ["--target-modules", "q_proj, v_proj"], "lora_variant": ["--lora-variant", "dora"],
    "init_lora_weights": ["--init-lora-weights", "pissa"], "train_batch_size": ["--batch-size", "3"],
    "grad_accum": ["--grad-accum", "2"], "warmup_steps": ["--warmup-steps", "2"],
    "mixed_precision": ["--mixed-precision", "bf16"], "gradient_checkpointing": ["--gradient-checkpointing", "off"],
    "val_fraction": ["--val-fraction", "0.3"], "extra_manifest": ["--extra-manifest", "x.jsonl"],
    "canary_manifest": ["--canary-manifest", "c.jsonl"], "canary_margin": ["--canary-margin", "0.05"],
    "nonspeech_manifest": ["--nonspeech-manifest", "n.jsonl"], "repetition_guard": ["--repetition-guard", "8"],
    "replay_manifest": ["--replay-manifest", "r.jsonl"], "replay_ratio": ["--replay-ratio", "0.25", "--replay-manifest", "r.jsonl"],  # needs one
    "log_manifest_interval_wer": ["--log-manifest-interval-wer"], "export": ["--export", "ort"],
    "export_margin": ["--export-margin", "0.01"], "select": ["--select", "last"],
    "min_val_clips": ["--min-val-clips", "2"], "allow_leakage": ["--allow-leakage"], "group_by_length": ["--group-by-length"],
    "decode_batch_size": ["--decode-batch-size", "4"], "num_beams": ["--num-beams", "2"],
    "device": ["--device", "cpu"], "encoder": ["--encoder", "batched"], "rms_target_dbfs": ["--rms-target-dbfs", "-20"],
    "language": ["--language", "de"], "metric": ["--metric", "cer"],
    "resume": ["--resume"], "overwrite": ["--overwrite"],
}
REQUIRED = ["--output-dir", "o", "--dataset-path", "d", "--manifest-path", "m"]


def flattened(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_experiment_flag_is_in_the_flag_table_and_sets_exactly_its_field():
    from moonlora.cli import experiment_settings
    from moonlora.configs import EXPERIMENT_FLAGS, flag_paths

    experiment = subparsers(build_parser())["experiment"]
    dests = {a.dest for a in experiment._actions if a.option_strings and not isinstance(a, argparse._HelpAction)}
    assert dests == set(EXPERIMENT_FLAGS) == set(NON_DEFAULT) | {"output_dir", "dataset_path", "manifest_path"}
    default = ExperimentConfig.from_flags(experiment_settings(experiment.parse_args(REQUIRED)))
    assert default == ExperimentConfig("o", "d", "m")  # every flag's default is its dataclass field's default
    base = flattened(default.to_dict())
    assert {path for name in EXPERIMENT_FLAGS for path in flag_paths(name)} <= set(base)  # all are fields
    for name, argv in NON_DEFAULT.items():
        config = ExperimentConfig.from_flags(experiment_settings(experiment.parse_args(REQUIRED + argv)))
        changed = {path for path, value in flattened(config.to_dict()).items() if value != base[path]}
        expected = set(flag_paths(name)) | ({"replay_manifest"} if name == "replay_ratio" else set())
        assert changed == expected, f"--{name.replace('_', '-')} changed {changed}"


def test_the_flag_table_types_values_and_refuses_in_one_line():
    settings = {"output_dir": "o", "dataset_path": "d", "manifest_path": "m"}
    config = ExperimentConfig.from_flags({**settings, "batch_size": "3", "target_modules": ["q_proj", "v_proj"],
                                          "extra_manifest": "x.jsonl", "max_seconds": 10})
    assert (config.train.batch_size, config.lora.target_modules) == (3, ("q_proj", "v_proj"))
    assert config.extra_manifests == ("x.jsonl",) and config.max_seconds == 10.0
    assert config.with_flags({"lora_r": 4, "seed": 9}).lora.r == 4 and config.with_flags({"seed": 9}).train.seed == 9
    for values, message in [({"lora_rank": 4}, "lora-rank: not an experiment setting"),
                            ({"max_steps": "many"}, "max-steps = 'many': invalid literal"),
                            ({"allow_leakage": "yes"}, "allow-leakage = 'yes': give true or false"),
                            ({"max_steps": None}, "max-steps = None: give a value")]:
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            ExperimentConfig.from_flags({**settings, **values})
        assert "\n" not in str(error.value)
