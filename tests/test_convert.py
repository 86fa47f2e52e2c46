"""The converted bundled Moonshine base model matches onnxruntime running the original .ort files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ort_greedy
from moonlora.model import bundled
pytestmark = pytest.mark.integration

MAX_NEW_TOKENS = 64


@pytest.fixture(scope="module")
def paths():
    try:
        return bundled.encoder_ort_path(), bundled.decoder_ort_path(), bundled.beckett_wav_path()
    except bundled.BundledModelMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def model(paths):
    from moonlora.model.convert import convert_bundled_base

    return convert_bundled_base(paths[0], paths[1])


@pytest.fixture(scope="module")
def waveform(paths) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(paths[2], dtype="float32")
    assert rate == 16_000 and audio.ndim == 1
    return audio[None, :]


@pytest.fixture(scope="module")
def ort_sessions(paths):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return tuple(ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths[:2])


@pytest.fixture(scope="module")
def ort_encoder_output(ort_sessions, waveform) -> np.ndarray:
    (hidden,) = ort_sessions[0].run(["last_hidden_state"], {"input_values": waveform})
    return hidden


def test_strict_load_fills_every_parameter(model):
    assert sum(p.numel() for p in model.parameters()) == 61_513_920
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    assert not model.training


def test_missing_tensor_names_the_file(paths):
    from moonlora.model.convert import read_ort_weights

    # Both arguments the encoder: the decoder's nodes are then missing.
    with pytest.raises(ValueError, match="encoder_model.ort"):
        read_ort_weights(paths[0], paths[0])


def test_encoder_matches_onnxruntime(model, waveform, ort_encoder_output):
    with torch.no_grad():
        hidden = model.model.encoder(torch.from_numpy(waveform)).last_hidden_state.numpy()
    assert hidden.shape == ort_encoder_output.shape
    difference = np.abs(hidden - ort_encoder_output).max()
    assert difference <= 1.5e-4, difference  # the README's claim (Models: bundled:base-en)


def test_greedy_tokens_match_onnxruntime(model, waveform, ort_sessions, ort_encoder_output):
    config = model.config
    expected = ort_greedy(
        ort_sessions[1], ort_encoder_output, config.decoder_start_token_id, config.eos_token_id, MAX_NEW_TOKENS
    )
    assert expected[-1] == config.eos_token_id, "reference did not finish within MAX_NEW_TOKENS"
    with torch.no_grad():
        generated = model.generate(
            torch.from_numpy(waveform), max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1
        )
    assert generated[0].tolist() == [config.decoder_start_token_id, *expected]
