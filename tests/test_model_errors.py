"""A damaged or missing --model / --adapter file is one ModelSourceError naming it, no traceback."""

import shutil

import pytest
import torch
from transformers import MoonshineForConditionalGeneration

from conftest import tiny_config
from moonlora.configs import LoraSettings
from moonlora.errors import IncompleteModelError, ModelSourceError
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


def save_non_identity_adapter(folder, config, settings=LoraSettings()):
    """A LoRA adapter with random B matrices (not the identity), saved from a model of `config`."""
    torch.manual_seed(1)
    model = attach_lora(MoonshineForConditionalGeneration(config), settings, seed=1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter.data, std=0.1)
    model.save_pretrained(folder)
    return folder


def test_an_adapter_loads_every_saved_weight(tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    folder = save_non_identity_adapter(tmp_path / "adapter", tiny_config())
    wrapped = attach_adapter(MoonshineForConditionalGeneration(tiny_config()), folder)
    saved, loaded = load_file(folder / "adapter_model.safetensors"), get_peft_model_state_dict(wrapped)
    assert saved.keys() == loaded.keys() and any(tensor.any() for name, tensor in saved.items() if "lora_B" in name)
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)


def test_an_adapter_of_other_shapes_is_refused_naming_them(tmp_path):
    wider = tiny_config()
    wider.hidden_size, wider.intermediate_size = 32, 64
    folder = save_non_identity_adapter(tmp_path / "adapter", wider)
    with pytest.raises(IncompleteModelError) as error:
        attach_adapter(MoonshineForConditionalGeneration(tiny_config()), folder)
    message = one_line(error)
    assert message.startswith(f"{folder}: cannot load the adapter onto this model (moonshine): 32 of its weights "
                              "have another shape here (model.decoder.layers.0.encoder_attn.k_proj.lora_A.weight [8, 32] "
                              "vs [8, 16]")
    assert message.endswith("; pass the --model the adapter was trained on")


def test_an_adapter_for_layers_this_model_lacks_is_refused(tmp_path):
    deeper = tiny_config()
    deeper.encoder_num_hidden_layers = deeper.decoder_num_hidden_layers = 2
    folder = save_non_identity_adapter(tmp_path / "adapter", deeper)
    with pytest.raises(IncompleteModelError) as error:
        attach_adapter(MoonshineForConditionalGeneration(tiny_config()), folder)
    assert ("cannot load the adapter onto this model (moonshine): 32 of its 64 weights target layers this model "
            "lacks (model.decoder.layers.1.encoder_attn.k_proj.lora_A.weight") in one_line(error)


def test_an_adapter_short_of_weights_for_its_targets_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_non_identity_adapter(tmp_path / "adapter", tiny_config())
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    dropped = [name for name in tensors if ".decoder.layers.0.mlp.fc2." in name]
    for name in dropped:
        del tensors[name]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(IncompleteModelError) as error:
        attach_adapter(MoonshineForConditionalGeneration(tiny_config()), folder)
    assert f"it lacks {len(dropped)} weights of the layers it adapts here (model.decoder.layers.0.mlp.fc2.lora_A" \
        in one_line(error)


def test_an_adapter_whose_targets_are_foreign_is_refused(tmp_path):
    folder = save_non_identity_adapter(tmp_path / "adapter", tiny_config(), LoraSettings(target_modules=("q_proj",)))
    config = folder / "adapter_config.json"
    config.write_text(config.read_text().replace('"q_proj"', '"query"'))
    with pytest.raises(ModelSourceError) as error:
        attach_adapter(MoonshineForConditionalGeneration(tiny_config()), folder)
    assert one_line(error).startswith(f"{folder}: cannot load the adapter onto this model")
