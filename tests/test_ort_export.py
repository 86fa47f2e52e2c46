"""Route (a): a merged model's weights patched into copies of the bundled .ort graphs (moonlora.ship.ort_export)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from conftest import ort_greedy, tiny_config
from transformers import MoonshineForConditionalGeneration

from moonlora.model import bundled
from moonlora.ship.ort_export import (
    DECODER_FILE,
    ENCODER_FILE,
    TOKENIZER_FILE,
    dequantize,
    min_max_scale,
    requantize,
    write_merged_ort,
)

MAX_NEW_TOKENS = 64
# The linear weights a LoRA adapter would change: q/k/v/o and fc1/fc2 of every encoder and decoder layer.
ADAPTED = re.compile(
    r"model\.(encoder|decoder)\.layers\.\d+\.((self_attn|encoder_attn)\.[qkvo]_proj|mlp\.fc[12])\.weight$"
)
# Encoder output tolerances for the re-quantized graph against the merged float32 torch model, from the
# quantization step: every re-quantized weight may move by up to half its step s (s = 0.003..0.039 here).
# Re-rounding the 48 adapted encoder weights of the model in `perturbed` with independent uniform
# errors in [-s/2, s/2] (6 seeds) moved the beckett.wav encoder output by max |d| 0.18..0.47 and
# RMS 0.020..0.025; the written graphs gave max 0.35, RMS 0.020. Allow about 1.6x the worst seed.
ENCODER_MAX_TOL = 0.75
ENCODER_RMS_TOL = 0.04


# ---------------------------------------------------------------------------------------------
# Unit tests: the quantizer and the refusal, no bundled files needed


def test_requantize_keeps_grid_values_exactly():
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, size=(64, 32)).astype(np.int8)
    scale, zero_point = np.float32(0.0123), np.float32(-7 * np.float32(0.0123))
    w = dequantize(q, np.array([scale]), np.array([zero_point]))
    result = requantize(w, scale, zero_point)
    assert not result.new_scale and result.scale == scale and result.zero_point == zero_point
    assert np.array_equal(result.q, q)
    # A change under half a step rounds back to the same bytes: a small enough adapter vanishes.
    nudged = w + rng.uniform(-0.45, 0.45, size=w.shape).astype(np.float32) * scale
    assert np.array_equal(requantize(nudged, scale, zero_point).q, q)


def test_stochastic_rounding_keeps_small_changes_on_average_and_grid_values_exactly():
    rng = np.random.default_rng(0)
    q = rng.integers(-100, 100, size=(256, 128)).astype(np.int8)
    scale, zero_point = np.float32(0.0123), np.float32(-7 * np.float32(0.0123))
    w = dequantize(q, np.array([scale]), np.array([zero_point]))
    assert np.array_equal(requantize(w, scale, zero_point, np.random.default_rng(1)).q, q)  # identity: same bytes
    nudged = w + np.float32(0.3) * scale  # a LoRA-like change of 0.3 step everywhere
    assert np.array_equal(requantize(nudged, scale, zero_point).q, q)  # nearest: the change vanishes
    moved = requantize(nudged, scale, zero_point, np.random.default_rng(1)).q.astype(np.int32) - q
    assert set(np.unique(moved)) == {0, 1} and abs(moved.mean() - 0.3) < 0.01  # stochastic: kept on average
    again = requantize(nudged, scale, zero_point, np.random.default_rng(1)).q
    assert np.array_equal(again, moved + q)  # seeded: an export is reproducible


def test_requantize_takes_a_new_min_max_scale_when_the_range_grows():
    rng = np.random.default_rng(1)
    scale, zero_point = np.float32(0.01), np.float32(3 * np.float32(0.01))
    w = rng.uniform(-1.2, 1.5, size=(50, 40)).astype(np.float32)  # old range: [-1.25, 1.30]
    result = requantize(w, scale, zero_point)
    assert result.new_scale
    k = result.zero_point / result.scale  # the bundled scheme: zero point = integer x scale
    assert abs(k - round(k)) < 1e-4 and -127 <= round(k) <= 128
    assert result.q.min() == -128 and result.q.max() == 127
    error = np.abs(dequantize(result.q, np.array([result.scale]), np.array([result.zero_point])) - w)
    assert error.max() <= 0.5 * result.scale * (1 + 1e-5)
    assert result.scale == min_max_scale(w)[0]


def test_a_model_that_is_not_moonshine_base_is_refused(tmp_path):
    torch.manual_seed(0)
    tiny = MoonshineForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"route \(a\) needs the bundled base-en graphs") as raised:
        write_merged_ort(tiny, tmp_path / "out")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Integration: the real bundled graphs, run through onnxruntime


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _signature(session) -> dict:
    def describe(args):
        return [(a.name, list(a.shape), a.type) for a in args]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


@pytest.fixture(scope="module")
def source_dir():
    try:
        return bundled.base_en_dir()
    except bundled.BundledModelMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def base_model(source_dir):
    from moonlora.model.loading import load_model

    return load_model("bundled:base-en", device="cpu").model


@pytest.fixture(scope="module")
def waveform(source_dir) -> torch.Tensor:
    import soundfile as sf

    audio, rate = sf.read(bundled.beckett_wav_path(), dtype="float32")
    assert rate == 16_000 and audio.ndim == 1
    return torch.from_numpy(audio[None, :])


def _encode(model, waveform) -> np.ndarray:
    with torch.no_grad():
        return model.model.encoder(waveform).last_hidden_state.numpy()


@pytest.mark.integration
def test_identity_round_trip_is_byte_identical(base_model, source_dir, tmp_path):
    report = write_merged_ort(base_model, tmp_path)
    for name in (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE):
        assert (tmp_path / name).read_bytes() == (source_dir / name).read_bytes(), name
    assert report["requantized"] == 132 and report["new_scale"] == 0 and report["changed_tensors"] == 0
    assert report["differing_tensors"] == 0 and report["changed_values"] == 0
    assert report["float_tensors"] == 78 and report["max_error_in_steps"] == 0.0
    assert report["bytes_changed"] == {ENCODER_FILE: 0, DECODER_FILE: 0}


@pytest.mark.integration
def test_export_of_an_all_zero_adapter_is_byte_identical_to_the_bundled_graphs(source_dir, tmp_path):
    """Through `moonlora export` itself: a real saved LoRA adapter on bundled:base-en, every LoRA weight zero."""
    from moonlora.configs import LoraSettings
    from moonlora.model.loading import load_model
    from moonlora.model.lora import attach_lora
    from moonlora.ship.export import export

    peft_model = attach_lora(load_model("bundled:base-en", device="cpu").model, LoraSettings(r=2, dropout=0.0), seed=0)
    with torch.no_grad():
        lora_weights = [p for name, p in peft_model.named_parameters() if "lora_" in name]
        for parameter in lora_weights:
            parameter.zero_()
    assert lora_weights
    peft_model.save_pretrained(tmp_path / "adapter")
    result = export(tmp_path / "adapter", tmp_path / "ort", export_format="ort", model="bundled:base-en")
    assert result.manifest["quantization"]["route"].startswith("a:") and result.manifest["adapter_sha256"]
    for name in (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE):
        assert (tmp_path / "ort" / name).read_bytes() == (source_dir / name).read_bytes(), name


@pytest.fixture(scope="module")
def perturbed(base_model, tmp_path_factory):
    """The base model plus a seeded rank-8 delta on every adapted weight (largest entry 2% of the weight's
    largest), like a merged LoRA adapter, written to .ort; returns (model, folder, report)."""
    model = copy.deepcopy(base_model)
    generator = torch.Generator().manual_seed(0)
    adapted = 0
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ADAPTED.match(name):
                delta = torch.randn(weight.shape[0], 8, generator=generator) @ torch.randn(
                    8, weight.shape[1], generator=generator
                )
                weight += delta * (0.02 * weight.abs().max() / delta.abs().max())
                adapted += 1
    assert adapted == 128
    folder = tmp_path_factory.mktemp("merged-ort")
    report = write_merged_ort(model, folder, rounding="nearest")  # the half-step bounds below are nearest's
    return model, folder, report


@pytest.mark.integration
def test_perturbed_weights_are_within_half_a_step(perturbed, base_model):
    from moonlora.model.convert import read_ort_weights

    model, folder, report = perturbed
    assert report["requantized"] == 132 and report["differing_tensors"] == report["changed_tensors"] == 128
    assert 0 < report["new_scale"] < 128  # both paths taken: old scale kept, and new scale computed
    assert report["max_error_in_steps"] <= 0.5 + 1e-5
    # Independently of the writer's own statistics: read the written graphs back like convert does.
    written = read_ort_weights(folder / ENCODER_FILE, folder / DECODER_FILE)
    merged = model.state_dict()
    base = base_model.state_dict()
    for key, value in written.items():
        target = merged[key].numpy()
        if not ADAPTED.match(key):  # untouched weights come back bit for bit
            assert np.array_equal(value.numpy(), target) and np.array_equal(target, base[key].numpy()), key
            continue
        levels = np.unique(value.numpy())
        step = np.diff(levels).min()  # adjacent int8 levels: the tensor's scale
        assert np.abs(value.numpy() - target).max() <= 0.5 * step * (1 + 1e-4) + 1e-7, key


@pytest.mark.integration
def test_perturbed_graphs_keep_the_bundled_signature(perturbed, source_dir):
    _, folder, _ = perturbed
    for name in (ENCODER_FILE, DECODER_FILE):
        assert _signature(_session(folder / name)) == _signature(_session(source_dir / name)), name
    assert (folder / TOKENIZER_FILE).read_bytes() == (source_dir / TOKENIZER_FILE).read_bytes()


@pytest.mark.integration
def test_perturbed_graphs_run_the_merged_model(perturbed, base_model, waveform):
    from moonlora.model.convert import convert_bundled_base

    model, folder, _ = perturbed
    (hidden,) = _session(folder / ENCODER_FILE).run(["last_hidden_state"], {"input_values": waveform.numpy()})
    merged = _encode(model, waveform)
    difference = hidden - merged
    rms = float(np.sqrt(np.mean(difference**2)))
    assert hidden.shape == merged.shape
    assert np.abs(difference).max() <= ENCODER_MAX_TOL and rms <= ENCODER_RMS_TOL
    # The delta arrived: the graph is closer to the merged model than the unadapted base is.
    assert rms < float(np.sqrt(np.mean((_encode(base_model, waveform) - merged) ** 2)))
    # onnxruntime computes exactly with the written int8 weights: torch on those weights agrees to
    # float32 arithmetic (the bound tests/test_convert.py uses for the bundled graphs).
    readback = convert_bundled_base(folder / ENCODER_FILE, folder / DECODER_FILE)
    assert np.abs(hidden - _encode(readback, waveform)).max() <= 1e-3
    config = model.config
    tokens = ort_greedy(_session(folder / DECODER_FILE), hidden, config.decoder_start_token_id,
                        config.eos_token_id, MAX_NEW_TOKENS)
    assert tokens[-1] == config.eos_token_id
    with torch.no_grad():
        expected = readback.generate(waveform, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
    assert expected[0].tolist() == [config.decoder_start_token_id, *tokens]


@pytest.mark.integration
def test_untied_output_layer_is_refused(base_model, tmp_path):
    model = copy.deepcopy(base_model)
    embedding = model.model.decoder.embed_tokens.weight
    model.proj_out.weight = torch.nn.Parameter(embedding.detach() * 1.01)
    with pytest.raises(ValueError, match="tied in the graph") as raised:
        write_merged_ort(model, tmp_path / "out")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()
