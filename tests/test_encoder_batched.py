"""The exact batched encoder: one padded pass per batch, the same states and transcripts as per-clip encoding."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from moonlora.model import bundled
from moonlora.data.audio import load_audio
from moonlora.configs import DecodeConfig
from moonlora.eval.decode import decode_clips
from moonlora.model.encoder import conv_output_lengths, encode_batched_exact, encode_exact
from moonlora.model.torch_decoder import encoder_mode

TOLERANCE = 1e-4  # issue 11: batched states within 1e-4 of per-clip states


def tones(seconds: list[float]) -> list[np.ndarray]:
    """Noisy tones of very different lengths, so the padding is large for the short ones."""
    rng = np.random.default_rng(0)
    waves = []
    for i, length in enumerate(seconds):
        t = np.arange(int(length * 16000)) / 16000
        waves.append((0.3 * np.sin(2 * np.pi * (180 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return waves


def max_valid_difference(model, feature_extractor, waveforms) -> float:
    with torch.inference_mode():
        alone, alone_mask = encode_exact(model, feature_extractor, waveforms, torch.float32)
        batched, batched_mask = encode_batched_exact(model, feature_extractor, waveforms, torch.float32)
    assert torch.equal(alone_mask, batched_mask)
    assert batched.shape == alone.shape
    assert not batched[batched_mask == 0].any()  # padded frames are zeros, as pad_states leaves them
    return float((alone - batched).abs().max())


def decode_in_memory(loaded, waveforms, config) -> list[list[int]]:
    durations = [len(w) / 16000 for w in waveforms]
    clips, _ = decode_clips(loaded.decoder(), durations,
                            lambda i: waveforms[i], config)
    return [clip.token_ids for clip in clips]


def encoder_lora(model):
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1", "fc2"],
                        init_lora_weights=False)  # random B: the adapter changes the encoder
    return get_peft_model(model, config)


def test_frame_lengths_follow_the_conv_arithmetic(tiny_loaded):
    encoder = tiny_loaded.model.get_encoder()
    for samples in (895, 1000, 1023, 16000, 16063, 33333):
        lengths = torch.tensor([samples])
        for conv in (encoder.conv1, encoder.conv2, encoder.conv3):
            lengths = conv_output_lengths(conv, lengths)
        with torch.inference_mode():
            frames = encoder(torch.zeros(1, samples)).last_hidden_state.shape[1]
        assert int(lengths[0]) == frames


def test_batched_states_equal_per_clip_states(tiny_loaded):
    waves = tones([0.3, 3.1, 1.0, 0.06, 2.2])  # 0.06 s: one encoder frame
    assert max_valid_difference(tiny_loaded.model, tiny_loaded.feature_extractor, waves) <= TOLERANCE


def test_plain_padded_batch_differs_so_the_check_can_fail(tiny_loaded):
    """The stock encoder on a padded batch moves the short clip's states: what the exact path avoids."""
    waves = tones([0.5, 3.0])
    model, feature_extractor = tiny_loaded.model, tiny_loaded.feature_extractor
    inputs = feature_extractor(waves, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.inference_mode():
        alone, mask = encode_exact(model, feature_extractor, waves, torch.float32)
        padded = model.get_encoder()(inputs["input_values"]).last_hidden_state
    short = int(mask[0].sum())
    assert float((alone[0, :short] - padded[0, :short]).abs().max()) > 100 * TOLERANCE


def test_batched_states_follow_the_adapter(tiny_loaded):
    waves = tones([0.4, 2.5, 1.3])
    with torch.inference_mode():
        base, _ = encode_batched_exact(tiny_loaded.model, tiny_loaded.feature_extractor, waves, torch.float32)
    adapted = encoder_lora(tiny_loaded.model)
    assert max_valid_difference(adapted, tiny_loaded.feature_extractor, waves) <= TOLERANCE
    with torch.inference_mode():
        tuned, _ = encode_batched_exact(adapted, tiny_loaded.feature_extractor, waves, torch.float32)
    assert float((tuned - base).abs().max()) > 100 * TOLERANCE  # the LoRA in the encoder was used


def test_too_short_clip_is_refused(tiny_loaded):
    with pytest.raises(ValueError, match="too short"):
        encode_batched_exact(tiny_loaded.model, tiny_loaded.feature_extractor, tones([1.0, 0.04]), torch.float32)


def test_transcripts_identical_across_batch_sizes_and_encoders(tiny_loaded):
    waves = tones([0.8 + 0.23 * i for i in range(12)])
    per_clip = decode_in_memory(tiny_loaded, waves, DecodeConfig(batch_size=1, encoder="per-clip"))
    for batch_size in (1, 8, 32):
        assert decode_in_memory(tiny_loaded, waves, DecodeConfig(batch_size=batch_size, encoder="batched")) == per_clip


def test_encoder_setting_is_a_speed_setting():
    assert encoder_mode(DecodeConfig(), torch.nn.Linear(1, 1)) == "per-clip"  # auto on CPU
    assert encoder_mode(DecodeConfig(encoder="batched"), torch.nn.Linear(1, 1)) == "batched"
    on_an_accelerator = torch.nn.Linear(1, 1, device="meta")  # any device but the CPU
    assert encoder_mode(DecodeConfig(), on_an_accelerator) == "batched"
    assert encoder_mode(DecodeConfig(), on_an_accelerator, exact_padded_batches=False) == "per-clip"  # the family's
    assert DecodeConfig(encoder="batched").result_dict() == DecodeConfig(encoder="per-clip").result_dict()
    assert "encoder" not in DecodeConfig.result_fields
    with pytest.raises(ValueError, match="encoder must be"):
        DecodeConfig(encoder="padded")


@pytest.mark.integration
def test_real_model_real_speech_batched_equals_per_clip():
    """bundled:base-en on espeak speech and beckett.wav: states within 1e-4, identical transcripts."""
    from moonlora.model.loading import load_model
    from moonlora.data.synth import espeak

    loaded = load_model(device="cpu")
    texts = ["speedbird four two seven climb flight level two one zero", "tower", "runway two seven left",
             "contact approach one one nine decimal one", "hold short of runway three four right",
             "descend and maintain four thousand feet", "roger", "cleared for takeoff wind two six zero at eight"]
    voices = ["en-us+m3", "en-029+f4", "en-gb-x-rp+m2", "en-us+f3"]
    waves = [espeak.synthesize(text, voices[i % len(voices)]) for i, text in enumerate(texts)]
    waves.append(load_audio(bundled.beckett_wav_path()))
    assert max_valid_difference(loaded.model, loaded.feature_extractor, waves) <= TOLERANCE
    per_clip = decode_in_memory(loaded, waves, DecodeConfig(batch_size=8, encoder="per-clip", device="cpu"))
    assert sum(len(ids) for ids in per_clip) > 5 * len(waves)  # real transcripts, not empty ones
    for batch_size in (1, 8, 32):
        batched = decode_in_memory(loaded, waves, DecodeConfig(batch_size=batch_size, encoder="batched", device="cpu"))
        assert batched == per_clip
