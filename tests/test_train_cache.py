"""Decoder-only adaptation: the `--target-modules` presets and the per-run encoder-output cache."""

from __future__ import annotations

import pytest
import torch
from conftest import lora_loaded_non_identity

from moonlora.train import loop as train_module
from moonlora.data.audio import AudioConfig, load_audio
from moonlora.configs import DEFAULT_TARGETS, LoraSettings, TrainConfig
from moonlora.model.lora import attach_lora
from moonlora.data.manifest import load_manifest
from moonlora.model.encoder import MOONSHINE_PATH, encoder_path_of
from moonlora.train.loop import EncoderCache, IntervalEval, TrainStream, encoder_is_frozen, train


def lora_module_names(model) -> set[str]:
    return {name.removesuffix(".lora_A.default") for name, _ in model.named_modules() if name.endswith("lora_A.default")}


def test_decoder_preset_adapts_every_decoder_projection_and_no_encoder_weight(tiny_loaded):
    model = attach_lora(tiny_loaded.model, LoraSettings(target_modules=("decoder",)), seed=0)
    names = lora_module_names(model)
    layers = model.config.decoder_num_hidden_layers
    assert len(names) == layers * 10  # self_attn q/k/v/o, encoder_attn q/k/v/o, fc1, fc2
    assert all(".decoder.layers." in name for name in names)
    assert encoder_is_frozen(model)
    assert any(p.requires_grad for p in model.get_decoder().parameters())


def test_all_preset_is_the_default_targets(tiny_model_dir):
    from moonlora.model.loading import load_model

    preset = attach_lora(load_model(str(tiny_model_dir), device="cpu").model, LoraSettings(target_modules=("all",)), 0)
    default = attach_lora(load_model(str(tiny_model_dir), device="cpu").model, LoraSettings(target_modules=DEFAULT_TARGETS), 0)
    assert lora_module_names(preset) == lora_module_names(default)
    assert any(".encoder.layers." in name for name in lora_module_names(preset))
    assert not encoder_is_frozen(preset)


def test_a_preset_stands_alone():
    with pytest.raises(ValueError, match="preset"):
        LoraSettings(target_modules=("decoder", "q_proj"))
    assert LoraSettings(target_modules=("decoder",)).target_modules == ("decoder",)  # kept as the user gave it


def test_cached_states_are_the_eval_mode_encoder_output_and_modes_are_restored(tiny_loaded, tone_manifest):
    encoder = tiny_loaded.model.get_encoder()
    encoder.config.attention_dropout = 0.5  # dropout would change the states if the cache ran in train mode
    fe = tiny_loaded.feature_extractor
    waveform = load_audio(load_manifest(tone_manifest).utterances[1].audio_filepath)
    inputs = fe(waveform, sampling_rate=fe.sampling_rate, return_tensors="pt")["input_values"]
    with torch.no_grad():
        expected = encoder.eval()(inputs).last_hidden_state[0]
    encoder.train()
    cache = EncoderCache(max_bytes=2**20)
    states = cache.states(encoder, MOONSHINE_PATH, "clip", {"input_values": inputs})
    assert torch.equal(states, expected) and not states.requires_grad
    assert all(module.training for module in encoder.modules())
    assert cache.used_bytes == states.numel() * 4 and "clip" in cache.saved


def test_the_cache_keeps_nothing_beyond_its_byte_bound(tiny_loaded, tone_manifest):
    encoder = tiny_loaded.model.get_encoder().eval()
    fe = tiny_loaded.feature_extractor
    cache = EncoderCache(max_bytes=0)
    waveform = load_audio(load_manifest(tone_manifest).utterances[0].audio_filepath)
    inputs = fe(waveform, sampling_rate=fe.sampling_rate, return_tensors="pt")["input_values"]
    inputs = {"input_values": inputs}
    first, second = cache.states(encoder, MOONSHINE_PATH, "a", inputs), cache.states(encoder, MOONSHINE_PATH, "a", inputs)
    assert cache.saved == {} and cache.used_bytes == 0 and torch.equal(first, second)


def train_decoder_only(model_dir, manifest, run_dir, steps: int) -> tuple[list[float], int, dict]:
    """Train a decoder-only adapter; the losses, how often the encoder ran, and the adapter."""
    from moonlora.model.loading import load_model

    loaded = load_model(str(model_dir), device="cpu")
    encoder_calls = []
    first_layer = loaded.model.get_encoder().layers[0]  # runs once per clip encoded, whichever path encodes
    first_layer.register_forward_hook(lambda module, args, output: encoder_calls.append(1))
    loaded.model = attach_lora(loaded.model, LoraSettings(target_modules=("decoder",)), seed=0)
    config = TrainConfig(max_steps=steps, learning_rate=1e-2, batch_size=2, grad_accum=1, warmup_steps=0,
                         eval_interval=steps, seed=3, mixed_precision="no")
    utterances = load_manifest(manifest).utterances
    result = train(loaded, TrainStream(utterances, [], config), config, AudioConfig(),
                   evaluate=lambda model, step: IntervalEval(1.0, None, {}), run_dir=run_dir, progress=False)
    return [row["loss"] for row in result.state.losses], len(encoder_calls), result.last_adapter


