"""moonlora's own errors are one line and exit 2; anything else is a bug: traceback, one line, exit 70.
Settings are refused before any work, and a run whose export failed can still be exported."""

import errno
import json
import math
import subprocess
import sys
import time

import pytest

from conftest import tone_set
from moonlora import cli
from moonlora.configs import DecodeConfig, DemoConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.errors import ConfigError, DeviceError, InputError, MissingInput, MoonloraError, ToolError


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("moonlora: error:") and "Traceback" not in err


# --- one line for moonlora's errors, a traceback for bugs ---------------------------------------------------------


@pytest.mark.parametrize("error", [InputError("--x 3: too big"), MissingInput("m.jsonl: no such file"),
                                   ConfigError("--a and --b exclude each other"), ToolError("eSpeak NG: broken")])
def test_moonlora_errors_are_one_line_exit_2(error, monkeypatch, capsys):
    def handler(args):
        raise error

    monkeypatch.setattr(cli, "cmd_diagnose", handler)
    code, err = run_cli(["diagnose", "--manifests", "m.jsonl", "--max-seconds", "8"], capsys)
    assert code == 2 and one_line_error(err) and str(error) in err


@pytest.mark.parametrize("error", [ValueError("internal"), FileNotFoundError("/tmp/x"), TypeError("bad call")])
def test_any_other_error_is_a_bug_with_its_traceback(error, monkeypatch, capsys):
    def handler(args):
        raise error

    monkeypatch.setattr(cli, "cmd_diagnose", handler)
    code, err = run_cli(["diagnose", "--manifests", "m.jsonl", "--max-seconds", "8"], capsys)
    assert code == cli.BUG_EXIT == 70
    assert "Traceback" in err and f"{type(error).__name__}: {error}" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("moonlora: bug:") and "a bug in moonlora" in last and "no run log was written" in last


def test_what_the_machine_refuses_is_one_line_naming_the_file(monkeypatch, capsys):
    def read_only(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out/summary.json")

    monkeypatch.setattr(cli, "cmd_diagnose", read_only)
    code, err = run_cli(["diagnose", "--manifests", "m.jsonl", "--max-seconds", "8"], capsys)
    assert code == 2 and one_line_error(err) and "/data/out/summary.json: Permission denied" in err

    def vanished(args):  # a file moonlora itself expected: a bug, not the user's doing
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/tmp/run/.staging")

    monkeypatch.setattr(cli, "cmd_diagnose", vanished)
    code, err = run_cli(["diagnose", "--manifests", "m.jsonl", "--max-seconds", "8"], capsys)
    assert code == 70 and "Traceback" in err and "a bug in moonlora" in err


def test_a_bug_in_a_run_names_the_run_log(monkeypatch, capsys, tmp_path):
    import moonlora.train.experiment as experiment

    def crash(config, progress=True):
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / "experiment_metrics.json").write_text("{}")
        raise KeyError("phase")

    monkeypatch.setattr(experiment, "run_experiment", crash)
    code, err = run_cli(["experiment", "--output-dir", str(tmp_path / "run"), "--dataset-path", "d.jsonl",
                         "--manifest-path", "m.jsonl"], capsys)
    assert code == 70 and "Traceback" in err
    assert str(tmp_path / "run" / "experiment_metrics.json") in err.strip().splitlines()[-1]


def test_every_error_class_of_moonlora_is_a_moonlora_error():
    from moonlora.data.audio import AudioError
    from moonlora.data.manifest import ManifestError
    from moonlora.eval.compare import CompareError
    from moonlora.eval.contract import ContractMismatch
    from moonlora.model.bundled import BundledModelMissing
    from moonlora.outputs import OutputError, OutputExists
    from moonlora.runfolder import CheckpointError, RunLocked, RunRecordError
    from moonlora.ship.export import ExportError
    from moonlora.ship.ort_export import GraphPatchError
    from moonlora.sweep import SweepError
    from moonlora.train.checklist import LeakageError

    for kind in (AudioError, ManifestError, CompareError, ContractMismatch, BundledModelMissing, OutputError,
                 OutputExists, CheckpointError, RunLocked, RunRecordError, ExportError, GraphPatchError, SweepError,
                 LeakageError, DeviceError):
        assert issubclass(kind, MoonloraError), kind


# --- interrupts ----------------------------------------------------------------------------------------------------

SLOW_IMPORT = """
import importlib.abc, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)

class SlowCli(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "moonlora.cli":
            print("importing", flush=True)
            time.sleep(60)  # stands for torch's import time on a slow disk
        return None

from moonlora import entry
sys.meta_path.insert(0, SlowCli())
sys.exit(entry.main())
"""


