import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from moonlora.data.audio import load_audio
from moonlora.configs import DecodeConfig
from moonlora.eval.decode import decode_clips
from moonlora.eval.evaluate import evaluate_manifest
from moonlora.data.manifest import load_manifest
from moonlora.model.decoder import batch_order
from moonlora.model.loading import adapter_sha256, load_model, weights_sha256
from moonlora.data.audio import AudioConfig


def decode_manifest(loaded, manifest, config):
    utterances = manifest.utterances
    clips, _ = decode_clips(
        loaded.decoder(), [u.duration for u in utterances],
        lambda i: load_audio(utterances[i].audio_filepath), config,
    )
    return clips


def nonidentity_lora(model):
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1", "fc2"],
                        init_lora_weights=False)  # random B: the adapter is not a no-op
    return get_peft_model(model, config)


def test_token_cap_is_per_clip(tiny_loaded, tone_manifest):
    manifest = load_manifest(tone_manifest)
    clips = decode_manifest(tiny_loaded, manifest, DecodeConfig(batch_size=5))
    for utterance, clip in zip(manifest.utterances, clips):
        assert clip.token_cap == math.ceil(6.5 * utterance.duration) + 2
        assert len(clip.token_ids) <= clip.token_cap - 1
    # A random model never emits EOS on its own: every clip must stop at its own cap.
    assert all(clip.token_cap_hit for clip in clips)
    assert len({clip.token_cap for clip in clips}) > 1


def test_batching_and_order_do_not_change_output(tiny_loaded, tone_manifest):
    manifest = load_manifest(tone_manifest)
    one = decode_manifest(tiny_loaded, manifest, DecodeConfig(batch_size=1, sort_by_length=False))
    batched = decode_manifest(tiny_loaded, manifest, DecodeConfig(batch_size=4, sort_by_length=True))
    assert [c.token_ids for c in one] == [c.token_ids for c in batched]


def test_batch_order_sorts_longest_first():
    batches = batch_order([1.0, 5.0, 3.0, 2.0, 4.0], DecodeConfig(batch_size=2))
    assert batches == [[1, 4], [2, 3], [0]]
    assert batch_order([1.0, 5.0, 3.0], DecodeConfig(batch_size=2, sort_by_length=False)) == [[0, 1], [2]]


def test_generation_goes_through_the_active_adapter(tiny_loaded, tone_manifest, tmp_path, tiny_model_dir):
    manifest = load_manifest(tone_manifest)
    config = DecodeConfig(batch_size=5)
    base_ids = [c.token_ids for c in decode_manifest(tiny_loaded, manifest, config)]
    base_hash = weights_sha256(tiny_loaded.model)
    tiny_loaded.model = nonidentity_lora(tiny_loaded.model)
    adapted_ids = [c.token_ids for c in decode_manifest(tiny_loaded, manifest, config)]
    assert adapted_ids != base_ids
    with tiny_loaded.model.disable_adapter():
        assert [c.token_ids for c in decode_manifest(tiny_loaded, manifest, config)] == base_ids
    # Saved and reloaded through --adapter: same output, base weights hash unchanged.
    tiny_loaded.model.save_pretrained(tmp_path / "adapter")
    reloaded = load_model(str(tiny_model_dir), device="cpu", adapter=tmp_path / "adapter")
    assert reloaded.has_adapter and reloaded.weights_sha256 == base_hash
    assert [c.token_ids for c in decode_manifest(reloaded, manifest, config)] == adapted_ids
    assert adapter_sha256(reloaded.model) == adapter_sha256(tiny_loaded.model) is not None


def test_contract_records_adapter(tiny_loaded, tone_manifest):
    manifest = load_manifest(tone_manifest)
    base = evaluate_manifest(tiny_loaded, manifest, AudioConfig(), DecodeConfig(), progress=False)
    assert base.contract.adapter_sha256 is None
    assert base.contract.manifest_sha256 == manifest.content_hash
    tiny_loaded.model = nonidentity_lora(tiny_loaded.model)
    tuned = evaluate_manifest(tiny_loaded, manifest, AudioConfig(), DecodeConfig(), progress=False)
    assert tuned.contract.adapter_sha256 is not None
    assert base.contract.differences(tuned.contract) == ["adapter_sha256"]


def test_decode_config_validation():
    with pytest.raises(ValueError):
        DecodeConfig(num_beams=0)
    with pytest.raises(ValueError):
        DecodeConfig(dtype="int4")
    with pytest.raises(ValueError):
        DecodeConfig(device="tpu")


def test_stem_plus_layers_equal_the_transformers_encoder(tiny_loaded, tone_manifest):
    from moonlora.model.encoder import encoder_layers, encoder_stem

    encoder = tiny_loaded.model.get_encoder()
    for utterance in load_manifest(tone_manifest).utterances:
        inputs = tiny_loaded.feature_extractor(load_audio(utterance.audio_filepath), sampling_rate=16000,
                                               return_tensors="pt")["input_values"]
        with torch.no_grad():
            expected = encoder(inputs).last_hidden_state
            split = encoder_layers(encoder, encoder_stem(encoder, inputs))
        assert torch.allclose(split, expected, atol=1e-6)


def test_training_loss_is_the_same_with_the_stem_cache(tiny_loaded, tone_manifest):
    from moonlora.train.loop import StemCache, batch_loss

    model = nonidentity_lora(tiny_loaded.model)
    utterances = load_manifest(tone_manifest).utterances[:3]
    waveforms = [load_audio(u.audio_filepath) for u in utterances]
    texts, keys = [u.text for u in utterances], [u.utt_id for u in utterances]
    args = (model, tiny_loaded.feature_extractor, tiny_loaded.tokenizer, waveforms, texts)
    plain = batch_loss(*args)
    cache = StemCache()
    first, second = batch_loss(*args, keys, cache), batch_loss(*args, keys, cache)
    assert len(cache.stems) == 3
    assert torch.allclose(plain, first, atol=1e-6) and torch.allclose(first, second)
    first.backward()  # gradients still reach the LoRA weights through the cached stems
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
