"""LoRA variants through PEFT (issue 20): `--lora-variant dora` and `--init-lora-weights` (gaussian, pissa,
olora). Every saved adapter applies to the ORIGINAL base model, merges to what it computes, and a run
records its variant; adapters are made non-identity so no claim passes on an adapter that changes nothing."""

import dataclasses
import json
import shlex

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import MoonshineForConditionalGeneration

from conftest import tone_set
from moonlora.cli import main
from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.data.audio import AudioConfig
from moonlora.data.manifest import load_manifest
from moonlora.eval.evaluate import evaluate_manifest, read_eval
from moonlora.errors import ConfigError, InputError
from moonlora.model.loading import adapter_sha256, load_model
from moonlora.model.lora import (attach_lora, lora_delta_norm, lora_is_identity, moves_base, peft_config,
                                 shipped_adapter, write_adapter)
from moonlora.ship.export import export
from moonlora.sweep import SweepConfig, current_base, load_grid, plan_runs
from moonlora.train import loop as train_module
from moonlora.train.experiment import run_experiment


def forward_logits(model):
    torch.manual_seed(0)
    audio = torch.randn(1, 19200) * 0.1
    with torch.no_grad():
        return model(input_values=audio, decoder_input_ids=torch.tensor([[1, 5, 9, 13]])).logits


def attached(model_dir, **settings):
    loaded = load_model(str(model_dir), device="cpu")
    return attach_lora(loaded.model, LoraSettings(r=2, alpha=4.0, dropout=0.0, **settings), seed=0).eval()


