"""`moonlora export --format hf`: the merged model computes what the adapter model computes, loads
through plain from_pretrained and `--model DIR`, and records where it came from."""

import dataclasses
import json

import pytest
import torch
from transformers import MoonshineForConditionalGeneration

from conftest import tone_set
from moonlora.cli import main
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.eval.evaluate import evaluate_manifest
from moonlora.data.audio import AudioConfig
from moonlora.train.experiment import run_experiment
from moonlora.ship.export import ExportError, export
from moonlora.model.lora import attach_lora
from moonlora.data.manifest import load_manifest
from moonlora.model.loading import load_model, weights_sha256
from moonlora.outputs import OutputExists
from moonlora.errors import ModelSourceError


def save_non_identity_adapter(model_spec: str, folder, rank: int, b_scale: float):
    """A saved LoRA adapter with random non-zero B matrices (so merging changes the weights)."""
    loaded = load_model(model_spec, device="cpu")
    peft_model = attach_lora(loaded.model, LoraSettings(r=rank, alpha=2 * rank, dropout=0.0), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * b_scale)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture()
def adapter_dir(tiny_model_dir, tmp_path):
    return save_non_identity_adapter(str(tiny_model_dir), tmp_path / "adapter", rank=2, b_scale=0.5)


def forward_logits(model, waveform_seconds=1.2):
    torch.manual_seed(0)
    audio = torch.randn(1, int(16000 * waveform_seconds)) * 0.1
    decoder_ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        return model(input_values=audio, decoder_input_ids=decoder_ids).logits


def test_merged_export_computes_what_the_adapter_model_computes(tiny_model_dir, adapter_dir, tone_manifest, tmp_path):
    out = tmp_path / "export"
    result = export(adapter_dir, out, model=str(tiny_model_dir))
    with_adapter = load_model(str(tiny_model_dir), device="cpu", adapter=adapter_dir)
    base = load_model(str(tiny_model_dir), device="cpu")
    plain = MoonshineForConditionalGeneration.from_pretrained(out).eval()  # plain transformers, no moonlora
    merged_logits, adapter_logits = forward_logits(plain), forward_logits(with_adapter.model)
    assert (merged_logits - adapter_logits).abs().max() < 1e-4
    assert (forward_logits(base.model) - adapter_logits).abs().max() > 1e-2  # the adapter is not the identity
    exported = load_model(str(out), device="cpu")  # moonlora's --model DIR
    assert exported.weights_sha256 == result.manifest["merged_weights_sha256"] != base.weights_sha256
    manifest = load_manifest(tone_manifest)
    decode = DecodeConfig(batch_size=4, device="cpu")
    by_adapter = evaluate_manifest(with_adapter, manifest, AudioConfig(), decode, progress=False)
    by_export = evaluate_manifest(exported, manifest, AudioConfig(), decode, progress=False)
    assert [c.decoded.token_ids for c in by_export.clips] == [c.decoded.token_ids for c in by_adapter.clips]
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["base_model_sha256"] == base.weights_sha256 and saved["adapter_sha256"]
    assert saved["format"] == "hf" and saved["precision"] == "float32" and saved["provenance"]["packages"]
    for name in ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    with pytest.raises(OutputExists):
        export(adapter_dir, out, model=str(tiny_model_dir))


