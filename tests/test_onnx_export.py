"""Route (b) of the edge export (moonlora.ship.onnx_export): a transformers Moonshine exported to ONNX
ourselves, optionally int8, converted to ORT, and run unchanged by moonlora's onnxruntime backend."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")  # onnxruntime.quantization and the TorchScript exporter's checker need it

from moonlora.model import bundled  # noqa: E402
from moonlora.data.audio import AudioConfig  # noqa: E402
from moonlora.configs import DecodeConfig  # noqa: E402
from moonlora.model.loading import load_model  # noqa: E402


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """{quantize: summary} of the tiny random Moonshine exported float32 and int8."""
    from moonlora.ship.onnx_export import export_onnx

    model = load_model(str(tiny_model_dir), device="cpu").model
    root = tmp_path_factory.mktemp("onnx-export")
    return {q: export_onnx(model, root / ("int8" if q else "float32"), quantize=q) for q in (False, True)}


def _signature(session) -> dict[tuple[str, str], int]:
    """{(direction, name with the layer index as N): rank} of a session's inputs and outputs."""
    sig = {}
    for direction, items in (("in", session.get_inputs()), ("out", session.get_outputs())):
        for item in items:
            sig[(direction, re.sub(r"\.\d+\.", ".N.", item.name))] = len(item.shape)
    return sig


@pytest.mark.parametrize("quantize", [False, True])
def test_graphs_have_the_bundled_signature(exported, quantize):
    folder = exported[quantize]
    from pathlib import Path

    assert sorted(p.name for p in Path(folder["folder"]).iterdir()) == sorted(
        ["encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"])
    for ours, theirs in ((folder["encoder"], bundled.encoder_ort_path()),
                         (folder["decoder"], bundled.decoder_ort_path())):
        a, b = _session(ours), _session(theirs)
        assert _signature(a) == _signature(b)
        for mine, ref in zip(sorted(a.get_inputs(), key=lambda i: i.name), sorted(b.get_inputs(), key=lambda i: i.name)):
            if re.sub(r"\.\d+\.", ".N.", mine.name) == re.sub(r"\.\d+\.", ".N.", ref.name):
                assert mine.type == ref.type, mine.name
    decoder = _session(folder["decoder"])
    past = [i.name for i in decoder.get_inputs() if i.name.startswith("past_key_values.")]
    assert len(past) == 4 * 1  # one decoder layer in tiny_config


def test_merged_decoder_matches_torch_step_by_step(exported, tiny_model_dir):
    """Teacher-forced: ORT steps with the KV cache give the logits of one torch forward pass."""
    from pathlib import Path

    from moonlora.model.ort import load_ort_model

    model = load_model(str(tiny_model_dir), device="cpu").model.eval()
    ort_model, _ = load_ort_model(Path(exported[False]["folder"]), "test")
    rng = np.random.default_rng(3)
    waveform = (0.3 * rng.standard_normal(24000)).astype(np.float32)
    hidden = ort_model.encode(waveform)
    tokens = [1, 500, 77, 12000, 3, 9]
    with torch.no_grad():
        encoder_out = model.model.encoder(torch.from_numpy(waveform)[None])
        np.testing.assert_allclose(hidden, encoder_out.last_hidden_state.numpy(), atol=1e-4)
        expected = model(encoder_outputs=encoder_out, decoder_input_ids=torch.tensor([tokens])).logits[0].numpy()
    decoder = ort_model.decoder
    names = [o.name for o in decoder.get_outputs()]
    past = {n: np.zeros(s, dtype=np.float32) for n, s in ort_model.past_shapes.items()}
    for step, token in enumerate(tokens):
        feed = {"input_ids": np.array([[token]], dtype=np.int64), "encoder_hidden_states": hidden,
                "use_cache_branch": np.array([step > 0]), **past}
        out = dict(zip(names, decoder.run(names, feed)))
        np.testing.assert_allclose(out["logits"][0, -1], expected[step], atol=1e-4, rtol=1e-4)
        for name in past:
            present = out[name.replace("past_key_values.", "present.")]
            if ".encoder." in name:
                assert present.shape[2] == hidden.shape[1]  # cross K/V: computed on step 0, passed through after
            else:
                assert present.shape[2] == step + 1
            past[name] = present


def _token_ids(loaded, manifest_path):
    from moonlora.eval.evaluate import evaluate_manifest
    from moonlora.data.manifest import load_manifest

    result = evaluate_manifest(loaded, load_manifest(manifest_path), AudioConfig(), DecodeConfig(device="cpu"),
                               progress=False)
    return [clip.decoded.token_ids for clip in result.clips], result


def test_float32_export_decodes_like_torch(exported, tiny_model_dir, tone_manifest):
    torch_ids, _ = _token_ids(load_model(str(tiny_model_dir), device="cpu"), tone_manifest)
    loaded = load_model(f"ort:{exported[False]['folder']}", device="cpu")
    assert loaded.runtime == "onnxruntime" and loaded.precision == "float32"
    ort_ids, result = _token_ids(loaded, tone_manifest)
    assert len(ort_ids) == 5
    assert ort_ids == torch_ids
    assert result.contract.runtime["precision"] == "float32"


def test_int8_export_runs_and_reports_agreement(exported, tiny_model_dir, tone_manifest):
    torch_ids, _ = _token_ids(load_model(str(tiny_model_dir), device="cpu"), tone_manifest)
    loaded = load_model(f"ort:{exported[True]['folder']}", device="cpu")
    assert loaded.precision == "int8"
    ort_ids, result = _token_ids(loaded, tone_manifest)
    assert result.contract.runtime["precision"] == "int8"
    same = sum(a == b for a, b in zip(ort_ids, torch_ids))
    print(f"int8 vs torch: {same}/{len(torch_ids)} clips with identical greedy token ids")
    assert len(ort_ids) == len(torch_ids) and all(ids for ids in ort_ids)
