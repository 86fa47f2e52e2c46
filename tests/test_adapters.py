"""One answer to "which run does this adapter belong to" (moonlora.adapters), torch-free."""

import json
import subprocess
import sys

import pytest

from moonlora.adapters import AdapterError, resolve_adapter
from moonlora.configs import DecodeConfig, ExperimentConfig
from moonlora.runfolder import write_config_dict


@pytest.fixture()
def run_dir(tmp_path):
    """A run folder trained on a non-default model that selected its last adapter."""
    run = tmp_path / "run"
    run.mkdir()
    config = ExperimentConfig(output_dir=str(run), dataset_path="t.jsonl", manifest_path="m.jsonl",
                              model=str(tmp_path / "tiny-model"), select="last", decode=DecodeConfig(num_beams=3))
    write_config_dict(run, config.to_dict())
    for name in ("adapter", "adapter-best", "adapter-last"):
        (run / name).mkdir()
        (run / name / "adapter_config.json").write_text("{}")
    return run, config


@pytest.mark.parametrize("spelling, folder, which", [
    (".", "adapter", "last"), ("adapter", "adapter", "last"),
    ("adapter-best", "adapter-best", "best"), ("adapter-last", "adapter-last", "last")])
def test_the_four_spellings_of_a_runs_adapter_resolve_to_the_run(run_dir, spelling, folder, which):
    run, config = run_dir
    resolved = resolve_adapter(run / spelling)
    assert resolved.run_dir == run and resolved.adapter_dir == run / folder and resolved.which == which
    assert resolved.config == config and resolved.config.model.endswith("tiny-model")  # not bundled:base-en
    assert resolved.selected == (which == "last")


def test_a_plain_adapter_folder_belongs_to_no_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "adapter_config.json").write_text("{}")
    resolved = resolve_adapter(str(tmp_path / "mine"))
    assert (resolved.adapter_dir, resolved.run_dir, resolved.which, resolved.config) == (tmp_path / "mine", None, None,
                                                                                         None)
    # A run's subfolder that is none of its adapters is no spelling of the run's adapter.
    (tmp_path / "run").mkdir()
    write_config_dict(tmp_path / "run", ExperimentConfig("o", "d", "m").to_dict())
    (tmp_path / "run" / "copy").mkdir()
    (tmp_path / "run" / "copy" / "adapter_config.json").write_text("{}")
    assert resolve_adapter(tmp_path / "run" / "copy").run_dir is None


def test_a_folder_that_is_neither_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(AdapterError) as error:
        resolve_adapter(tmp_path / "notes")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "notes") in message
    assert "neither a run folder" in message and "adapter_config.json" in message and "RUN/adapter-best" in message


def test_an_unusable_run_config_is_a_one_line_error_naming_the_file(run_dir):
    run, config = run_dir
    (run / "experiment_config.json").write_text(json.dumps({**config.to_dict(), "no_such_setting": 1}))
    with pytest.raises(ValueError, match="experiment_config.json: not a run config") as error:
        resolve_adapter(run / "adapter-best")
    assert "\n" not in str(error.value)


def test_the_resolver_loads_no_model_stack():
    code = ("import sys, moonlora.adapters; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft', 'accelerate'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
