"""A damaged or missing --model / --adapter file is one ModelSourceError naming it, no traceback."""

import shutil

import pytest
import torch
from transformers import MoonshineForConditionalGeneration

from conftest import tiny_config
from moonlora.configs import LoraSettings
from moonlora.errors import ModelSourceError
from moonlora.model.lora import attach_lora
from moonlora.model.loading import attach_adapter, load_model


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A real PEFT adapter folder, saved from a LoRA-wrapped tiny Moonshine."""
    torch.manual_seed(0)
    model = attach_lora(MoonshineForConditionalGeneration(tiny_config()), LoraSettings(), seed=0)
    folder = tmp_path_factory.mktemp("adapter-good")
    model.save_pretrained(folder)
    return folder


@pytest.fixture()
def adapter_copy(saved_adapter, tmp_path):
    return shutil.copytree(saved_adapter, tmp_path / "adapter")


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_intact_adapter_loads(tiny_model_dir, adapter_copy):
    assert load_model(str(tiny_model_dir), device="cpu", adapter=adapter_copy).has_adapter


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_adapter_weights_name_the_file(tiny_model_dir, adapter_copy, damage):
    weights = adapter_copy / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(ModelSourceError) as error:
        load_model(str(tiny_model_dir), device="cpu", adapter=adapter_copy)
    message = one_line(error)
    assert message.startswith(f"{weights}: not a readable safetensors file")
    assert "copy the adapter directory again" in message


def test_garbage_adapter_config_names_the_file(tiny_model_dir, adapter_copy):
    config = adapter_copy / "adapter_config.json"
    config.write_text("{not json")
    with pytest.raises(ModelSourceError) as error:
        load_model(str(tiny_model_dir), device="cpu", adapter=adapter_copy)
    assert one_line(error).startswith(f"{config}: not valid JSON")


def test_missing_adapter_folder_config_or_weights(tiny_model_dir, adapter_copy, tmp_path):
    absent = tmp_path / "no-such-adapter"
    with pytest.raises(ModelSourceError, match=f"--adapter {absent}: no such folder") as error:
        load_model(str(tiny_model_dir), device="cpu", adapter=absent)
    one_line(error)
    weights = adapter_copy / "adapter_model.safetensors"
    with pytest.raises(ModelSourceError, match="is a file, not a folder"):
        load_model(str(tiny_model_dir), device="cpu", adapter=weights)
    weights.unlink()
    with pytest.raises(ModelSourceError, match=f"{adapter_copy}: no adapter weights"):
        load_model(str(tiny_model_dir), device="cpu", adapter=adapter_copy)
    (adapter_copy / "adapter_config.json").unlink()
    with pytest.raises(ModelSourceError, match=f"{adapter_copy}: not a PEFT adapter folder .no adapter_config.json"):
        load_model(str(tiny_model_dir), device="cpu", adapter=adapter_copy)


def test_adapter_for_another_model_says_so(adapter_copy):
    config = tiny_config()
    config.hidden_size, config.intermediate_size = 32, 64
    with pytest.raises(ModelSourceError) as error:
        attach_adapter(MoonshineForConditionalGeneration(config), adapter_copy)
    message = one_line(error)
    assert message.startswith(f"{adapter_copy}: cannot load the adapter onto this model")
    assert "pass the --model the adapter was trained on" in message


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "preprocessor_config.json"])
def test_garbage_json_in_model_folder_names_the_file(model_copy, name):
    (model_copy / name).write_text("garbage{")
    with pytest.raises(ModelSourceError) as error:
        load_model(str(model_copy), device="cpu")
    assert one_line(error).startswith(f"{model_copy / name}: not valid JSON")


def test_truncated_model_weights_name_the_file(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelSourceError) as error:
        load_model(str(model_copy), device="cpu")
    message = one_line(error)
    assert message.startswith(f"{weights}: not a readable safetensors file")
    assert "copy the model folder again" in message
