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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
# Free memory at the top of the heap that glibc keeps instead of trimming it back to the kernel. At
# 128 MB a streaming decoder-only run still took 316,553 and 532,027 minor page faults over its 91 steps
# after the first epoch: the encoder cache fill leaves a large free top, which later steps trim and
# fault back in. At 1 GB the same steps took 208 and 2,230 faults
# (`benchmarks/streaming_probes.py step --sites decoder --steps 104 --group-by-length --trim-mib N`).
_TRIM_THRESHOLD = 2**30


def reuse_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MB, and up to 1 GB of free heap top (`_TRIM_THRESHOLD`), for
    reuse instead of handing them back to the kernel.

    A CPU training step allocates and frees the same large tensors every time (the output layer's
    logits and their gradients: 17-25 MB for a batch of 8 on the streaming tiny architecture). With
    its defaults glibc maps such blocks afresh or trims them back to the kernel, so each step pays a
    page fault per 4 KB touched; kept in the heap, a step reuses warm memory. Steady decoder-only step
    on 2 cores, 3 interleaved pairs (`benchmarks/streaming_probes.py step`, docs/benchmarks.md): 0.218-
    0.220 s with it, 0.232-0.282 s with `--no-reuse-memory`. PyTorch's CPU tuning
    guide gets the same by preloading jemalloc or tcmalloc, which a pip install cannot do. Process-wide
    and permanent; returns False where the C library is not glibc (nothing changes there).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
                and libc.mallopt(_M_TOP_PAD, _MMAP_THRESHOLD_MAX))