def perturb(model, scale=0.3):
    """Move every adapter tensor (A, B and DoRA magnitudes) away from its start."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def trained(model, steps=4):
    """A few AdamW updates of the adapter on a fixed batch (what a run does, without the run)."""
    torch.manual_seed(1)
    audio, ids = torch.randn(2, 16000) * 0.1, torch.tensor([[1, 7, 11, 3], [1, 4, 6, 8]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_values=audio, decoder_input_ids=ids[:, :-1], labels=ids[:, 1:].contiguous()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


# --- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"variant": "vera"}, "--lora-variant must be one of lora, dora, got 'vera'"),
    ({"init_weights": "pissa_niter_4"}, "--init-lora-weights must be one of default, gaussian, pissa, olora, "
                                        "got 'pissa_niter_4'"),
])
def test_lora_settings_refuse_an_unknown_variant_or_init_in_one_line(changes, message):
    with pytest.raises(ConfigError) as error:
        LoraSettings(**changes)
    assert str(error.value) == message
    with pytest.raises(ConfigError, match="^--lora-variant must be one of"):
        ExperimentConfig.from_flags({"output_dir": "o", "dataset_path": "d", "manifest_path": "m",
                                     "lora_variant": "vera"})


def test_the_flags_set_the_lora_settings_and_a_config_saved_before_them_reads_as_plain_lora():
    config = ExperimentConfig.from_flags({"output_dir": "o", "dataset_path": "d", "manifest_path": "m",
                                          "lora_variant": "dora", "init_lora_weights": "pissa"})
    assert (config.lora.variant, config.lora.init_weights) == ("dora", "pissa")
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    old = ExperimentConfig("o", "d", "m").to_dict()
    for key in ("variant", "init_weights"):
        del old["lora"][key]  # a run folder written before issue 20
    assert ExperimentConfig.from_dict(old) == ExperimentConfig("o", "d", "m")
    base = {key: value for key, value in old.items() if key not in ("output_dir", "resume", "overwrite")}
    assert current_base(base)["lora"] == ExperimentConfig("o", "d", "m").to_dict()["lora"]  # an old sweep resumes


def test_variant_and_init_are_sweep_axes_that_name_their_runs(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[experiment]\ndataset-path = "t.jsonl"\nmanifest-path = "m.jsonl"\n'
                    '[grid]\nlora-variant = ["lora", "dora"]\ninit-lora-weights = ["default", "pissa"]\n')
    runs = plan_runs(SweepConfig.from_grid(load_grid(grid), {}, output_dir=str(tmp_path / "s")))
    assert {run.name: (run.config.lora.variant, run.config.lora.init_weights) for run in runs} == {
        "lora_init-default": ("lora", "default"), "lora_init-pissa": ("lora", "pissa"),
        "dora_init-default": ("dora", "default"), "dora_init-pissa": ("dora", "pissa")}
    grid.write_text('[experiment]\ndataset-path = "t.jsonl"\nmanifest-path = "m.jsonl"\n'
                    '[grid]\nlora-variant = ["lora", "vera"]\n')
    with pytest.raises(ConfigError, match="--lora-variant must be one of lora, dora, got 'vera'"):
        plan_runs(SweepConfig.from_grid(load_grid(grid), {}, output_dir=str(tmp_path / "s")))


def test_peft_config_carries_the_variant_and_the_init_and_the_defaults_are_peft_s_own():
    default = peft_config(LoraSettings())
    assert (default.use_dora, default.init_lora_weights) == (LoraConfig.use_dora, True) == (False, True)
    assert peft_config(LoraSettings(variant="dora")).use_dora is True
    for init in ("gaussian", "pissa", "olora"):  # full SVD "pissa", never the randomised pissa_niter_*
        assert peft_config(LoraSettings(init_weights=init)).init_lora_weights == init


# --- DoRA ----------------------------------------------------------------------------------------------------------


def test_dora_starts_as_the_base_and_its_magnitude_alone_moves_it(tiny_model_dir):
    base_logits = forward_logits(load_model(str(tiny_model_dir), device="cpu").model)
    model = attached(tiny_model_dir, variant="dora")
    assert torch.equal(forward_logits(model), base_logits)
    assert lora_is_identity(model) and lora_delta_norm(model) == 0.0
    with torch.no_grad():  # B stays zero: only the magnitude changes, and that changes the outputs
        for name, parameter in model.named_parameters():
            if "lora_magnitude_vector" in name:
                parameter.mul_(1.1)
    assert not lora_is_identity(model) and lora_delta_norm(model) > 0
    assert (forward_logits(model) - base_logits).abs().max() > 1e-3


def test_a_dora_adapter_reloads_and_merges_to_what_it_computes(tiny_model_dir, tmp_path):
    model = perturb(attached(tiny_model_dir, variant="dora"))
    expected = forward_logits(model)
    base_logits = forward_logits(load_model(str(tiny_model_dir), device="cpu").model)
    assert (expected - base_logits).abs().max() > 1e-2  # not the identity
    write_adapter(model, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    reloaded = load_model(str(tiny_model_dir), device="cpu", adapter=tmp_path / "adapter")
    assert (forward_logits(reloaded.model) - expected).abs().max() < 1e-5
    assert adapter_sha256(reloaded.model) == adapter_sha256(model)
    export(tmp_path / "adapter", tmp_path / "merged", model=str(tiny_model_dir))  # moonlora export --format hf
    merged = MoonshineForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert (forward_logits(merged) - expected).abs().max() < 1e-4


def test_the_adapter_hash_tells_dora_from_lora_with_the_same_tensors(tiny_model_dir):
    lora, dora = attached(tiny_model_dir), attached(tiny_model_dir, variant="dora")
    assert adapter_sha256(lora) != adapter_sha256(dora)


# --- inits ---------------------------------------------------------------------------------------------------------


def test_a_gaussian_init_starts_as_the_base_and_leaves_it_alone(tiny_model_dir):
    base = load_model(str(tiny_model_dir), device="cpu").model
    base_logits, base_weights = forward_logits(base), {k: v.clone() for k, v in base.state_dict().items()}
    model = attached(tiny_model_dir, init_weights="gaussian")
    assert not moves_base(model) and lora_is_identity(model)
    assert torch.equal(forward_logits(model), base_logits)
    assert all(torch.equal(tensor, base_weights[key.replace(".base_layer", "")])
               for key, tensor in model.base_model.model.state_dict().items() if "lora_" not in key)


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_a_base_moving_init_starts_as_the_base_and_its_saved_adapter_applies_to_the_original_base(
        tiny_model_dir, tmp_path, init, variant):
    base_logits = forward_logits(load_model(str(tiny_model_dir), device="cpu").model)
    model = attached(tiny_model_dir, init_weights=init, variant=variant)
    assert moves_base(model) and not lora_is_identity(model)  # W - BA + BA is the base within rounding only
    assert (forward_logits(model) - base_logits).abs().max() < 1e-4
    assert lora_delta_norm(model) == 0.0  # measured from its start, not B @ A (which is the top subspace)
    assert all(bool(p.detach().any()) for name, p in model.named_parameters() if "lora_B" in name)  # B0 != 0
    trained(model)
    expected = forward_logits(model)
    assert (expected - base_logits).abs().max() > 1e-2 and lora_delta_norm(model) > 0  # training moved it
    write_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (4, 8.0, True)  # plain LoRA, 2r
    saved, (shipped_config, shipped) = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")), \
        shipped_adapter(model)
    assert shipped_config["r"] == 4 and saved.keys() == shipped.keys()
    assert all(torch.equal(saved[key], shipped[key]) for key in saved)
    on_original = load_model(str(tiny_model_dir), device="cpu", adapter=tmp_path / "adapter")
    assert not moves_base(on_original.model)
    assert (forward_logits(on_original.model) - expected).abs().max() < 1e-4
    assert abs(lora_delta_norm(on_original.model) - lora_delta_norm(model)) < 1e-4 * lora_delta_norm(model)
    export(tmp_path / "adapter", tmp_path / "merged", model=str(tiny_model_dir))
    merged = MoonshineForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert (forward_logits(merged) - expected).abs().max() < 1e-4


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_pissa_adapter_moonlora_did_not_attach_is_refused_in_one_line(tiny_model_dir, tmp_path):
    from peft import PeftModel

    perturb(attached(tiny_model_dir, init_weights="pissa")).save_pretrained(tmp_path / "raw")  # PEFT's own format
    loaded = PeftModel.from_pretrained(load_model(str(tiny_model_dir), device="cpu").model, tmp_path / "raw")
    with pytest.raises(InputError, match="^this PiSSA/OLoRA adapter was not attached by moonlora") as error:
        lora_delta_norm(loaded)
    assert "\n" not in str(error.value)


def test_a_pissa_start_is_the_same_every_time(tiny_model_dir):
    """A resumed run re-attaches its adapter, then loads the checkpoint's: the residual base must be the same."""
    first, second = (attached(tiny_model_dir, init_weights="pissa") for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


# --- runs ----------------------------------------------------------------------------------------------------------


@pytest.fixture()
def data(tmp_path):
    return {"train": tone_set(tmp_path / "d", "train", 8), "main": tone_set(tmp_path / "d", "main", 3, seed0=50)}


def experiment_argv(tiny_model_dir, data, out, *extra):
    line = (f"--quiet experiment --output-dir {out} --dataset-path {data['train']} --manifest-path {data['main']} "
            f"--model {tiny_model_dir} --device cpu --min-val-clips 1 --max-steps 2 --eval-interval 1 "
            f"--learning-rate 5e-2 --batch-size 2 --grad-accum 1 --lora-r 2 --lora-alpha 4 --seed 3")
    return [*shlex.split(line), *extra]


@pytest.mark.parametrize("flags, lora, saved", [
    (["--lora-variant", "dora"], {"variant": "dora", "init_weights": "default"}, {"use_dora": True, "r": 2}),
    (["--init-lora-weights", "pissa"], {"variant": "lora", "init_weights": "pissa"},
     {"use_dora": False, "r": 4, "init_lora_weights": True}),
])
def test_a_run_with_a_variant_completes_records_it_and_ships_an_adapter_for_the_base(tiny_model_dir, data, tmp_path,
                                                                                     flags, lora, saved):
    out = tmp_path / "run"
    assert main(experiment_argv(tiny_model_dir, data, out, *flags)) == 0
    metrics = json.loads((out / "experiment_metrics.json").read_text())
    assert metrics["status"] == "success"
    for record in (metrics["config"]["lora"], json.loads((out / "experiment_config.json").read_text())["lora"]):
        assert {key: record[key] for key in lora} == lora
    for folder in ("adapter", "adapter-best", "adapter-last"):
        config = json.loads((out / folder / "adapter_config.json").read_text())
        assert {key: config[key] for key in saved} == saved, folder
    assert metrics["training"]["intervals"][0]["lora_delta_norm"] == 0.0
    assert metrics["training"]["intervals"][-1]["lora_delta_norm"] > 0
    # The shipped adapter on the original base transcribes what the run measured (PiSSA: measured on the
    # residual base, shipped as a plain LoRA of rank 2r).
    manifest = load_manifest(data["main"])
    shipped = evaluate_manifest(load_model(str(tiny_model_dir), device="cpu", adapter=out / "adapter"), manifest,
                                AudioConfig(), DecodeConfig(batch_size=8, device="cpu"), progress=False)
    measured = read_eval(out / "tuned" / "main", manifest)
    assert [clip.hypothesis for clip in shipped.clips] == [clip.hypothesis for clip in measured.clips]
    # ... under the same contract: the run's scores name the adapter its folder holds (PiSSA: the converted one)
    assert shipped.contract.adapter_sha256 == measured.contract.adapter_sha256
    assert shipped.contract == measured.contract
    baseline = read_eval(out / "baseline" / "main", manifest)
    true_base = evaluate_manifest(load_model(str(tiny_model_dir), device="cpu"), manifest, AudioConfig(),
                                  DecodeConfig(batch_size=8, device="cpu"), progress=False)
    assert baseline.contract == true_base.contract  # the baseline is the base model's, never a residual's
    assert [clip.hypothesis for clip in baseline.clips] == [clip.hypothesis for clip in true_base.clips]
    assert [clip.hypothesis for clip in measured.clips] != [clip.hypothesis for clip in baseline.clips]  # it moved


def test_a_pissa_run_resumed_after_an_interruption_repeats_the_uninterrupted_run_exactly(tiny_model_dir, data,
                                                                                        tmp_path, monkeypatch):
    """The resumed leg re-attaches (the same SVD, the same residual base), then loads the checkpoint."""
    def config(out):
        return ExperimentConfig(
            output_dir=str(out), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
            model=str(tiny_model_dir), min_val_clips=1, bootstrap_resamples=200,
            train=TrainConfig(max_steps=4, learning_rate=5e-2, batch_size=2, grad_accum=1, eval_interval=3, seed=3,
                              device="cpu"),
            lora=LoraSettings(r=2, alpha=4.0, dropout=0.1, init_weights="pissa"),
            decode=DecodeConfig(batch_size=8, device="cpu"))

    straight = run_experiment(config(tmp_path / "a"), progress=False)

    def interrupt(state):
        if state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_after_update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config(tmp_path / "b"), progress=False)
    monkeypatch.undo()
    resumed = run_experiment(dataclasses.replace(config(tmp_path / "b"), resume=True), progress=False)
    assert [leg.resumed_from_step for leg in resumed.legs] == [None, 2]
    assert [row["loss"] for row in resumed.training.losses] == [row["loss"] for row in straight.training.losses]
    for folder in ("adapter-best", "adapter-last"):
        a, b = (load_file(str(tmp_path / run / folder / "adapter_model.safetensors")) for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), folder
    assert resumed.tuned["main"].wer == straight.tuned["main"].wer


