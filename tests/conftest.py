"""Shared fixtures: a tiny random Moonshine (fast, offline) and tiny audio files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import MoonshineConfig, MoonshineForConditionalGeneration

from moonlora.model import bundled
from moonlora.model.loading import bundled_feature_extractor


def tiny_config() -> MoonshineConfig:
    return MoonshineConfig(
        vocab_size=32768, hidden_size=16, intermediate_size=32,
        encoder_num_hidden_layers=1, decoder_num_hidden_layers=1,
        encoder_num_attention_heads=2, decoder_num_attention_heads=2,
        encoder_num_key_value_heads=2, decoder_num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=2, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )


@pytest.fixture(scope="session")
def hf_tokenizer():
    from moonlora.model.tokenizer import build_hf_tokenizer

    return build_hf_tokenizer(bundled.tokenizer_bin_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, hf_tokenizer) -> Path:
    """A save_pretrained folder holding a ~0.6M-parameter random Moonshine."""
    torch.manual_seed(0)
    model = MoonshineForConditionalGeneration(tiny_config()).eval()
    folder = tmp_path_factory.mktemp("tiny-moonshine")
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    bundled_feature_extractor().save_pretrained(folder)
    return folder


def tiny_streaming_config():
    """A tiny Moonshine Streaming (model type `moonshine_streaming`): two encoder layers, one decoder layer."""
    from transformers import MoonshineStreamingConfig

    encoder = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, sliding_windows=[[16, 4], [16, 0]])
    return MoonshineStreamingConfig(
        encoder_config=encoder, vocab_size=32768, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=2, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )


@pytest.fixture(scope="session")
def tiny_streaming_dir(tmp_path_factory, hf_tokenizer) -> Path:
    """A save_pretrained folder holding a ~1M-parameter random Moonshine Streaming, with the Moonshine
    tokenizer and a raw 16 kHz feature extractor (what a published streaming folder holds)."""
    from transformers import MoonshineStreamingForConditionalGeneration

    torch.manual_seed(0)
    model = MoonshineStreamingForConditionalGeneration(tiny_streaming_config()).eval()
    folder = tmp_path_factory.mktemp("tiny-moonshine-streaming")
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    bundled_feature_extractor().save_pretrained(folder)
    return folder


def tiny_arch_streaming_config():
    """Moonshine Streaming with the TINY architecture's dimensions: transformers' defaults (hidden 320, 6+6 layers,
    8 heads, vocab 32768, per-layer encoder sliding windows), plus what 5.24 needs to build it (the decoder layer
    reads `num_key_value_heads`, which the default config lacks) and Moonshine's special tokens."""
    from transformers import MoonshineStreamingConfig

    return MoonshineStreamingConfig(num_key_value_heads=8, pad_token_id=2, bos_token_id=1, eos_token_id=2,
                                    decoder_start_token_id=1)


@pytest.fixture(scope="session")
def streaming_tiny_arch_dir(tmp_path_factory, hf_tokenizer) -> Path:
    """A save_pretrained folder holding a seeded random-init Moonshine Streaming with the tiny architecture
    (44.1M parameters, untied output layer), the Moonshine tokenizer and a raw 16 kHz feature extractor: the real
    architecture, offline (no streaming weights are on these machines). Slower than `tiny_streaming_dir`: for the
    tests the issue asks to run on the real shape."""
    from transformers import MoonshineStreamingForConditionalGeneration

    torch.manual_seed(0)
    model = MoonshineStreamingForConditionalGeneration(tiny_arch_streaming_config()).eval()
    folder = tmp_path_factory.mktemp("tiny-arch-moonshine-streaming")
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    bundled_feature_extractor().save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_loaded(tiny_model_dir):
    from moonlora.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def lora_loaded_non_identity(folder: Path):
    """(loaded bundle, LoRA model) from a model folder: rank 4, no dropout, every lora_B drawn from N(0, 0.1) with
    seed 0, so the adapter changes the outputs (a fresh LoRA is the identity and checks on it pass vacuously)."""
    from moonlora.configs import LoraSettings
    from moonlora.model.loading import load_model
    from moonlora.model.lora import attach_lora

    loaded = load_model(str(folder), device="cpu")
    model = attach_lora(loaded.model, LoraSettings(r=4, dropout=0.0), seed=0)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    return loaded, model


def write_tone(path: Path, seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    """A noisy tone (stand-in speech) of the given length."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data.astype(np.float32), sample_rate)
    return path


@pytest.fixture()
def tone_manifest(tmp_path) -> Path:
    """Five clips of 0.8–3 s with transcripts, paths relative to the manifest."""
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = []
    for i, seconds in enumerate([1.0, 2.5, 0.8, 3.0, 1.7]):
        write_tone(clips / f"c{i}.wav", seconds, seed=i)
        rows.append({"audio_filepath": f"clips/c{i}.wav", "text": f"clip number {i}", "speaker": f"s{i % 2}"})
    manifest = tmp_path / "tones.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def tone_set(folder, name, count, seed0=0, speakers=4):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        write_tone(folder / f"{name}{i}.wav", 0.8 + 0.25 * (i % 5), seed=seed0 + i)
        # Texts and speakers are the set's own: a set shares nothing with another (no leakage).
        rows.append({"audio_filepath": f"{name}{i}.wav", "text": f"{name} clip number {i % 7}",
                     "speaker": f"{name}-spk{i % speakers}"})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ort_greedy(decoder, encoder_hidden: np.ndarray, start: int, eos: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding with the merged decoder, carrying its KV cache between steps (an oracle written
    apart from moonlora.model.ort, for tests of the converted and exported graphs)."""
    inputs = {i.name: i for i in decoder.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    _, heads, _, head_dim = inputs[past_names[0]].shape
    empty = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
    past = {n: empty for n in past_names}
    output_names = [o.name for o in decoder.get_outputs()]
    tokens, next_token = [], start
    for step in range(max_new_tokens):
        feed = {
            "input_ids": np.array([[next_token]], dtype=np.int64),
            "encoder_hidden_states": encoder_hidden,
            "use_cache_branch": np.array([step > 0]),
            **past,
        }
        outputs = dict(zip(output_names, decoder.run(output_names, feed)))
        next_token = int(outputs["logits"][0, -1].argmax())
        tokens.append(next_token)
        if next_token == eos:
            break
        for name in past_names:
            present = name.replace("past_key_values.", "present.")
            # Cached steps return empty cross-attention K/V: keep the ones computed at step 0.
            if ".decoder." in name or step == 0:
                past[name] = outputs[present]
    return tokens
