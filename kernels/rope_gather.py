"""Gather Wan's rotary tables (cos, sin) at the kept tokens, both in one launch."""

from __future__ import annotations

import torch

from .common import check_index, gather_tokens, jit, kept_row, row_settings, tl
from .dispatch import resolve_backend


@jit
def _gather_rotary_kernel(
    cos_ptr, sin_ptr, idx_ptr, cos_out_ptr, sin_out_ptr,
    K, HD,
    stride_cb, stride_cn, stride_cd,
    stride_sb, stride_sn, stride_sd,
    stride_ib, stride_ik,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # One program per kept row; outputs are contiguous (B, K, HD).
    b, k, n = kept_row(idx_ptr, stride_ib, stride_ik, K)
    cols = tl.arange(0, BLOCK)
    mask = cols < HD
    cos = tl.load(cos_ptr + b * stride_cb + n * stride_cn + cols * stride_cd, mask=mask)
    sin = tl.load(sin_ptr + b * stride_sb + n * stride_sn + cols * stride_sd, mask=mask)
    tl.store(cos_out_ptr + (b * K + k) * HD + cols, cos, mask=mask)
    tl.store(sin_out_ptr + (b * K + k) * HD + cols, sin, mask=mask)


def gather_rotary_torch(cos: torch.Tensor, sin: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and CPU path."""
    return gather_tokens(cos, idx), gather_tokens(sin, idx)  # (B, K, 1, hd) each


def _gather_rotary_triton(cos, sin, idx):
    B, K = idx.shape
    S, HD = cos.shape[1], cos.shape[-1]
    cos_out = torch.empty(B, K, 1, HD, dtype=cos.dtype, device=cos.device)  # (B, K, 1, hd)
    sin_out = torch.empty(B, K, 1, HD, dtype=sin.dtype, device=sin.device)  # (B, K, 1, hd)
    cos3 = cos.expand(B, S, 1, HD)[:, :, 0]  # (B, S, hd) view; stride 0 along B for Wan's (1, S, 1, hd) table
    sin3 = sin.expand(B, S, 1, HD)[:, :, 0]  # (B, S, hd) view
    BLOCK, num_warps = row_settings(HD)
    _gather_rotary_kernel[(B * K,)](
        cos3, sin3, idx, cos_out, sin_out,
        K, HD,
        *cos3.stride(), *sin3.stride(), *idx.stride(),
        BLOCK=BLOCK, num_warps=num_warps,
    )  # fmt: skip
    return cos_out, sin_out


def gather_rotary(
    cos: torch.Tensor, sin: torch.Tensor, idx: torch.Tensor, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos[b, idx[b]], sin[b, idx[b]]): (1 or B, S, 1, hd) each -> new (B, K, 1, hd) tensors; inputs untouched."""
    check_index(idx, cos.device)
    if resolve_backend(backend, cos.device) == "torch":
        return gather_rotary_torch(cos, sin, idx)
    return _gather_rotary_triton(cos, sin, idx)