@pytest.mark.parametrize("settings", [{"variant": "dora"}, {"init_weights": "pissa"},
                                      {"variant": "dora", "init_weights": "pissa"}])
def test_the_variants_work_the_same_for_moonshine_streaming(tiny_streaming_dir, tmp_path, settings):
    """Everything goes through PEFT, so the streaming family needs nothing of its own."""
    base_logits = forward_logits(load_model(str(tiny_streaming_dir), device="cpu").model)
    model = attached(tiny_streaming_dir, target_modules=("all",), **settings)
    assert (forward_logits(model) - base_logits).abs().max() < 1e-4 and lora_delta_norm(model) == 0.0
    expected = forward_logits(trained(model))
    assert (expected - base_logits).abs().max() > 1e-2 and lora_delta_norm(model) > 0
    write_adapter(model, tmp_path / "adapter")
    on_original = load_model(str(tiny_streaming_dir), device="cpu", adapter=tmp_path / "adapter")
    assert (forward_logits(on_original.model) - expected).abs().max() < 1e-4
    export(tmp_path / "adapter", tmp_path / "merged", model=str(tiny_streaming_dir))
    merged = load_model(str(tmp_path / "merged"), device="cpu")
    assert (forward_logits(merged.model) - expected).abs().max() < 1e-4
