"""Moonshine Streaming shipped as the runtime's five graphs (`moonlora.ship.streaming_export`) and scored
through them (`moonlora.model.ort_streaming`): names and metadata the runtime binds, torch == ORT float32
tokens on real synthetic speech, chunked == whole-clip, and a decoder adapter that re-exports only
`decoder_kv` (the other graphs byte-identical to the identity export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moonlora.cli import main
from moonlora.configs import DecodeConfig, LoraSettings
from moonlora.data.synth import espeak
from moonlora.eval.decode import decode_clips
from moonlora.model.loading import load_model
from moonlora.model.lora import attach_lora
from moonlora.model.ort_streaming import GRAPHS, MODEL_FILES
from moonlora.ship.streaming_export import export_streaming, graph_of, graphs_of

PHRASES = ("cleared to land runway two seven", "contact departure one two four point five",
           "hold short of taxiway alpha", "climb and maintain flight level three five zero",
           "traffic twelve o'clock five miles", "wind two four zero at eight knots")


@pytest.fixture(scope="module")
def speech():
    return [espeak.synthesize(text, "en-us+m3") for text in PHRASES]


@pytest.fixture(scope="module")
def base_model(tiny_streaming_dir):
    return load_model(str(tiny_streaming_dir), device="cpu")


@pytest.fixture(scope="module")
def float_folder(base_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming") / "float32"
    export_streaming(base_model.model, folder, precision="float32")
    return folder


def decode(loaded, speech) -> list[list[int]]:
    clips, _ = decode_clips(loaded.decoder(), [len(clip) / 16000 for clip in speech], lambda index: speech[index],
                         DecodeConfig(device="cpu", batch_size=4))
    return [clip.token_ids for clip in clips]


def test_the_folder_holds_the_runtimes_files_names_and_metadata(float_folder, base_model):
    import onnxruntime as ort

    assert sorted(p.name for p in float_folder.iterdir()) == sorted(MODEL_FILES)
    config = json.loads((float_folder / "streaming_config.json").read_text())
    assert config["depth"] == 1 and config["nheads"] == 2 and config["head_dim"] == 8 and config["frame_len"] == 80
    assert (config["bos_id"], config["eos_id"]) == (1, 2) and config["vocab_size"] == 32768
    # transformers' windows are exclusive: (16, 4) looks 3 frames ahead, (16, 0) none
    assert config["total_lookahead"] == 3
    assert config["frontend_state_shapes"] == {"sample_buffer": [1, 79], "sample_len": [1], "conv1_buffer": [1, 16, 4],
                                               "conv2_buffer": [1, 32, 4], "frame_count": [1]}
    expected_meta = {"frontend": {"frontend_config"}, "encoder": {"encoder_config"}, "adapter": {"adapter_config"},
                     "cross_kv": {"cross_kv_config"}, "decoder_kv": {"decoder_config", "cache_shapes"}}
    for graph in GRAPHS:
        session = ort.InferenceSession(str(float_folder / f"{graph}.ort"))
        meta = session.get_modelmeta().custom_metadata_map
        assert set(meta) == expected_meta[graph], graph
        for value in meta.values():
            json.loads(value)
    decoder = ort.InferenceSession(str(float_folder / "decoder_kv.ort"))
    assert [i.name for i in decoder.get_inputs()] == ["token", "k_self", "v_self", "out_k_cross", "out_v_cross"]
    assert [o.name for o in decoder.get_outputs()] == ["logits", "out_k_self", "out_v_self", "out_k_cross",
                                                      "out_v_cross"]
    encoder_meta = json.loads(ort.InferenceSession(str(float_folder / "encoder.ort")).get_modelmeta()
                              .custom_metadata_map["encoder_config"])
    assert encoder_meta["windows"] == [[16, 4], [16, 0]] and encoder_meta["window_bounds"].startswith("exclusive")


def test_torch_and_the_float_graphs_give_the_same_tokens(float_folder, base_model, speech):
    exported = load_model(f"ort:{float_folder}")
    assert exported.model_type == "moonshine_streaming" and exported.precision == "float32"
    assert exported.runtime_dict() == {"name": "onnxruntime", "precision": "float32"}
    ours, theirs = decode(exported, speech), decode(base_model, speech)
    assert len(ours) >= 5 and all(len(tokens) >= 3 for tokens in theirs)  # random weights: never silent
    assert ours == theirs


def test_chunked_frontend_equals_the_whole_clip(float_folder, speech):
    model = load_model(f"ort:{float_folder}").model
    for clip in speech[:3]:
        whole = model.features(clip)
        frames = len(clip) // 80  # whole 5 ms frames, then two stride-2 causal convolutions
        assert whole.shape[1] == -(-(-(-frames // 2)) // 2)
        for chunk in (1600, 320, 1234):  # 1234: chunks that split frames and the convolutions' stride phase
            assert np.abs(model.features(clip, chunk=chunk) - whole).max() < 1e-6, chunk
        keys, _ = model.encode(clip, chunk=1600)
        assert keys.shape[3] == whole.shape[1]
        assert model.greedy(model.encode(clip, chunk=1600), 20) == model.greedy(model.encode(clip), 20)


def test_which_graph_holds_which_weight(base_model):
    assert graph_of("model.encoder.embedder.conv1.weight") == "frontend"
    assert graph_of("model.encoder.layers.0.self_attn.q_proj") == "encoder"
    assert graph_of("model.decoder.pos_emb.weight") == "adapter"
    assert graph_of("base_model.model.model.decoder.layers.0.encoder_attn.k_proj") == "cross_kv"
    assert graph_of("model.decoder.layers.0.encoder_attn.q_proj") == "decoder_kv"
    assert graph_of("proj_out.weight") == "decoder_kv"
    assert set(graphs_of(name for name, _ in base_model.model.named_parameters())) == set(GRAPHS)


def test_a_decoder_adapter_changes_decoder_kv_alone(tiny_streaming_dir, float_folder, speech, tmp_path):
    loaded = load_model(str(tiny_streaming_dir), device="cpu")
    peft = attach_lora(loaded.model, LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=("decoder",)), seed=0)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    out = tmp_path / "shipped"
    assert main(["--quiet", "export", str(adapter), "--model", str(tiny_streaming_dir), "--format", "ort",
                 "--precision", "float32", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "float32" and manifest["quantization"]["adapted_graphs"] == ["decoder_kv"]
    for graph in GRAPHS:
        same = (out / f"{graph}.ort").read_bytes() == (float_folder / f"{graph}.ort").read_bytes()
        assert same == (graph != "decoder_kv"), graph
    adapted = load_model(f"ort:{out}")
    assert decode(adapted, speech) == decode(load_model(str(tiny_streaming_dir), device="cpu", adapter=adapter), speech)


def test_int8_export_loads_as_int8_and_keeps_the_frontend_float(base_model, tmp_path, speech):
    summary = export_streaming(base_model.model, tmp_path / "int8", precision="int8")
    assert summary["float_graphs"] == ["frontend"]
    assert (summary["per_channel"], summary["rounding"]) == (True, "nearest")  # the measured default
    exported = load_model(f"ort:{tmp_path / 'int8'}")
    assert exported.precision == "int8"
    assert all(isinstance(tokens, list) for tokens in decode(exported, speech[:2]))


def test_an_int8_scheme_is_honoured_weight_by_weight(base_model, tmp_path):
    """A non-default scheme (per-channel scales, stochastic rounding, adapter and cross_kv kept float): every
    quantized MatMul weight of decoder_kv holds exactly `int8_levels` of its float weight under that scheme,
    with one scale per output column, and the graphs kept float hold no int8."""
    import zlib

    import onnx
    from onnx import numpy_helper

    from moonlora.model.ort import graph_precision
    from moonlora.ship.streaming_export import Int8Scheme, int8_levels

    scheme = Int8Scheme(per_channel=True, rounding="stochastic", float_graphs=("frontend", "adapter", "cross_kv"))
    summary = export_streaming(base_model.model, tmp_path / "q", precision="int8", scheme=scheme, keep_onnx=True)
    export_streaming(base_model.model, tmp_path / "f", precision="float32", keep_onnx=True)
    assert summary["float_graphs"] == ["frontend", "adapter", "cross_kv"]
    assert (summary["rounding"], summary["per_channel"]) == ("stochastic", True)
    assert [graph_precision(tmp_path / "q" / f"{graph}.ort") for graph in GRAPHS] == [
        "float32", "int8", "float32", "float32", "int8"]

    def arrays(path):
        return {entry.name: numpy_helper.to_array(entry) for entry in onnx.load(str(path)).graph.initializer}

    quantized = arrays(tmp_path / "q" / "onnx" / "decoder_kv.onnx")
    floats = arrays(tmp_path / "f" / "onnx" / "decoder_kv.onnx")
    checked = rounded_apart = 0
    for name, q in quantized.items():
        if not (name.endswith("_quantized") and q.dtype == np.int8):
            continue
        source = name[: -len("_quantized")]
        levels, _ = int8_levels(floats[source], True, np.random.default_rng(zlib.crc32(source.encode())))
        assert np.array_equal(levels.astype(np.int8), q), name
        assert quantized[f"{source}_scale"].size == q.shape[1], name
        rounded_apart += not np.array_equal(int8_levels(floats[source], True)[0], levels)
        checked += 1
    assert checked == 9 and rounded_apart == 9  # q/k/v/o, cross q/o, fc1, fc2, proj_out; stochastic != nearest


def test_a_streaming_folder_short_of_a_graph_or_config_is_one_line(float_folder, tmp_path):
    import shutil

    from moonlora.errors import ModelSourceError

    broken = shutil.copytree(float_folder, tmp_path / "broken")
    (broken / "cross_kv.ort").unlink()
    with pytest.raises(ModelSourceError, match="lacks cross_kv.ort") as error:
        load_model(f"ort:{broken}")
    assert "\n" not in str(error.value)
    shutil.copy2(float_folder / "cross_kv.ort", broken / "cross_kv.ort")
    (broken / "streaming_config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="lacks depth"):
        load_model(str(broken))  # the layout is detected without the ort: prefix too


def test_a_streaming_experiment_with_export_records_parity_and_decide_reports_it(tiny_streaming_dir, tmp_path,
                                                                                capsys):
    from conftest import tone_set

    data = {"train": tone_set(tmp_path / "d", "train", 12), "main": tone_set(tmp_path / "d", "main", 4, seed0=50)}
    run = tmp_path / "run"
    assert main(["--quiet", "experiment", "--output-dir", str(run), "--dataset-path", str(data["train"]),
                 "--manifest-path", str(data["main"]), "--model", str(tiny_streaming_dir), "--device", "cpu",
                 "--max-steps", "2", "--eval-interval", "1", "--batch-size", "2", "--grad-accum", "1",
                 "--lora-r", "2", "--target-modules", "decoder", "--min-val-clips", "1",
                 "--export", "ort"]) == 0, capsys.readouterr().err
    record = json.loads((run / "experiment_metrics.json").read_text())
    parity = record["export_parity"]
    assert parity["runtime"] == {"name": "onnxruntime", "precision": "int8"}
    assert sorted(p.name for p in (run / "export" / "ort").iterdir() if p.suffix == ".ort") == sorted(
        f"{graph}.ort" for graph in GRAPHS)
    main_set = parity["sets"]["main"]
    assert main_set["contract"]["model_type"] == "moonshine_streaming"
    assert 0.0 <= main_set["text_agreement"] <= 1.0 and parity["outcome"]
    assert "export_minus_torch" in main_set and "export_minus_baseline" in main_set
    capsys.readouterr()
    main(["decide", str(run)])
    assert "export parity" in capsys.readouterr().out


def test_what_the_graphs_cannot_express_is_one_line(base_model, tmp_path):
    import copy

    from moonlora.errors import InputError

    with pytest.raises(InputError, match="--precision int4: pick one of int8, float32"):
        export_streaming(base_model.model, tmp_path / "x", precision="int4")
    grouped = copy.deepcopy(base_model.model)
    grouped.config.num_key_value_heads = 1
    with pytest.raises(InputError, match="num_key_value_heads 1 != num_attention_heads 2"):
        export_streaming(grouped, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