def test_cached_encoder_training_matches_uncached_training(tiny_model_dir, tone_manifest, tmp_path, monkeypatch):
    from moonlora.data import audio

    reads, read = [], audio.load_audio
    monkeypatch.setattr(audio, "load_audio", lambda *args: reads.append(args[0]) or read(*args))
    steps = 5  # 10 draws from 5 clips: every clip is drawn again from the cache
    cached, cached_calls, cached_adapter = train_decoder_only(tiny_model_dir, tone_manifest, tmp_path / "a", steps)
    cached_reads = len(reads)
    monkeypatch.setattr(train_module, "ENCODER_CACHE_BYTES", 0)
    plain, plain_calls, plain_adapter = train_decoder_only(tiny_model_dir, tone_manifest, tmp_path / "b", steps)
    assert cached_calls == 5 and plain_calls == steps * 2  # once per clip against once per draw
    # with either cache (encoder states; without it, the frozen stem's outputs) a clip's audio is read once
    assert cached_reads == 5 and len(reads) - cached_reads == 5
    assert abs(cached[0] - plain[0]) <= 1e-5
    assert all(abs(a - b) <= 1e-4 for a, b in zip(cached, plain))
    assert cached[-1] != cached[0]  # the adapter did train
    for name, tensor in cached_adapter.items():
        assert torch.allclose(tensor, plain_adapter[name], atol=1e-4), name


@pytest.mark.parametrize("family", ["moonshine", "moonshine_streaming"])
def test_the_loss_on_target_positions_equals_the_models_own_loss_and_gradients(family, tiny_model_dir, tiny_streaming_dir):
    """`teacher_forced_loss` projects only the non-padded label positions; loss and LoRA gradients must be the
    ones `model(labels=...)` gives (a non-identity adapter, labels of unequal lengths so padding exists)."""
    from moonlora.train.loop import label_ids, teacher_forced_loss

    folder = tiny_model_dir if family == "moonshine" else tiny_streaming_dir
    loaded, model = lora_loaded_non_identity(folder)
    hidden = model.config.encoder_config.hidden_size if family == "moonshine_streaming" else model.config.hidden_size
    states = torch.randn(3, 17, hidden)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, 12:] = 0
    labels = label_ids(loaded.tokenizer, ["a longer sentence than the rest", "short", "mid length one"],
                       model.config.eos_token_id)
    assert (labels == -100).sum() > 5
    def encoded():  # a fresh copy each call: the streaming decoder adds its position embedding in place
        return encoder_path_of(model).output_class(last_hidden_state=states.clone(), attention_mask=mask)

    attention_seen = []
    model.get_decoder().layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: attention_seen.append(module.config._attn_implementation))
    gradients = []
    for loss_of in (lambda: model(encoder_outputs=encoded(), attention_mask=mask, labels=labels).loss,
                    lambda: teacher_forced_loss(model, encoded(), mask, labels)):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        gradients.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (expected_loss, expected), (loss, got) = gradients
    # the family's training attention (streaming: eager) for the training forward only, then the model's again
    assert attention_seen == ["sdpa", "eager" if family == "moonshine_streaming" else "sdpa"]
    assert model.config._attn_implementation == "sdpa"
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert expected.keys() == got.keys() and all(torch.allclose(got[n], expected[n], atol=1e-6) for n in expected)
    assert any(float(g.abs().max()) > 0 for g in got.values())


def test_reuse_freed_memory_applies_on_glibc_and_changes_nothing_elsewhere(monkeypatch):
    import platform

    from moonlora.model.device import reuse_freed_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert reuse_freed_memory() is True  # every mallopt call was accepted
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert reuse_freed_memory() is False


def test_reuse_freed_memory_keeps_blocks_up_to_32_mb_and_a_free_heap_top_up_to_1_gb(monkeypatch):
    """The settings docs/benchmarks.md measured: at a 128 MB trim threshold the steps after the encoder cache
    fill faulted their memory back in (hundreds of thousands of page faults), at 1 GB they did not."""
    import ctypes
    import platform

    from moonlora.model.device import reuse_freed_memory

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert reuse_freed_memory() is True
    # M_MMAP_THRESHOLD (-3), M_TRIM_THRESHOLD (-1), M_TOP_PAD (-2)
    assert calls == [(-3, 32 * 2**20), (-1, 2**30), (-2, 32 * 2**20)]