def test_export_of_a_run_through_the_cli(tiny_model_dir, tmp_path, capsys):
    data = {"train": tone_set(tmp_path / "d", "train", 12), "main": tone_set(tmp_path / "d", "main", 4, seed0=50)}
    config = ExperimentConfig(
        output_dir=str(tmp_path / "run"), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), bootstrap_resamples=100, min_val_clips=1,
        train=TrainConfig(max_steps=2, learning_rate=5e-3, batch_size=2, grad_accum=1, eval_interval=1, seed=3,
                          device="cpu"),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0), decode=DecodeConfig(batch_size=8, device="cpu"))
    record = run_experiment(config, progress=False)
    out = tmp_path / "shipped"
    assert main(["--quiet", "export", str(tmp_path / "run"), "--out", str(out)]) == 0
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["source_run"] == str(tmp_path / "run") and saved["base_model"] == str(tiny_model_dir)
    assert saved["run_eval_contracts"]["main"] == record.tuned["main"].contract
    assert saved["run_tuned_wer"]["main"] == record.tuned["main"].wer and saved["run_metric"]["main"] == "wer"
    assert saved["run_tuned_primary"]["main"] == record.tuned["main"].wer
    merged = MoonshineForConditionalGeneration.from_pretrained(out)
    assert weights_sha256(merged) == saved["merged_weights_sha256"]
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 2  # never overwritten silently
    assert "--out" in capsys.readouterr().err
    # RUN/adapter-best and RUN/adapter-last are the run's adapters too: the run's model, source_run kept.
    for name in ("adapter-best", "adapter-last"):
        assert main(["--quiet", "export", str(tmp_path / "run" / name), "--out", str(tmp_path / name)]) == 0
        candidate = json.loads((tmp_path / name / "manifest.json").read_text())
        assert candidate["base_model"] == str(tiny_model_dir) != "bundled:base-en"
        assert candidate["source_run"] == str(tmp_path / "run")
        assert candidate["source_adapter"] == str(tmp_path / "run" / name)
        assert candidate["source_candidate"] == name.removeprefix("adapter-")
        assert candidate["run_tuned_wer"]["main"] == record.candidates[candidate["source_candidate"]].main.wer
    assert json.loads((tmp_path / "adapter-best" / "manifest.json").read_text())["adapter_sha256"] == \
        saved["adapter_sha256"]  # --select best: adapter/ is adapter-best
    assert main(["export", str(tmp_path / "run" / "adapter-last"), "--out", str(tmp_path / "x"),
                 "--model", "bundled:base-en"]) == 2
    assert "the run trained its adapter on" in capsys.readouterr().err
    # Not Moonshine base: route (b), moonlora's ONNX export, int8, loadable by the ORT backend.
    shipped = export(tmp_path / "run", tmp_path / "tiny-ort", export_format="ort")
    assert shipped.manifest["quantization"]["route"].startswith("b:") and shipped.manifest["precision"] == "int8"
    assert sorted(p.name for p in (tmp_path / "tiny-ort").iterdir()) == [
        ".moonlora-output.json", "decoder_model_merged.ort", "encoder_model.ort", "manifest.json", "tokenizer.bin"]
    assert load_model(f"ort:{tmp_path / 'tiny-ort'}").precision == "int8"


def test_bad_export_sources_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(ExportError, match="neither a run folder"):
        export(tmp_path, tmp_path / "out")
    data = {"train": tone_set(tmp_path / "d", "train", 12), "main": tone_set(tmp_path / "d", "main", 4, seed0=50)}
    broken = ExperimentConfig(output_dir=str(tmp_path / "failed"), dataset_path=str(data["train"]),
                              manifest_path=str(data["main"]), model=str(tmp_path / "no-model"), min_val_clips=1)
    with pytest.raises(ModelSourceError, match="not a folder, a hub id"):
        run_experiment(dataclasses.replace(broken), progress=False)
    assert main(["export", str(tmp_path / "failed"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed at setup" in err and "only a finished run" in err
    assert not (tmp_path / "o").exists()


def test_lost_adapter_warning_only_when_every_change_rounded_away():
    from moonlora.ship.export import lost_adapter_warning

    assert "the int8 model is the base model" in lost_adapter_warning({"differing_tensors": 128, "changed_tensors": 0})
    assert lost_adapter_warning({"differing_tensors": 128, "changed_tensors": 111}) is None
    assert lost_adapter_warning({"differing_tensors": 0, "changed_tensors": 0}) is None  # an identity adapter


@pytest.mark.integration
def test_export_both_of_a_base_adapter_writes_loadable_hf_and_ort(tmp_path):
    """The bundled base with a non-identity LoRA: hf/ and ort/ side by side, each with its manifest."""
    adapter = save_non_identity_adapter("bundled:base-en", tmp_path / "adapter", rank=4, b_scale=0.02)
    result = export(adapter, tmp_path / "ship", export_format="both")
    hf, ort = result.manifests["hf"], result.manifests["ort"]
    assert hf["precision"] == "float32" and ort["precision"] == "int8"
    assert hf["merged_weights_sha256"] == ort["merged_weights_sha256"] == weights_sha256(
        MoonshineForConditionalGeneration.from_pretrained(tmp_path / "ship" / "hf"))
    assert ort["quantization"]["rounding"] == "stochastic" and ort["quantization"]["changed_tensors"] > 0
    assert sorted(p.name for p in (tmp_path / "ship" / "ort").iterdir()) == [
        "decoder_model_merged.ort", "encoder_model.ort", "manifest.json", "tokenizer.bin"]
    scored = load_model(f"ort:{tmp_path / 'ship' / 'ort'}")
    assert scored.runtime == "onnxruntime" and scored.precision == "int8"
