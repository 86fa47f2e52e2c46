"""The training forward's vocabulary projection, in column blocks on the CPU.

On 2 CPU cores MKL runs the output layer's product, (100-200 target positions, 320) by (320, 32768),
at 55-65 GFLOP/s: its 42 MB weight and 13-24 MB of logits stream through the caches. Done 1024
vocabulary rows at a time (a 1.3 MB weight block) the same product takes about a fifth less time
and gives the same bits: each logit is still one 320-term dot product, computed by the same kernel
(tests/test_output_layer.py checks equality and the gradient; `benchmarks/streaming_probes.py head`
times both). The backward product is left as autograd does it: its 32768-term reductions already
run near the machine's rate. Used only where the weight trains nothing (the frozen output layer of a
LoRA run) and on the CPU; anything else goes through the module itself.
"""

from __future__ import annotations

import torch

VOCABULARY_BLOCK = 1024


class _BlockedLinear(torch.autograd.Function):
    """`torch.nn.functional.linear(hidden, weight)` for a weight without gradient, forward in row blocks of
    the weight. Backward is the same product autograd's linear uses for the input's gradient."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, block: int) -> torch.Tensor:
        ctx.save_for_backward(weight)
        logits = hidden.new_empty(hidden.shape[0], weight.shape[0])
        for start in range(0, weight.shape[0], block):
            torch.mm(hidden, weight[start:start + block].t(), out=logits[:, start:start + block])
        return logits

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad_logits.mm(weight), None, None


def blocked_output_applies(output_layer: torch.nn.Module, hidden: torch.Tensor) -> bool:
    """True when the blocked product computes exactly what `output_layer(hidden)` does: a plain bias-free
    linear layer whose weight trains nothing, a 2-d fp32 input on the CPU outside autocast."""
    return (type(output_layer) is torch.nn.Linear and output_layer.bias is None
            and not output_layer.weight.requires_grad and hidden.dim() == 2
            and hidden.device.type == "cpu" and hidden.dtype == output_layer.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def output_logits(output_layer: torch.nn.Module, hidden: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """`output_layer(hidden)` for (positions, hidden) states, blocked where `blocked_output_applies`."""
    if not blocked_output_applies(output_layer, hidden):
        return output_layer(hidden)
    return _BlockedLinear.apply(hidden.contiguous(), output_layer.weight, block or VOCABULARY_BLOCK)
