"""Convert the Moonshine base model bundled with moonshine-cpp into transformers.

The wheel ships the model as ONNX Runtime ORT-format flatbuffers with int8 weights. We read the
flatbuffers directly, evaluate each weight's dequantization chain (Cast -> Mul -> Add), and
name every tensor after the module path of the node that consumes it. Initializer names are
useless as keys: the merged decoder reuses the same names for different tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime.tools.ort_format_model  # noqa: F401  (must come first: puts ort_flatbuffers_py on sys.path)
import torch
from ort_flatbuffers_py import fbs  # the generated readers import each other under this top-level name
from transformers import MoonshineConfig, MoonshineForConditionalGeneration

_NUMPY_DTYPES = {
    fbs.TensorDataType.TensorDataType.FLOAT: np.float32,
    fbs.TensorDataType.TensorDataType.INT8: np.int8,
    fbs.TensorDataType.TensorDataType.UINT8: np.uint8,
    fbs.TensorDataType.TensorDataType.INT32: np.int32,
    fbs.TensorDataType.TensorDataType.INT64: np.int64,
}
_FOLDABLE_OPS = {"Cast", "Mul", "Add"}  # the dequantization chain; nothing else is evaluated

ENCODER_PREFIX = "/"
DECODER_PREFIX = "/model/decoder/"


def moonshine_base_config() -> MoonshineConfig:
    """The configuration of Moonshine base (English), matching the bundled ORT graphs."""
    return MoonshineConfig(
        vocab_size=32768,
        hidden_size=416,
        intermediate_size=1664,
        encoder_num_hidden_layers=8,
        decoder_num_hidden_layers=8,
        encoder_num_attention_heads=8,
        decoder_num_attention_heads=8,
        encoder_num_key_value_heads=8,
        decoder_num_key_value_heads=8,
        encoder_hidden_act="gelu",
        decoder_hidden_act="silu",
        max_position_embeddings=512,
        attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.62},
        tie_word_embeddings=True,
        bos_token_id=1,
        decoder_start_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


class OrtScope:
    """Initializers, node outputs and constant values of one graph; subgraphs see their parent's too.

    Shared with `moonlora.ship.ort_export`, which patches the weights this module reads."""

    def __init__(self, graph: fbs.Graph.Graph, parent: OrtScope | None = None) -> None:
        self.parent = parent
        self.initializers = {}
        for i in range(graph.InitializersLength()):
            tensor = graph.Initializers(i)
            self.initializers[tensor.Name().decode()] = tensor
        self.producers = {}
        for i in range(graph.NodesLength()):
            node = graph.Nodes(i)
            for j in range(node.OutputsLength()):
                self.producers[node.Outputs(j).decode()] = node
        self._values: dict[str, np.ndarray | None] = {}

    def lookup(self, name: str) -> tuple[OrtScope, fbs.Tensor.Tensor | None, fbs.Node.Node | None] | None:
        """Where `name` is defined: (scope, initializer, None) or (scope, None, producing node)."""
        scope = self
        while scope is not None:
            if name in scope.initializers:
                return scope, scope.initializers[name], None
            if name in scope.producers:
                return scope, None, scope.producers[name]
            scope = scope.parent
        return None

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of `name`, or None when it depends on a graph input."""
        if name not in self._values:
            if name in self.initializers:
                self._values[name] = _tensor_array(self.initializers[name])
            elif name in self.producers:
                self._values[name] = self._fold(self.producers[name])
            elif self.parent is not None:
                return self.parent.value(name)
            else:
                self._values[name] = None
        return self._values[name]

    def _fold(self, node: fbs.Node.Node) -> np.ndarray | None:
        op = node.OpType().decode()
        if op not in _FOLDABLE_OPS:
            return None
        inputs = [self.value(node.Inputs(j).decode()) for j in range(node.InputsLength())]
        if any(x is None for x in inputs):
            return None
        if op == "Cast":
            to = _int_attribute(node, "to")
            if to not in _NUMPY_DTYPES:
                return None
            return inputs[0].astype(_NUMPY_DTYPES[to])
        a, b = inputs
        return a * b if op == "Mul" else a + b


