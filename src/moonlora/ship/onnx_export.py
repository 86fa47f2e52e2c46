"""Route (b) of the edge export: a (merged) transformers Moonshine -> ONNX -> int8 -> ORT folder.

For architectures whose bundled graphs cannot be patched (route (a), `ort_export`), this exports
`MoonshineForConditionalGeneration` ourselves, with the same graph signature as the bundled
moonshine-cpp files, so `model.ort` runs the result unchanged:

- `encoder_model.ort`: `input_values` (batch, num_samples) -> `last_hidden_state`;
- `decoder_model_merged.ort`: `input_ids`, `encoder_hidden_states`,
  `past_key_values.{i}.{decoder|encoder}.{key|value}` (batch, kv_heads, length, head_dim) and
  `use_cache_branch` (bool, shape [1]) -> `logits` and `present.{i}.{decoder|encoder}.{key|value}`;
- `tokenizer.bin`: copied (by default the bundled one, Moonshine's vocabulary).

The merged decoder is one graph without an If: the cross-attention K/V are
`cat(past_cross_kv, project(encoder_hidden_states[:, :n]))` with n = encoder length when
`use_cache_branch` is false and 0 when it is true. So the first step (empty past, n = length)
projects the encoder states, and cached steps (past = step-0 K/V, n = 0) reuse them at no cost.
Cached steps return the full cross K/V (the bundled graph returns empty ones); the backend keeps
the step-0 ones either way.

The decoder step is written here from the model's own submodules (embedding, layer norms, q/k/v/o
projections, rotary embedding, MLPs, `proj_out`) rather than traced through transformers' Cache
classes, which do not trace to a fixed graph. Export uses the TorchScript exporter
(`dynamo=False`); the dynamic-int8 step needs the `onnx` package (onnxruntime.quantization).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ENCODER_FILE = "encoder_model.ort"
DECODER_FILE = "decoder_model_merged.ort"
TOKENIZER_FILE = "tokenizer.bin"
OPSET = 17


def _base_model(model: nn.Module) -> nn.Module:
    """The MoonshineForConditionalGeneration to export (refuses an unmerged PEFT wrapper)."""
    if hasattr(model, "peft_config"):
        raise TypeError("export_onnx takes a merged model: call merge_and_unload() on the PeftModel first")
    if not (hasattr(model, "model") and hasattr(model.model, "encoder") and hasattr(model, "proj_out")):
        raise TypeError(f"export_onnx takes a MoonshineForConditionalGeneration, not {type(model).__name__}")
    return model


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_values=input_values).last_hidden_state


def _apply_rotary_traceable(q, k, cos, sin, unsqueeze_dim=1):
    """Drop-in for transformers' Moonshine `apply_rotary_pos_emb` (cos, sin: (batch, length, rot)
    holding cat(freqs, freqs)) without repeat_interleave, which the TorchScript exporter mistraces
    (a rank-5 Add) on dynamic lengths."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half].unsqueeze(unsqueeze_dim), sin[..., :half].unsqueeze(unsqueeze_dim)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


@contextlib.contextmanager
def _traceable_rotary():
    from transformers.models.moonshine import modeling_moonshine

    original = modeling_moonshine.apply_rotary_pos_emb
    modeling_moonshine.apply_rotary_pos_emb = _apply_rotary_traceable
    try:
        yield
    finally:
        modeling_moonshine.apply_rotary_pos_emb = original


