"""Gather kept tokens + FP32 LayerNorm (no affine) + adaLN modulation, in one pass over the kept rows.

Replaces, for Wan's norm1 and norm3, `x.gather(1, idx)` followed by
`(FP32LayerNorm(x_k.float()) * (1 + scale) + shift).type_as(x)`: the kept rows are read once and the
normalised rows written once, instead of a gathered copy being written and read again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import check_index, gather_tokens, jit, kept_row, row_settings, tl
from .dispatch import resolve_backend


@jit
def _gather_norm_modulate_kernel(
    x_ptr, idx_ptr, shift_ptr, scale_ptr, out_ptr,
    K, D, eps,
    stride_xb, stride_xn, stride_xd,
    stride_ib, stride_ik,
    stride_sb, stride_sn, stride_sd,
    stride_cb, stride_cn, stride_cd,
    stride_ob, stride_ok,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One program per kept row (b, k).
    b, k, n = kept_row(idx_ptr, stride_ib, stride_ik, K)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D

    x = tl.load(x_ptr + b * stride_xb + n * stride_xn + cols * stride_xd, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    centred = tl.where(mask, x - mean, 0.0)
    # Biased variance, as F.layer_norm computes it.
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / D + eps)
    # shift/scale arrive expanded to (B, N, D): a (B, 1, D) table has stride_sn = 0, so one load path serves both.
    shift = tl.load(shift_ptr + b * stride_sb + n * stride_sn + cols * stride_sd, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + b * stride_cb + n * stride_cn + cols * stride_cd, mask=mask, other=0.0)
    y = centred * rstd * (1.0 + scale) + shift
    tl.store(out_ptr + b * stride_ob + k * stride_ok + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def gather_norm_modulate_torch(
    x: torch.Tensor, idx: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Reference and CPU path: exactly the ops of WanTransformerBlock's norm1/norm3 lines on the gathered rows."""
    D = x.shape[-1]
    rows = gather_tokens(x, idx).float()  # (B, K, D)
    shift_k = shift if shift.shape[1] == 1 else gather_tokens(shift, idx)  # (B, 1 or K, D)
    scale_k = scale if scale.shape[1] == 1 else gather_tokens(scale, idx)  # (B, 1 or K, D)
    return (F.layer_norm(rows, (D,), eps=eps) * (1 + scale_k) + shift_k).to(x.dtype)  # (B, K, D)


def _gather_norm_modulate_triton(x, idx, shift, scale, eps):
    B, N, D = x.shape
    K = idx.shape[1]
    out = torch.empty(B, K, D, dtype=x.dtype, device=x.device)  # (B, K, D)
    shift = shift.expand(B, N, D)  # (B, N, D) view, stride 0 along N for a (B, 1, D) table
    scale = scale.expand(B, N, D)  # (B, N, D) view
    BLOCK_D, num_warps = row_settings(D)
    _gather_norm_modulate_kernel[(B * K,)](
        x, idx, shift, scale, out,
        K, D, eps,
        *x.stride(), *idx.stride(), *shift.stride(), *scale.stride(), out.stride(0), out.stride(1),
        BLOCK_D=BLOCK_D, num_warps=num_warps,
    )  # fmt: skip
    return out


def gather_norm_modulate(
    x: torch.Tensor,
    idx: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """LayerNorm_fp32_noaffine(x[b, idx[b]]) * (1 + scale) + shift, cast to x.dtype; returns a new (B, K, D) tensor.

    x: (B, N, D), any strides. idx: (B, K) int64. shift, scale: fp32, (B or 1, 1, D) per sample or (B or 1, N, D)
    per token (Wan2.2 TI2V), in which case row idx[b, k] is used. x is not modified.
    """
    check_index(idx, x.device, x.shape[0])
    if resolve_backend(backend, x.device) == "torch":
        return gather_norm_modulate_torch(x, idx, shift, scale, eps)
    return _gather_norm_modulate_triton(x, idx, shift, scale, eps)
