"""The onnxruntime backend: the deployed `.ort` graphs scored like the torch model (same manifest,
audio, DecodeConfig, per-clip cap and metrics), and its one-line errors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from moonlora.model import bundled
from moonlora.configs import DecodeConfig
from moonlora.eval.contract import ContractMismatch, require_comparable
from moonlora.errors import ModelSourceError
from moonlora.model.loading import bundled_feature_extractor, load_model
from moonlora.eval.decode import decode_clips
from moonlora.model.ort import (
    DECODER_FILE,
    ENCODER_FILE,
    EOS_ID,
    MODEL_FILES,
    TOKENIZER_FILE,
    OrtDecoder,
    OrtModel,
)

# --- unit: greedy loop, KV cache and per-clip cap on fake sessions --------------------------------


class _Item:
    def __init__(self, name, shape=None):
        self.name, self.shape = name, shape


class FakeEncoder:
    def run(self, names, feed):
        assert feed["input_values"].shape[0] == 1 and feed["input_values"].dtype == np.float32
        return [np.zeros((1, 5, 4), dtype=np.float32)]


class FakeDecoder:
    """Emits `script[step]` (then token 7 forever); records what each step was fed."""

    PAST = ("past_key_values.0.decoder.key", "past_key_values.0.encoder.key")

    def __init__(self, script=()):
        self.script, self.feeds = list(script), []

    def get_outputs(self):
        return [_Item("logits"), *(_Item(n.replace("past_key_values.", "present.")) for n in self.PAST)]

    def run(self, names, feed):
        step = len(self.feeds)
        self.feeds.append(feed)
        token = self.script[step] if step < len(self.script) else 7
        logits = np.zeros((1, 1, 16), dtype=np.float32)
        logits[0, -1, token] = 1.0
        self_kv = np.full((1, 2, feed["past_key_values.0.decoder.key"].shape[2] + 1, 3), step, dtype=np.float32)
        # Like the merged decoder: cached steps return empty cross-attention K/V.
        cross_kv = np.full((1, 2, 5 if step == 0 else 0, 3), 100.0, dtype=np.float32)
        return [logits, self_kv, cross_kv][: len(names)]


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " " + " ".join(f"w{i}" for i in ids) + " "


def fake_model(script=()):
    decoder = FakeDecoder(script)
    shapes = {name: (1, 2, 0, 3) for name in FakeDecoder.PAST}
    return OrtModel(folder=None, encoder=FakeEncoder(), decoder=decoder, precision="int8",
                    artifact_sha256="x" * 64, past_shapes=shapes), decoder


def decode_fake(script, seconds, config=None):
    config = config or DecodeConfig()
    model, decoder = fake_model(script)
    wave = np.zeros(int(seconds * 16000), dtype=np.float32)
    clips, _ = decode_clips(OrtDecoder(model, bundled_feature_extractor(), FakeTokenizer()), [seconds],
                            lambda i: wave, config)
    return clips[0], decoder


def test_cap_forces_the_end_like_per_clip_token_cap():
    config = DecodeConfig(tokens_per_second=1.0, extra_tokens=2)  # 2 s -> cap 4: 3 tokens, then EOS forced
    clip, decoder = decode_fake([], 2.0, config)
    assert clip.token_cap == 4 and clip.token_ids == [7, 7, 7] and clip.token_cap_hit
    assert len(decoder.feeds) == 3  # the forced end is not computed
    assert clip.text == "w7 w7 w7"


def test_natural_end_before_the_cap_is_not_a_hit():
    clip, decoder = decode_fake([5, 6, EOS_ID], 2.0)
    assert clip.token_ids == [5, 6] and not clip.token_cap_hit and clip.token_cap == 15
    assert len(decoder.feeds) == 3


def test_kv_cache_carries_self_attention_and_keeps_step0_cross_attention():
    _, decoder = decode_fake([5, 6, 8, EOS_ID], 2.0)
    first, later = decoder.feeds[0], decoder.feeds[1:]
    assert first["input_ids"].tolist() == [[1]] and not first["use_cache_branch"][0]
    assert [f["input_ids"][0, 0] for f in later] == [5, 6, 8]
    for step, feed in enumerate(later, start=1):
        assert feed["use_cache_branch"][0]
        assert feed["past_key_values.0.decoder.key"].shape[2] == step  # grows by one per step
        assert feed["past_key_values.0.encoder.key"].shape[2] == 5  # step 0's, not the empty ones


def test_beam_search_is_refused():
    with pytest.raises(ModelSourceError, match="greedily"):
        decode_fake([], 1.0, DecodeConfig(num_beams=2))


# --- unit: one-line errors ------------------------------------------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_files_are_named(tmp_path):
    (tmp_path / ENCODER_FILE).write_bytes(b"not a graph")
    with pytest.raises(ModelSourceError) as error:
        load_model(f"ort:{tmp_path}")
    message = one_line(error)
    assert f"lacks {DECODER_FILE}, {TOKENIZER_FILE};" in message
    # Without the prefix, a folder holding .ort graphs is taken for an ORT model too.
    with pytest.raises(ModelSourceError, match=f"lacks {DECODER_FILE}"):
        load_model(str(tmp_path))


def test_corrupt_graph_is_named(tmp_path):
    for name in MODEL_FILES:
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ModelSourceError) as error:
        load_model(f"ort:{tmp_path}")
    assert f"{tmp_path / ENCODER_FILE}: onnxruntime cannot load it" in one_line(error)


def test_no_such_folder_and_unknown_bundled(tmp_path):
    with pytest.raises(ModelSourceError, match="no such folder"):
        load_model(f"ort:{tmp_path / 'absent'}")
    with pytest.raises(ModelSourceError, match="available: ort:bundled:base-en"):
        load_model("ort:bundled:base-xx")


def test_adapter_dtype_and_device_are_refused(tmp_path):
    with pytest.raises(ModelSourceError) as error:
        load_model(f"ort:{tmp_path}", adapter=tmp_path / "adapter")
    assert "merge the adapter and export" in one_line(error)
    with pytest.raises(ModelSourceError, match="--dtype bfloat16"):
        load_model(f"ort:{tmp_path}", dtype="bfloat16")
    with pytest.raises(ModelSourceError, match="--device cuda"):
        load_model(f"ort:{tmp_path}", device="cuda")


# --- integration: the bundled .ort files vs moonlora's torch path ---------------------------------


@pytest.fixture(scope="module")
def parity_manifest(tmp_path_factory):
    from moonlora.data.manifest import load_manifest, write_manifest
    from moonlora.data.synth.build import build_domain

    try:
        beckett = bundled.beckett_wav_path()
    except bundled.BundledModelMissing as err:
        pytest.skip(str(err))
    synth = build_domain("atc", n=12, seed=0, out_dir=tmp_path_factory.mktemp("atc"), progress=False)
    rows = [json.loads(line) for path in (synth.train_manifest, synth.test_manifest)
            for line in path.read_text().splitlines()][:8]
    rows.insert(0, {"audio_filepath": str(beckett), "text": bundled.BECKETT_TEXT, "speaker": "beckett"})
    return load_manifest(write_manifest(rows, synth.out_dir / "parity.jsonl"))


@pytest.fixture(scope="module")
def loaded_pair(parity_manifest):
    return load_model("bundled:base-en", device="cpu"), load_model("ort:bundled:base-en")


@pytest.fixture(scope="module")
def evaluated_pair(loaded_pair, parity_manifest):
    from moonlora.data.audio import AudioConfig
    from moonlora.eval.evaluate import evaluate_manifest

    config = DecodeConfig(device="cpu")
    return tuple(evaluate_manifest(loaded, parity_manifest, AudioConfig(), config, progress=False)
                 for loaded in loaded_pair)


@pytest.mark.integration
def test_ort_matches_torch_on_every_clip(evaluated_pair):
    torch_result, ort_result = evaluated_pair
    assert len(ort_result.clips) == 9
    for t, o in zip(torch_result.clips, ort_result.clips):
        assert o.hypothesis == t.hypothesis, o.utterance.utt_id
        assert (o.decoded.token_ids, o.decoded.token_cap, o.decoded.token_cap_hit) == \
            (t.decoded.token_ids, t.decoded.token_cap, t.decoded.token_cap_hit)
    assert ort_result.corpus.wer == torch_result.corpus.wer
    assert ort_result.clips[0].score.hyp_norm == "ever tried ever failed no matter try again fail again fail better"


@pytest.mark.integration
def test_contracts_differ_exactly_in_runtime_and_artifact(evaluated_pair):
    torch_contract, ort_contract = (r.contract for r in evaluated_pair)
    assert torch_contract.runtime == {"name": "torch", "precision": "float32"}
    assert ort_contract.runtime == {"name": "onnxruntime", "precision": "int8"}
    assert torch_contract.differences(ort_contract) == ["model_sha256", "runtime.name", "runtime.precision"]
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        digest.update((bundled.base_en_dir() / name).read_bytes())
    assert ort_contract.model_sha256 == digest.hexdigest() and ort_contract.adapter_sha256 is None
    with pytest.raises(ContractMismatch, match="runtime.name .*'torch' vs 'onnxruntime'"):
        require_comparable(torch_contract, ort_contract, allow=("model_sha256",))
    require_comparable(torch_contract, ort_contract, allow=("runtime", "model_sha256"))


@pytest.mark.integration
def test_tiny_cap_cuts_both_runtimes_alike(loaded_pair, parity_manifest):
    from moonlora.data.audio import AudioConfig, load_audio

    beckett = parity_manifest.utterances[0]
    wave = load_audio(beckett.audio_filepath, AudioConfig())
    config = DecodeConfig(tokens_per_second=0.5, device="cpu")  # ~10 s -> cap 7
    torch_clip, ort_clip = (
        decode_clips(m.decoder(), [beckett.duration], lambda i: wave, config)[0][0]
        for m in loaded_pair)
    assert ort_clip.token_cap_hit and torch_clip.token_cap_hit
    assert ort_clip == torch_clip and len(ort_clip.token_ids) == ort_clip.token_cap - 1
