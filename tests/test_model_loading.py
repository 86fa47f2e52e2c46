"""Verified loading: the family comes from config.json, and a model that did not load completely is
refused in one line before any decode or training (issue 25); LoRA targets are checked against the
loaded model's module names before any decode (issue 19)."""

import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MoonshineForConditionalGeneration

from conftest import tiny_config, tone_set
from moonlora.cli import main
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.errors import IncompleteModelError, LoraTargetError, ModelFamilyError
from moonlora.model.families import FAMILIES, MOONSHINE, MOONSHINE_STREAMING, family_for
from moonlora.model.loading import load_model, load_weights, model_skeleton
from moonlora.model.verify import captured_load_report
from moonlora.model.lora import check_targets
from moonlora.train import experiment as experiment_module
from moonlora.train.experiment import run_experiment

FAST_SECONDS = 15


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {"train": tone_set(folder, "train", 6), "main": tone_set(folder, "main", 3, seed0=50)}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def save_tiny(folder, hf_tokenizer, **config_changes):
    """A tiny Moonshine save_pretrained folder with some config fields changed before init."""
    from moonlora.model.loading import bundled_feature_extractor

    config = tiny_config()
    for name, value in config_changes.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    model = MoonshineForConditionalGeneration(config)
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    bundled_feature_extractor().save_pretrained(folder)
    return folder


# --- the registry ----------------------------------------------------------------------------------------------


def test_the_registry_knows_both_moonshine_families_and_refuses_any_other_type_in_one_line():
    from transformers import MoonshineStreamingForConditionalGeneration

    assert family_for("moonshine") is MOONSHINE and MOONSHINE.transformers_model() is MoonshineForConditionalGeneration
    assert family_for("moonshine_streaming") is MOONSHINE_STREAMING
    assert MOONSHINE_STREAMING.transformers_model() is MoonshineStreamingForConditionalGeneration
    for unknown in ("moonshine_stream", "whisper", None):
        with pytest.raises(ModelFamilyError) as error:
            family_for(unknown, source="/some/folder")
        message = one_line(error)
        assert message.startswith(f"/some/folder: model type {unknown!r} is not a model family") and "moonshine" in message


def test_every_family_has_every_preset_and_loads_16k_audio():
    for family in FAMILIES.values():
        assert set(family.target_presets) == set(LoraSettings.presets)
        assert family.sampling_rate == 16000 and family.frontend
        assert family.transformers_config()().model_type == family.model_type


