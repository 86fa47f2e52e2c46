"""Where and in what precision a model runs: dtype names to torch dtypes, and `--device auto`."""

from __future__ import annotations

import torch

from moonlora.configs import DTYPE_NAMES
from moonlora.errors import DeviceError

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # float32, bfloat16, float16


def check_device(device: str) -> None:
    """Refuse (DeviceError, one line) a --device this machine does not have; auto and cpu always work."""
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise DeviceError(f"--device {device}: name a GPU as cuda or cuda:N (N = 0, 1, ...)")
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device auto or cpu")
        if int(index) >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: torch sees no Apple GPU (MPS) on this machine; use --device auto or cpu")


def resolve_device(device: str) -> torch.device:
    check_device(device)
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
