"""One decoder interface: decode_clips talks to the Decoder protocol only, and both backends satisfy it."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import moonlora.eval.decode as decode_module
from moonlora.configs import DecodeConfig
from moonlora.eval.decode import decode_clips
from moonlora.model.decoder import Decoder
from moonlora.model.loading import LoadedModel, bundled_feature_extractor
from moonlora.model.ort import OrtDecoder, OrtModel
from moonlora.model.torch_decoder import TorchDecoder

DECODE_SOURCE = Path(decode_module.__file__)
RUNTIME_NAMES = {"torch", "onnxruntime", "ort"}
PROTOCOL_MEMBERS = ("check", "batches", "encode", "generate", "detokenize")


def string_constants(tree: ast.AST) -> set[str]:
    return {node.value.lower() for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def code_without_docstrings(path: Path) -> ast.Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return tree


def test_decode_names_no_runtime():
    tree = code_without_docstrings(DECODE_SOURCE)
    named = string_constants(tree) & RUNTIME_NAMES
    assert not named, f"{DECODE_SOURCE} names runtimes {sorted(named)}: ask the Decoder instead"
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert "runtime" not in attributes, f"{DECODE_SOURCE} reads a .runtime: ask the Decoder instead"
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"torch", "transformers", "onnxruntime"}, imported


def test_the_runtime_name_check_can_fail(tmp_path):
    """The check above reads code, not docstrings, and would catch the old dispatch."""
    old = tmp_path / "decode.py"
    old.write_text('"""Mentions onnxruntime in prose."""\n'
                   'def f(model):\n    if getattr(model, "runtime", "torch") == "onnxruntime":\n        pass\n')
    tree = code_without_docstrings(old)
    assert string_constants(tree) & RUNTIME_NAMES == {"torch", "onnxruntime"}
    assert "onnxruntime" not in string_constants(code_without_docstrings(DECODE_SOURCE))


def test_model_decoder_and_decode_are_torch_free():
    code = ("import json, sys, moonlora.model.decoder, moonlora.eval.decode; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def protocol_signature(name: str) -> inspect.Signature:
    return inspect.signature(getattr(Decoder, name))


@pytest.mark.parametrize("implementation", [TorchDecoder, OrtDecoder])
def test_implementation_has_the_protocol_signatures(implementation):
    for name in PROTOCOL_MEMBERS:
        expected = list(protocol_signature(name).parameters)
        assert list(inspect.signature(getattr(implementation, name)).parameters) == expected, name


def test_torch_decoder_satisfies_the_protocol(tiny_loaded):
    decoder = tiny_loaded.decoder()
    assert isinstance(decoder, TorchDecoder) and isinstance(decoder, Decoder)
    assert decoder.sampling_rate == 16000
    assert decoder.batches([1.0, 3.0, 2.0], DecodeConfig(batch_size=2)) == [[1, 2], [0]]


def test_loaded_model_builds_its_decoder_from_the_model_held_now(tiny_loaded):
    from peft import LoraConfig, get_peft_model

    base = tiny_loaded.decoder().model
    tiny_loaded.model = get_peft_model(tiny_loaded.model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert base is not tiny_loaded.model and tiny_loaded.decoder().model is tiny_loaded.model


class _Item:
    def __init__(self, name, shape=None):
        self.name, self.shape = name, shape


class EndAtOnce:
    """Encoder and decoder graphs in one: every clip ends at its first step."""

    def run(self, names, feed):
        if "input_values" in feed:
            return [np.zeros((1, 3, 4), dtype=np.float32)]
        logits = np.zeros((1, 1, 8), dtype=np.float32)
        logits[0, -1, 2] = 1.0
        return [logits]

    def get_outputs(self):
        return [_Item("logits")]


class Words:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_ort_decoder_satisfies_the_protocol():
    model = OrtModel(folder=None, encoder=EndAtOnce(), decoder=EndAtOnce(), precision="int8",
                     artifact_sha256="x" * 64, past_shapes={})
    loaded = LoadedModel(model=model, feature_extractor=bundled_feature_extractor(), tokenizer=Words(),
                         source="ort:fake", weights_sha256="x" * 64, runtime="onnxruntime",
                         decoder_factory=OrtDecoder)
    decoder = loaded.decoder()
    assert isinstance(decoder, OrtDecoder) and isinstance(decoder, Decoder)
    # One clip at a time, in input order, whatever the batch size: the graphs take no attention mask.
    assert decoder.batches([1.0, 3.0, 2.0], DecodeConfig(batch_size=8)) == [[0], [1], [2]]
    batches = []
    clips, _ = decode_clips(decoder, [0.5, 1.0], lambda i: np.zeros(8000 * (i + 1), dtype=np.float32),
                            DecodeConfig(batch_size=8), on_batch=batches.append)
    assert batches == [1, 1]
    assert [(c.text, c.token_ids, c.token_cap_hit) for c in clips] == [("", [], False)] * 2


def test_the_torch_decoders_batch_policy_is_the_familys(tiny_loaded, monkeypatch):
    import dataclasses

    import moonlora.model.torch_decoder as torch_decoder
    from moonlora.errors import ConfigError
    from moonlora.model.families import MOONSHINE

    assert tiny_loaded.decoder().exact_padded_batches is True
    inexact = dataclasses.replace(MOONSHINE, exact_padded_batches=False)
    monkeypatch.setattr(torch_decoder, "family_for", lambda model_type: inexact)
    decoder = tiny_loaded.decoder()
    decoder.check(DecodeConfig(encoder="per-clip"))
    with pytest.raises(ConfigError, match="^--encoder batched: this model family has no exact padded-batch encoder"):
        decoder.check(DecodeConfig(encoder="batched"))