def test_sigterm_while_modules_import_exits_130_with_one_line():
    process = subprocess.Popen([sys.executable, "-c", SLOW_IMPORT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "importing"
        process.terminate()  # SIGTERM
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and err == "moonlora: interrupted\n"


@pytest.mark.parametrize("written, expected", [
    ((), "interrupted before the run folder was written; nothing to resume"),
    (("experiment_metrics.json", "experiment_config.json"), "interrupted before the first checkpoint"),
])
def test_an_interrupted_experiment_names_a_checkpoint_only_when_one_exists(written, expected, monkeypatch, capsys,
                                                                           tmp_path):
    import moonlora.train.experiment as experiment

    run_dir = tmp_path / "run"

    def interrupted(config, progress=True):
        for name in written:
            run_dir.mkdir(exist_ok=True)
            (run_dir / name).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_experiment", interrupted)
    code, err = run_cli(["experiment", "--output-dir", str(run_dir), "--dataset-path", "d.jsonl",
                         "--manifest-path", "m.jsonl"], capsys)
    assert code == 130 and err.count("\n") == 1 and expected in err and "a checkpoint is in" not in err


# --- settings refused before any work ------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--seeds", "3", "4", "3"], "--seeds: 3 given twice"),
    (["--device", "gpu"], "--device"),
    (["--device", "cuda:x"], "cuda:N"),
])
def test_demo_refuses_bad_flags_before_any_data(flags, message, monkeypatch, capsys, tmp_path):
    import moonlora.demo as demo

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesized data before refusing a flag")

    monkeypatch.setattr(demo, "build_domain", no_synthesis)
    monkeypatch.setattr(demo, "build_canary", no_synthesis)
    code, err = run_cli(["demo", "--output-dir", str(tmp_path / "demo"), *flags], capsys)
    assert code == 2 and one_line_error(err) and message in err
    assert not (tmp_path / "demo").exists()


def test_a_device_this_machine_lacks_is_refused_before_any_data(monkeypatch, capsys, tmp_path):
    import torch

    import moonlora.demo as demo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(demo, "build_domain", lambda *a, **k: pytest.fail("synthesized before the device check"))
    code, err = run_cli(["demo", "--output-dir", str(tmp_path / "demo"), "--device", "cuda"], capsys)
    assert code == 2 and one_line_error(err) and "no CUDA GPU" in err and not (tmp_path / "demo").exists()
    code, err = run_cli(["experiment", "--output-dir", str(tmp_path / "run"), "--dataset-path", "nope.jsonl",
                         "--manifest-path", "nope.jsonl", "--device", "cuda:0"], capsys)
    assert code == 2 and one_line_error(err) and "no CUDA GPU" in err and not (tmp_path / "run").exists()


def test_a_sweep_refuses_a_missing_device_before_any_run(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(["sweep", "--output-dir", str(tmp_path / "sweep"), "--dataset-path", "d.jsonl",
                         "--manifest-path", "m.jsonl", "--seed", "1", "--seed", "2", "--device", "cuda"], capsys)
    assert code == 2 and one_line_error(err) and "no CUDA GPU" in err and not (tmp_path / "sweep").exists()


def test_export_with_beams_is_refused_before_the_run_folder(capsys, tmp_path):
    code, err = run_cli(["experiment", "--output-dir", str(tmp_path / "run"), "--dataset-path", "nope.jsonl",
                         "--manifest-path", "nope.jsonl", "--export", "ort", "--num-beams", "2"], capsys)
    assert code == 2 and one_line_error(err) and "--num-beams 1" in err and not (tmp_path / "run").exists()


def test_export_with_a_model_the_bundled_graphs_cannot_take_is_refused_first(tiny_model_dir, capsys, tmp_path):
    started = time.process_time()
    # The manifests do not exist: the refusal must come before any data is read.
    code, err = run_cli(["experiment", "--output-dir", str(tmp_path / "run"), "--dataset-path", "nope.jsonl",
                         "--manifest-path", "nope.jsonl", "--export", "ort", "--model", str(tiny_model_dir)], capsys)
    assert code == 2 and one_line_error(err) and "not Moonshine base" in err and "moonlora export" in err
    assert not (tmp_path / "run").exists() and time.process_time() - started < 15


@pytest.mark.parametrize("field, value, flag", [
    ("canary_margin", -0.01, "--canary-margin"), ("canary_margin", math.nan, "--canary-margin"),
    ("export_margin", -1.0, "--export-margin"), ("export_margin", math.inf, "--export-margin"),
    ("val_fraction", 0.0, "--val-fraction"), ("wer_stop_threshold", math.inf, "--wer-stop-threshold"),
    ("bootstrap_resamples", 0, "bootstrap_resamples"),
])
def test_thresholds_are_range_checked_in_the_config(field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        ExperimentConfig(output_dir="o", dataset_path="d", manifest_path="m", **{field: value})


@pytest.mark.parametrize("make, flag", [
    (lambda: TrainConfig(learning_rate=math.nan), "--learning-rate"),
    (lambda: TrainConfig(learning_rate=math.inf), "--learning-rate"),
    (lambda: TrainConfig(seed=-1), "--seed"),
    (lambda: LoraSettings(alpha=0.0), "--lora-alpha"),
    (lambda: LoraSettings(dropout=math.nan), "--lora-dropout"),
    (lambda: DecodeConfig(tokens_per_second=math.inf), "tokens_per_second"),
    (lambda: DemoConfig(seeds=(1, 1)), "--seeds"),
    (lambda: DemoConfig(max_steps=0), "--max-steps"),
])
def test_other_settings_are_range_checked(make, flag):
    with pytest.raises(ConfigError, match=flag):
        make()


def test_cli_margin_flags_are_refused_as_one_line(capsys, tmp_path):
    for flag, value in (("--canary-margin", "-1"), ("--export-margin", "nan")):
        code, err = run_cli(["experiment", "--output-dir", str(tmp_path / "run"), "--dataset-path", "d.jsonl",
                             "--manifest-path", "m.jsonl", flag, value], capsys)
        assert code == 2 and one_line_error(err) and flag in err


# --- files and tools ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [{"output_dir": "x", "dataset_path": "d", "manifest_path": "m", "old_knob": 3},
                                     {"format": "someone else's"}, {"output_dir": "x", "dataset_path": "d",
                                                                    "manifest_path": "m", "train": {"max_steps": 0}}])