def test_families_module_imports_no_model_stack():
    code = ("import json, sys, moonlora.model.families\n"
            "print(json.dumps([m for m in ('torch', 'transformers', 'peft') if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# --- a valid model ---------------------------------------------------------------------------------------------


def test_a_valid_model_records_its_type_and_what_was_checked(tiny_model_dir, tone_manifest, tmp_path):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.model_type == "moonshine" and loaded.family is MOONSHINE
    assert loaded.load_check == {"status": "complete", "tensors": len(loaded.model.state_dict()),
                                 "vocabulary": 32000, "embedding_rows": 32768, "sampling_rate": 16000}
    assert main(["--quiet", "transcribe", "--manifest", str(tone_manifest), "--model", str(tiny_model_dir),
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu"]) == 0
    contract = json.loads((tmp_path / "out" / "summary.json").read_text())["contract"]
    assert contract["model_type"] == "moonshine" and contract["load_check"] == loaded.load_check


def test_loading_a_valid_model_logs_no_newly_initialized_weights(tiny_model_dir, model_copy, capfd):
    with captured_load_report() as report:
        load_model(str(tiny_model_dir), device="cpu")
    assert not any("newly initialized" in line for line in report)
    assert "newly initialized" not in "".join(capfd.readouterr())
    # The capture does see transformers' report: a checkpoint short of one tensor shows up in it.
    weights = model_copy / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.decoder.norm.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    _, info, report = load_weights(MOONSHINE, str(model_copy), local_only=True)
    assert info["missing_keys"] and any("newly initialized" in line for line in report)
    assert "LOAD REPORT" not in "".join(capfd.readouterr())  # kept off the console


def test_a_hub_style_tokenizer_with_the_reserved_tokens_fits(model_copy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_copy)
    tokenizer.add_tokens([f"<<ST_{i}>>" for i in range(768)], special_tokens=True)
    tokenizer.save_pretrained(model_copy)
    loaded = load_model(str(model_copy), device="cpu")
    assert loaded.load_check["vocabulary"] == loaded.load_check["embedding_rows"] == 32768


# --- refused models --------------------------------------------------------------------------------------------


def test_a_streaming_folder_loads_as_its_family_with_the_moonshine_tokenizer(tiny_streaming_dir):
    loaded = load_model(str(tiny_streaming_dir), device="cpu")
    assert loaded.model_type == "moonshine_streaming" and loaded.family is MOONSHINE_STREAMING
    assert type(loaded.model).__name__ == "MoonshineStreamingForConditionalGeneration"
    # the bundled Moonshine tokenizer's 32000 pieces fit the streaming config's 32768-row embedding
    assert loaded.load_check["vocabulary"] == 32000 and loaded.load_check["embedding_rows"] == 32768
    skeleton = model_skeleton(str(tiny_streaming_dir))
    assert [name for name, _ in skeleton.named_modules()] == [name for name, _ in loaded.model.named_modules()]


def test_a_streaming_folder_short_of_a_weight_is_refused_naming_the_folder_and_type(tiny_streaming_dir, tmp_path):
    copy = shutil.copytree(tiny_streaming_dir, tmp_path / "streaming")
    tensors = load_file(copy / "model.safetensors")
    del tensors["model.encoder.embedder.linear.weight"]
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IncompleteModelError) as error:
        load_model(str(copy), device="cpu")
    message = one_line(error)
    assert message.startswith(f"{copy}: the moonshine_streaming model did not load completely: 1 weight(s) missing")
    assert "model.encoder.embedder.linear.weight" in message


def test_a_skeleton_has_the_module_names_and_no_weights(tiny_model_dir, tmp_path):
    skeleton = model_skeleton(str(tiny_model_dir))
    loaded = load_model(str(tiny_model_dir), device="cpu").model
    assert [name for name, _ in skeleton.named_modules()] == [name for name, _ in loaded.named_modules()]
    assert {parameter.device.type for parameter in skeleton.parameters()} == {"meta"}
    for elsewhere in (tmp_path / "absent", "ort:bundled:base-en", "nobody/not-in-the-cache"):
        assert model_skeleton(str(elsewhere)) is None


def run_cli(args, capsys):
    capsys.readouterr()
    started = time.perf_counter()
    code = main(args)
    seconds = time.perf_counter() - started
    return code, capsys.readouterr().err.strip(), seconds


def assert_refused_in_one_line(code, err, seconds, *fragments):
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert seconds < FAST_SECONDS
    for fragment in fragments:
        assert fragment in err


def test_cli_refuses_an_unknown_model_type_in_transcribe_and_experiment(tiny_streaming_dir, tone_manifest, data,
                                                                        tmp_path, capsys):
    folder = shutil.copytree(tiny_streaming_dir, tmp_path / "other-type")
    edit_json(folder / "config.json", model_type="whisper")
    out = tmp_path / "transcribed"
    code, err, seconds = run_cli(["transcribe", "--manifest", str(tone_manifest), "--model", str(folder),
                                  "--output-dir", str(out), "--device", "cpu"], capsys)
    assert_refused_in_one_line(code, err, seconds, str(folder), "'whisper' is not a model family")
    run_dir = tmp_path / "run"
    code, err, seconds = run_cli(["experiment", "--output-dir", str(run_dir), "--dataset-path", str(data["train"]),
                                  "--manifest-path", str(data["main"]), "--model", str(folder),
                                  "--min-val-clips", "1", "--device", "cpu"], capsys)
    assert_refused_in_one_line(code, err, seconds, str(folder), "'whisper' is not a model family")
    assert not out.exists() and not run_dir.exists()


def test_a_base_config_over_tiny_weights_is_refused(model_copy):
    # A v1 checkpoint whose config.json says Moonshine base while its weights are tiny.
    edit_json(model_copy / "config.json", hidden_size=416, intermediate_size=1664, encoder_num_hidden_layers=8,
              decoder_num_hidden_layers=8, encoder_num_attention_heads=8, decoder_num_attention_heads=8,
              encoder_num_key_value_heads=8, decoder_num_key_value_heads=8)
    with pytest.raises(IncompleteModelError) as error:
        load_model(str(model_copy), device="cpu")
    message = one_line(error)
    assert message.startswith(f"{model_copy}: the moonshine model did not load completely: ")
    assert "missing from the checkpoint (model.decoder.layers.1." in message
    assert "of another shape than config.json says (" in message and "[16, 16] vs [416, 416]" in message


def test_a_checkpoint_short_of_one_tensor_is_refused_naming_it(model_copy):
    weights = model_copy / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.encoder.layers.0.self_attn.k_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(IncompleteModelError) as error:
        load_model(str(model_copy), device="cpu")
    assert one_line(error).startswith(
        f"{model_copy}: the moonshine model did not load completely: 1 weight(s) missing from the checkpoint "
        "(model.encoder.layers.0.self_attn.k_proj.weight); pass the complete folder"
    )


def test_a_checkpoint_with_a_foreign_tensor_is_refused(model_copy):
    weights = model_copy / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.decoder.extra_head.weight"] = torch.zeros(4, 4)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(IncompleteModelError, match=r"1 weight\(s\) the model does not have \(model.decoder.extra_head"):
        load_model(str(model_copy), device="cpu")


@pytest.mark.parametrize("vocab_size", [32000 + 769, 31999])
def test_an_embedding_the_tokenizer_does_not_fit_is_refused(tmp_path, hf_tokenizer, vocab_size):
    folder = save_tiny(tmp_path / "model", hf_tokenizer, vocab_size=vocab_size)
    with pytest.raises(IncompleteModelError) as error:
        load_model(str(folder), device="cpu")
    assert f"the tokenizer's 32000 ids do not fit the embedding's {vocab_size} rows" in one_line(error)


def test_a_tokenizer_ending_on_another_id_is_refused(model_copy):
    edit_json(model_copy / "config.json", eos_token_id=3)
    with pytest.raises(IncompleteModelError, match="the tokenizer ends text with id 2, the model with 3"):
        load_model(str(model_copy), device="cpu")


def test_a_feature_extractor_not_at_16k_is_refused(model_copy):
    edit_json(model_copy / "preprocessor_config.json", sampling_rate=8000)
    with pytest.raises(IncompleteModelError) as error:
        load_model(str(model_copy), device="cpu")
    assert one_line(error).startswith(f"{model_copy}: the moonshine model did not load completely: the feature "
                                      "extractor is set to 8000 Hz, not 16000")


# --- LoRA targets ----------------------------------------------------------------------------------------------


def test_targets_are_checked_against_the_model_module_names():
    model = MoonshineForConditionalGeneration(tiny_config())
    for good in [("all",), ("decoder",), ("q_proj", "fc1"), ("model.decoder.layers.0.self_attn.q_proj",)]:
        check_targets(model, good)
    for bad, named in [(("q_projj",), "q_projj names"), (("q_proj", "k_projj"), "k_projj names"),
                       (("layers",), "layers names")]:
        with pytest.raises(LoraTargetError) as error:
            check_targets(model, bad)
        message = one_line(error)
        assert message.startswith(f"--target-modules {','.join(bad)}: {named} no layer of this Moonshine model")
        assert "q_proj" in message and "preset: all, decoder" in message


def experiment_config(model_dir, data, out, **lora):
    return ExperimentConfig(
        output_dir=str(out), dataset_path=str(data["train"]), manifest_path=str(data["main"]), model=str(model_dir),
        bootstrap_resamples=50, min_val_clips=1, train=TrainConfig(max_steps=1, batch_size=2, eval_interval=1, seed=3, device="cpu"),
        lora=LoraSettings(r=2, alpha=4, **lora), decode=DecodeConfig(batch_size=8, device="cpu"),
    )


def test_a_target_typo_fails_the_run_before_any_decode(tiny_model_dir, data, tmp_path, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded before the targets were checked")

    monkeypatch.setattr(experiment_module, "evaluate_sets", no_decode)
    with pytest.raises(LoraTargetError, match="--target-modules q_projj: q_projj names no layer"):
        run_experiment(experiment_config(tiny_model_dir, data, tmp_path / "run", target_modules=("q_projj",)),
                       progress=False)
    assert not (tmp_path / "run").exists()  # checked on the model's config, before the folder is made


def test_the_loaded_model_is_checked_again_where_its_config_was_not_at_hand(tiny_model_dir, data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(experiment_module, "model_skeleton", lambda spec: None)  # e.g. a hub id not cached yet
    monkeypatch.setattr(experiment_module, "evaluate_sets", lambda *args, **kwargs: pytest.fail("decoded"))
    with pytest.raises(LoraTargetError, match="--target-modules q_projj: q_projj names no layer"):
        run_experiment(experiment_config(tiny_model_dir, data, tmp_path / "run", target_modules=("q_projj",)),
                       progress=False)


@pytest.mark.integration
def test_a_target_typo_on_the_base_model_fails_within_15_cpu_seconds(data, tmp_path, capsys):
    load_model("bundled:base-en", device="cpu")  # converts the bundled model once, outside the timing
    run_dir = tmp_path / "run"
    started = time.process_time()
    code, err, _ = run_cli(["experiment", "--output-dir", str(run_dir), "--dataset-path", str(data["train"]),
                            "--manifest-path", str(data["main"]), "--target-modules", "q_projj",
                            "--min-val-clips", "1", "--device", "cpu"], capsys)
    assert time.process_time() - started < FAST_SECONDS
    assert_refused_in_one_line(code, err, 0, "--target-modules q_projj", "no layer of this Moonshine model")
    assert not run_dir.exists()
