"""Gradient checkpointing of the encoder's layers: less memory, the same numbers."""

from __future__ import annotations

import pytest
import torch

from moonlora.data.audio import AudioConfig, load_audio
from moonlora.configs import LoraSettings, TrainConfig
from moonlora.model.lora import attach_lora
from moonlora.data.manifest import load_manifest
from moonlora.train.loop import (IntervalEval, StemCache, TrainStream, batch_loss, checkpointed_layers,
                            resolve_gradient_checkpointing, train)


def loss_and_gradients(model, loaded, utterances, stem_cache: StemCache | None) -> tuple[float, dict, torch.Tensor]:
    """One training loss and its LoRA gradients from a fixed RNG state; also the RNG state after backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    waveforms = [load_audio(u.audio_filepath) for u in utterances]
    keys = [u.audio_filepath for u in utterances]
    loss = batch_loss(model, loaded.feature_extractor, loaded.tokenizer, waveforms, [u.text for u in utterances],
                      keys, stem_cache)
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), gradients, torch.get_rng_state()


@pytest.mark.parametrize("stem_cache", [True, False], ids=["stem-cache", "whole-encoder"])
def test_checkpointed_encoder_gives_the_same_loss_and_gradients(tiny_loaded, tone_manifest, stem_cache):
    model = attach_lora(tiny_loaded.model, LoraSettings(dropout=0.3), seed=0).train()
    for module in model.modules():  # dropout must draw the same masks when a layer reruns
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.3
    utterances = load_manifest(tone_manifest).utterances[:3]
    layers = model.get_encoder().layers
    mlp_calls = []
    layers[0].mlp.register_forward_pre_hook(lambda module, args: mlp_calls.append(1))

    plain_loss, plain_grads, plain_rng = loss_and_gradients(model, tiny_loaded, utterances, StemCache() if stem_cache else None)
    plain_calls = len(mlp_calls)
    with checkpointed_layers(layers):
        loss, grads, rng = loss_and_gradients(model, tiny_loaded, utterances, StemCache() if stem_cache else None)

    assert plain_calls == 3 and len(mlp_calls) - plain_calls == 6  # each clip's layer ran again in backward
    assert abs(loss - plain_loss) <= 1e-5
    assert grads.keys() == plain_grads.keys() and any(".encoder." in name for name in grads)
    for name, gradient in grads.items():
        assert (gradient - plain_grads[name]).abs().max().item() <= 1e-5, name
    assert torch.equal(rng, plain_rng)  # the RNG stream continues as without checkpointing
    assert all(layer.gradient_checkpointing is False and "_gradient_checkpointing_func" not in vars(layer)
               for layer in layers)  # the flags are back as they were


def test_auto_checkpoints_only_a_trained_encoder_on_the_cpu(tiny_model_dir):
    from moonlora.model.loading import load_model

    all_stack = attach_lora(load_model(str(tiny_model_dir), device="cpu").model, LoraSettings(), 0)
    decoder_only = attach_lora(load_model(str(tiny_model_dir), device="cpu").model,
                               LoraSettings(target_modules=("decoder",)), 0)
    assert resolve_gradient_checkpointing("auto", all_stack, "cpu") is True
    assert resolve_gradient_checkpointing("auto", decoder_only, "cpu") is False
    assert resolve_gradient_checkpointing("auto", all_stack, "cuda") is False
    assert resolve_gradient_checkpointing("on", decoder_only, "cuda") is True
    assert resolve_gradient_checkpointing("off", all_stack, "cpu") is False
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing="yes")


def train_all_stack(model_dir, manifest, run_dir, checkpointing: str) -> tuple[list[float], dict, int]:
    """A short all-stack run: its losses, last adapter and how often the encoder's first MLP ran."""
    from moonlora.model.loading import load_model

    loaded = load_model(str(model_dir), device="cpu")
    mlp_calls = []
    # a pre-hook: a rerun stops once it has what backward needs (torch's early stop), before the MLP returns
    loaded.model.get_encoder().layers[0].mlp.register_forward_pre_hook(lambda module, args: mlp_calls.append(1))
    loaded.model = attach_lora(loaded.model, LoraSettings(), seed=0)
    config = TrainConfig(max_steps=3, learning_rate=1e-2, batch_size=2, grad_accum=1, eval_interval=3, seed=3,
                         mixed_precision="no", gradient_checkpointing=checkpointing)
    result = train(loaded, TrainStream(load_manifest(manifest).utterances, [], config), config, AudioConfig(),
                   evaluate=lambda model, step: IntervalEval(1.0, None, {}), run_dir=run_dir, progress=False)
    return [row["loss"] for row in result.state.losses], result.last_adapter, len(mlp_calls)


def test_training_with_checkpointing_matches_training_without(tiny_model_dir, tone_manifest, tmp_path):
    losses, adapter, calls = train_all_stack(tiny_model_dir, tone_manifest, tmp_path / "on", "on")
    plain_losses, plain_adapter, plain_calls = train_all_stack(tiny_model_dir, tone_manifest, tmp_path / "off", "off")
    assert plain_calls == 6 and calls == 12  # 3 steps x 2 clips, each layer rerun once in backward
    assert all(abs(a - b) <= 1e-5 for a, b in zip(losses, plain_losses)) and len(losses) == 3
    assert losses[-1] != losses[0]
    for name, tensor in adapter.items():
        assert torch.allclose(tensor, plain_adapter[name], atol=1e-5), name


def test_auto_checkpoints_only_micro_batches_with_long_audio(tiny_model_dir, tone_manifest, tmp_path, monkeypatch):
    from moonlora.train import loop as train_module
    *_, short_calls = train_all_stack(tiny_model_dir, tone_manifest, tmp_path / "short", "auto")
    assert short_calls == 6  # the tone clips are ~1 s: far under the limit, nothing recomputed
    monkeypatch.setattr(train_module, "LONG_BATCH_SECONDS", 0.5)
    *_, long_calls = train_all_stack(tiny_model_dir, tone_manifest, tmp_path / "long", "auto")
    assert long_calls == 12  # every batch over the (lowered) limit: each layer rerun in backward