def _int_attribute(node: fbs.Node.Node, name: str) -> int | None:
    for i in range(node.AttributesLength()):
        attribute = node.Attributes(i)
        if attribute.Name().decode() == name:
            return attribute.I()
    return None


def _tensor_array(tensor: fbs.Tensor.Tensor) -> np.ndarray | None:
    dtype = _NUMPY_DTYPES.get(tensor.DataType())
    if dtype is None or tensor.ExternalDataOffset() >= 0 or tensor.RawDataIsNone():
        return None
    dims = [int(d) for d in tensor.DimsAsNumpy()] if tensor.DimsLength() else []
    return tensor.RawDataAsNumpy().view(dtype).reshape(dims)


class OrtGraph:
    """The bytes and the nodes of one .ort file (subgraphs included), nodes found by name."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data = self.path.read_bytes()
        session = fbs.InferenceSession.InferenceSession.GetRootAs(self.data, 0)
        if session.Model() is None or session.Model().Graph() is None:
            raise ValueError(f"{self.path}: not an ONNX Runtime ORT-format model")
        self.nodes: dict[str, list[tuple[OrtScope, fbs.Node.Node]]] = {}
        self._index(session.Model().Graph(), None)

    def _index(self, graph: fbs.Graph.Graph, parent: OrtScope | None) -> None:
        scope = OrtScope(graph, parent)
        for i in range(graph.NodesLength()):
            node = graph.Nodes(i)
            self.nodes.setdefault(node.Name().decode(), []).append((scope, node))
            for j in range(node.AttributesLength()):
                subgraph = node.Attributes(j).G()
                if subgraph is not None:
                    self._index(subgraph, scope)

    def constant_input(self, node_name: str, index: int | None = None) -> np.ndarray:
        """The constant input of node `node_name` (the only non-scalar one unless `index` is given)."""
        found = []
        for scope, node in self.nodes.get(node_name, []):
            values = [scope.value(node.Inputs(j).decode()) for j in range(node.InputsLength())]
            if index is not None:
                candidates = [values[index]] if index < len(values) and values[index] is not None else []
            else:
                candidates = [v for v in values if v is not None and v.size > 1]
            if len(candidates) != 1:
                raise ValueError(f"{self.path}: node {node_name!r} has {len(candidates)} constant inputs, expected 1")
            found.append(candidates[0])
        if not found:
            raise ValueError(f"{self.path}: expected tensor missing: no node named {node_name!r}")
        # The merged decoder repeats each layer in both If branches; they must agree.
        if any(v is not found[0] and not np.array_equal(v, found[0]) for v in found[1:]):
            raise ValueError(f"{self.path}: node {node_name!r} has different weights in different subgraphs")
        return found[0]


def _attention_sources(module: str, node_path: str) -> dict[str, tuple[str, int | None, bool]]:
    renames = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "dense": "o_proj"}
    return {f"{module}.{hf}.weight": (f"{node_path}/{ort}/MatMul", None, True) for ort, hf in renames.items()}


def _encoder_sources(config: MoonshineConfig) -> dict[str, tuple[str, int | None, bool]]:
    """transformers key -> (ORT node name, constant input index or None, transpose)."""
    p = ENCODER_PREFIX
    sources = {
        "conv1.weight": (f"{p}conv1/Conv", 1, False),
        "conv2.weight": (f"{p}conv2/Conv", 1, False),
        "conv2.bias": (f"{p}conv2/Conv", 2, False),
        "conv3.weight": (f"{p}conv3/Conv", 1, False),
        "conv3.bias": (f"{p}conv3/Conv", 2, False),
        "groupnorm.weight": (f"{p}groupnorm/Mul", None, False),
        "groupnorm.bias": (f"{p}groupnorm/Add", None, False),
        "layer_norm.weight": (f"{p}layer_norm/Mul", None, False),
    }
    for i in range(config.encoder_num_hidden_layers):
        layer, node = f"layers.{i}", f"{p}layers.{i}"
        sources |= _attention_sources(f"{layer}.self_attn", f"{node}/self_attn")
        for fc in ("fc1", "fc2"):
            sources[f"{layer}.mlp.{fc}.weight"] = (f"{node}/mlp/{fc}/MatMul", None, True)
            sources[f"{layer}.mlp.{fc}.bias"] = (f"{node}/mlp/{fc}/Add", None, False)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            sources[f"{layer}.{norm}.weight"] = (f"{node}/{norm}/Mul", None, False)
    return {f"model.encoder.{k}": v for k, v in sources.items()}


def _decoder_sources(config: MoonshineConfig) -> dict[str, tuple[str, int | None, bool]]:
    """transformers key -> (ORT node name, constant input index or None, transpose)."""
    p = DECODER_PREFIX
    sources = {
        "embed_tokens.weight": (f"{p}embed_tokens/Gather", None, False),
        "norm.weight": (f"{p}norm/Mul", None, False),
    }
    for i in range(config.decoder_num_hidden_layers):
        layer, node = f"layers.{i}", f"{p}layers.{i}"
        sources |= _attention_sources(f"{layer}.self_attn", f"{node}/self_attn")
        sources |= _attention_sources(f"{layer}.encoder_attn", f"{node}/encoder_attn")
        for ort, fc in (("up_proj", "fc1"), ("down_proj", "fc2")):
            sources[f"{layer}.mlp.{fc}.weight"] = (f"{node}/mlp/{ort}/MatMul", None, True)
            sources[f"{layer}.mlp.{fc}.bias"] = (f"{node}/mlp/{ort}/Add", None, False)
        for norm in ("input_layernorm", "post_attention_layernorm", "final_layernorm"):
            sources[f"{layer}.{norm}.weight"] = (f"{node}/{norm}/Mul", None, False)
    return {f"model.decoder.{k}": v for k, v in sources.items()}


def ort_weight_sources(config: MoonshineConfig | None = None) -> tuple[dict, dict]:
    """(encoder, decoder) maps: transformers key -> (ORT node name, constant input index or None, transpose).

    The ORT node's constant input holds the weight; `transpose` means it is stored as the transpose of the
    transformers tensor (MatMul weights are [in, out]).
    """
    config = config or moonshine_base_config()
    return _encoder_sources(config), _decoder_sources(config)


def _read(graph: OrtGraph, sources: dict[str, tuple[str, int | None, bool]]) -> dict[str, torch.Tensor]:
    state = {}
    for key, (node_name, index, transpose) in sources.items():
        array = graph.constant_input(node_name, index)
        if transpose:  # ORT MatMul weights are [in, out]; nn.Linear wants [out, in]
            array = array.T
        # Copy: initializer views point into the read-only file buffer.
        state[key] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    return state


def read_ort_weights(encoder_ort: Path, decoder_ort: Path) -> dict[str, torch.Tensor]:
    """Dequantized float32 weights of the bundled ORT files, keyed like a transformers state dict."""
    config = moonshine_base_config()
    state = _read(OrtGraph(encoder_ort), _encoder_sources(config))
    state |= _read(OrtGraph(decoder_ort), _decoder_sources(config))
    # GroupNorm's affine constants are stored [C, 1] to broadcast over time.
    for key in ("model.encoder.groupnorm.weight", "model.encoder.groupnorm.bias"):
        state[key] = state[key].reshape(-1)
    # Tied: the graph computes logits with the transposed token embedding.
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state


def convert_bundled_base(encoder_ort: Path, decoder_ort: Path) -> MoonshineForConditionalGeneration:
    """A transformers Moonshine base model holding the bundled weights, in eval mode."""
    model = MoonshineForConditionalGeneration(moonshine_base_config())
    model.load_state_dict(read_ort_weights(encoder_ort, decoder_ort), strict=True)
    model.tie_weights()
    return model.eval()