def _heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(batch, length, heads * head_dim) -> (batch, heads, length, head_dim)."""
    return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Moonshine's partial, interleaved rotary embedding (`apply_rotary_pos_emb`): the first
    2 * len(inv_freq) channels of each head, in (even, odd) pairs; cos, sin: (..., length, rot / 2),
    broadcastable to x's (batch, heads, length, rot / 2)."""
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half:]
    pairs = rot.reshape(x.shape[0], x.shape[1], x.shape[2], half, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return torch.cat([rotated.reshape(x.shape[0], x.shape[1], x.shape[2], 2 * half), rest], dim=-1)


def _attend(query, key, value, scaling: float, groups: int, mask=None) -> torch.Tensor:
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        weights = weights + mask
    weights = torch.softmax(weights, dim=-1)
    out = torch.matmul(weights, value).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


class _MergedDecoder(nn.Module):
    """One decoder step with the bundled merged-decoder signature (inputs flattened, see export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        config = model.config
        self.heads = config.decoder_num_attention_heads
        self.kv_heads = config.decoder_num_key_value_heads
        self.num_layers = len(self.decoder.layers)

    def forward(self, input_ids, encoder_hidden_states, *rest):
        *past, use_cache_branch = rest
        hidden = self.decoder.embed_tokens(input_ids)
        q_len = hidden.shape[1]
        past_len = past[0].shape[2]
        positions = (torch.arange(q_len, device=hidden.device) + past_len).unsqueeze(0)
        rotary = self.decoder.rotary_emb
        freqs = positions[0].to(torch.float32).unsqueeze(1) * rotary.inv_freq.to(torch.float32)  # (q_len, rot/2)
        cos = (freqs.cos() * rotary.attention_scaling).to(hidden.dtype)
        sin = (freqs.sin() * rotary.attention_scaling).to(hidden.dtype)
        key_positions = torch.arange(past_len + q_len, device=hidden.device)
        allowed = key_positions.unsqueeze(0) <= positions[0].unsqueeze(1)  # (q_len, past + q_len)
        causal = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
            ~allowed, torch.finfo(hidden.dtype).min)
        # rows of the encoder states to project: all of them on the first step, none on cached steps
        keep = (~use_cache_branch).to(torch.int64).reshape(())
        rows = torch.arange(encoder_hidden_states.shape[1] * keep, device=hidden.device)
        fresh_encoder = encoder_hidden_states.index_select(1, rows)
        presents = []
        for i, layer in enumerate(self.decoder.layers):
            self_k, self_v, cross_k, cross_v = past[4 * i: 4 * i + 4]
            attn = layer.self_attn
            head_dim = attn.head_dim
            groups = self.heads // self.kv_heads
            residual = hidden
            normed = layer.input_layernorm(hidden)
            query = _heads(attn.q_proj(normed), self.heads, head_dim)
            key = _heads(attn.k_proj(normed), self.kv_heads, head_dim)
            value = _heads(attn.v_proj(normed), self.kv_heads, head_dim)
            query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
            key = torch.cat([self_k, key], dim=2)
            value = torch.cat([self_v, value], dim=2)
            hidden = residual + attn.o_proj(_attend(query, key, value, attn.scaling, groups, causal))

            cross = layer.encoder_attn
            residual = hidden
            normed = layer.post_attention_layernorm(hidden)
            query = _heads(cross.q_proj(normed), self.heads, head_dim)
            enc_key = torch.cat([cross_k, _heads(cross.k_proj(fresh_encoder), self.kv_heads, head_dim)], dim=2)
            enc_value = torch.cat([cross_v, _heads(cross.v_proj(fresh_encoder), self.kv_heads, head_dim)], dim=2)
            hidden = residual + cross.o_proj(_attend(query, enc_key, enc_value, cross.scaling, groups))

            residual = hidden
            hidden = residual + layer.mlp(layer.final_layernorm(hidden))
            presents += [key, value, enc_key, enc_value]
        logits = self.proj_out(self.decoder.norm(hidden))
        return (logits, *presents)


def _kv_names(prefix: str, num_layers: int) -> list[str]:
    return [f"{prefix}.{i}.{part}.{kind}" for i in range(num_layers)
            for part in ("decoder", "encoder") for kind in ("key", "value")]


def export_onnx_graphs(model: nn.Module, out_dir: Path) -> dict[str, Path]:
    """float32 `encoder_model.onnx` and `decoder_model_merged.onnx` in out_dir."""
    model = _base_model(model).eval().float().cpu()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    hidden_size = config.hidden_size
    encoder_path, decoder_path = out_dir / "encoder_model.onnx", out_dir / "decoder_model_merged.onnx"
    with torch.no_grad(), _traceable_rotary():
        waveform = torch.randn(1, 16000)
        torch.onnx.export(
            _Encoder(model), (waveform,), str(encoder_path), dynamo=False, opset_version=OPSET,
            input_names=["input_values"], output_names=["last_hidden_state"],
            dynamic_axes={"input_values": {0: "batch_size", 1: "num_samples"},
                          "last_hidden_state": {0: "batch_size", 1: "encoder_sequence_length"}},
        )
        decoder = _MergedDecoder(model)
        layers, head_dim = decoder.num_layers, decoder.decoder.layers[0].self_attn.head_dim
        enc_len, past_len = 7, 3
        past = []
        for _ in range(layers):
            past += [torch.randn(1, decoder.kv_heads, past_len, head_dim) for _ in range(2)]
            past += [torch.randn(1, decoder.kv_heads, enc_len, head_dim) for _ in range(2)]
        args = (torch.tensor([[5]], dtype=torch.int64), torch.randn(1, enc_len, hidden_size), *past,
                torch.tensor([True]))
        past_names, present_names = _kv_names("past_key_values", layers), _kv_names("present", layers)
        dynamic = {"input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
                   "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
                   "logits": {0: "batch_size", 1: "decoder_sequence_length"}}
        for name in past_names:
            length = "past_decoder_sequence_length" if ".decoder." in name else "encoder_sequence_length_out"
            dynamic[name] = {0: "batch_size", 2: length}
        for name in present_names:
            length = "total_decoder_sequence_length" if ".decoder." in name else "encoder_sequence_length_out"
            dynamic[name] = {0: "batch_size", 2: length}
        torch.onnx.export(
            decoder, args, str(decoder_path), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "encoder_hidden_states", *past_names, "use_cache_branch"],
            output_names=["logits", *present_names], dynamic_axes=dynamic,
        )
    return {"encoder": encoder_path, "decoder": decoder_path}


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization of the weights (onnxruntime.quantization; needs `onnx`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target


def convert_to_ort(onnx_dir: Path, out_dir: Path) -> None:
    """Every .onnx file of onnx_dir -> a .ort file of the same stem in out_dir."""
    command = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_dir),
               "--output_dir", str(out_dir),
               "--optimization_style", "Fixed"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"convert_onnx_models_to_ort failed ({done.returncode}):\n{tail}")


def export_onnx(model: nn.Module, out_dir: str | Path, quantize: bool = True,
                tokenizer_bin: str | Path | None = None, keep_onnx: bool = False) -> dict:
    """Export a merged Moonshine to an ORT model folder (`encoder_model.ort`,
    `decoder_model_merged.ort`, `tokenizer.bin`) that `load_model("ort:<out_dir>")` runs.

    tokenizer_bin: the vocabulary file to copy (default: the bundled one, for models with
    Moonshine's 32768-token vocabulary). keep_onnx also keeps the .onnx files under out_dir/onnx.
    Returns a summary dict: paths, precision, opset."""
    from moonlora.model import bundled
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="moonlora-onnx-") as work:
        work = Path(work)
        graphs = export_onnx_graphs(model, work / "float")
        final = work / "final"
        final.mkdir()
        for name, path in graphs.items():
            if quantize:
                quantize_int8(path, final / path.name)
            else:
                shutil.copy2(path, final / path.name)
        convert_to_ort(final, out_dir)
        if keep_onnx:
            shutil.copytree(final, out_dir / "onnx", dirs_exist_ok=True)
    for leftover in out_dir.glob("*required_operators*.config"):
        leftover.unlink()
    source = Path(tokenizer_bin) if tokenizer_bin is not None else bundled.tokenizer_bin_path()
    shutil.copy2(source, out_dir / TOKENIZER_FILE)
    for name in (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE):
        if not (out_dir / name).is_file():
            raise RuntimeError(f"export_onnx: {out_dir / name} was not written")
    return {
        "folder": str(out_dir),
        "encoder": str(out_dir / ENCODER_FILE),
        "decoder": str(out_dir / DECODER_FILE),
        "tokenizer": str(out_dir / TOKENIZER_FILE),
        "precision": "int8" if quantize else "float32",
        "opset": OPSET,
        "route": "b",
    }