def test_an_old_or_foreign_experiment_config_beside_an_adapter_is_one_line(content, capsys, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "experiment_config.json").write_text(json.dumps(content))
    code, err = run_cli(["transcribe", "--manifest", "m.jsonl", "--adapter", str(tmp_path / "adapter"),
                         "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2 and one_line_error(err) and str(tmp_path / "experiment_config.json") in err


def test_espeak_failures_name_the_tool(monkeypatch):
    from moonlora.data.synth import espeak

    with pytest.raises(ToolError, match="^eSpeak NG: unknown eSpeak voice"):
        espeak.check_voice("xx-no-such-voice")
    engine = espeak._engine()
    monkeypatch.setattr(engine, "lib_path", "/nonexistent/libespeak-ng.so")
    with pytest.raises(ToolError, match="^eSpeak NG: cannot load its library /nonexistent"):
        engine.reset()
    espeak._engine.cache_clear()  # the next synthesis builds a sound engine again


def test_onnx_conversion_failures_name_the_tool(tmp_path, monkeypatch):
    from moonlora.ship import onnx_export

    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "broken.onnx").write_bytes(b"not a graph")
    with pytest.raises(ToolError, match="^onnxruntime.tools.convert_onnx_models_to_ort failed"):
        onnx_export.convert_to_ort(tmp_path / "onnx", tmp_path / "out")
    with pytest.raises(ToolError, match="^onnxruntime.quantization.quantize_dynamic failed while quantizing broken"):
        onnx_export.quantize_int8(tmp_path / "onnx" / "broken.onnx", tmp_path / "q.onnx")


# --- a run whose export failed ------------------------------------------------------------------------------------


def test_a_run_whose_export_failed_is_exported_without_retraining(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import moonlora.train.experiment as experiment
    from transformers import MoonshineForConditionalGeneration

    data = {"train": tone_set(tmp_path / "d", "train", 12), "main": tone_set(tmp_path / "d", "main", 4, seed0=50)}
    config = ExperimentConfig(
        output_dir=str(tmp_path / "run"), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), bootstrap_resamples=100, min_val_clips=1, export="ort",
        train=TrainConfig(max_steps=2, learning_rate=5e-3, batch_size=2, grad_accum=1, eval_interval=1, seed=3,
                          device="cpu"),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0), decode=DecodeConfig(batch_size=8, device="cpu"))
    monkeypatch.setattr(experiment, "check_run_settings", lambda config: None)  # the export must fail late here

    def broken_export(*args, **kwargs):
        raise RuntimeError("onnxruntime crashed")

    monkeypatch.setattr(experiment, "export_parity", broken_export)
    with pytest.raises(RuntimeError, match="onnxruntime crashed"):
        experiment.run_experiment(config, progress=False)
    record = json.loads((tmp_path / "run" / "experiment_metrics.json").read_text())
    assert (record["status"], record["phase"]) == ("failed", "export")
    monkeypatch.setattr(experiment, "train", lambda *a, **k: pytest.fail("retrained"))
    code, err = run_cli(["--quiet", "export", str(tmp_path / "run"), "--out", str(tmp_path / "shipped")], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "shipped" / "manifest.json").read_text())
    assert saved["source_run"] == str(tmp_path / "run") and saved["run_tuned_wer"]["main"] == record["tuned"]["main"]["wer"]
    MoonshineForConditionalGeneration.from_pretrained(tmp_path / "shipped")
    export_help = {name: parser for name, _, parser in cli._subcommands(cli.build_parser())}["export"].format_help()
    assert "whose --export failed" in " ".join(export_help.split())


@pytest.mark.parametrize("flag, value", [("--margin", "nan"), ("--margin", "-0.01"), ("--h3-band", "inf"),
                                         ("--regression-factor", "nan"), ("--regression-factor", "1")])
def test_decide_thresholds_are_range_checked(flag, value, capsys, tmp_path):
    code, err = run_cli(["decide", str(tmp_path), flag, value], capsys)
    assert code == 2 and one_line_error(err) and flag in err
