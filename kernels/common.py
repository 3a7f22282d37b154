"""Shared pieces of the kernels: the optional triton import, launch settings, the torch gather helper."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    jit = triton.jit
except ImportError:  # triton is an optional extra ([gpu], [test]); the torch references below still work without it
    triton = tl = None

    def jit(fn):
        """Stand-in for triton.jit: the kernel stays a plain function that resolve_backend never lets run."""
        return fn


@jit
def kept_row(idx_ptr, stride_ib, stride_ik, K):
    """For a one-program-per-kept-row kernel: (b, k, n) = batch row, kept slot and the sequence position idx[b, k].

    int64 arithmetic: b * stride_xb passes 2**31 at B = 16, N = 32760, D = 5120.
    """
    row = tl.program_id(0).to(tl.int64)
    b = row // K
    k = row % K
    return b, k, tl.load(idx_ptr + b * stride_ib + k * stride_ik)


def interpreting() -> bool:
    """Whether TRITON_INTERPRET asks for the CPU interpreter (same spellings as triton's own env parsing).

    triton reads it once per @triton.jit, at import: it must be set before triton is first imported.
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def row_settings(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for kernels that keep one whole row of n elements in registers.

    Same ladder as Liger-Kernel's calculate_settings: a 1536-wide Wan2.1-1.3B row gets BLOCK 2048 and 8 warps, a
    5120-wide 14B row BLOCK 8192 and 16 warps.
    """
    block = triton.next_power_of_2(n)
    if block >= 32768:
        return block, 32
    if block >= 8192:
        return block, 16
    if block >= 2048:
        return block, 8
    return block, 4


def gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[b, idx[b, k]] for t of shape (1 or B, N, *rest) and idx (B, K): returns (B, K, *rest), a new tensor."""
    B, K = idx.shape
    t = t.expand(B, *t.shape[1:])  # (B, N, *rest), a view
    index = idx.view(B, K, *([1] * (t.ndim - 2))).expand(B, K, *t.shape[2:])  # (B, K, *rest)
    return t.gather(1, index)


def check_index(idx: torch.Tensor, device: torch.device, batch: int | None = None) -> None:
    """idx must be (B, K) int64 on `device` (with B = batch when given); the kernels trust it (no bounds checks)."""
    if idx.ndim != 2 or idx.dtype != torch.int64 or idx.device != device or batch not in (None, idx.shape[0]):
        raise ValueError(
            f"idx must be int64 (B, K) on {device}" + ("" if batch is None else f" with B = {batch}")
            + f"; got {tuple(idx.shape)} {idx.dtype} on {idx.device}"
        )
