"""Backend choice shared by every op: `auto` falls back quietly, an explicit request fails loudly."""

from __future__ import annotations

import logging

import torch

from .common import interpreting, triton

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """Map `auto` / `triton` / `torch` to the backend that will run on `device`: "triton" or "torch".

    auto: triton on CUDA when triton imports, else torch (logged at debug: a CPU run is not a mistake). The CPU
    interpreter is never chosen automatically; it is thousands of times slower and only meant for tests.
    triton: raises RuntimeError when triton is missing, or when the device is not CUDA and TRITON_INTERPRET=1 is unset.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "torch":
        return "torch"
    is_cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        if is_cuda and triton is not None:
            return "triton"
        logger.debug("kernels: backend auto -> torch (device %s, triton %s)", device, triton is not None)
        return "torch"
    if triton is None:
        raise RuntimeError("backend 'triton' needs triton, which is not installed: pip install 'vidgen-prune[gpu]'")
    if not is_cuda and not interpreting():
        raise RuntimeError(
            f"backend 'triton' needs a CUDA device, got {device}; set TRITON_INTERPRET=1 to run the kernels on the CPU "
            "interpreter (tests only), or use backend 'torch' / 'auto'"
        )
    return "triton"
