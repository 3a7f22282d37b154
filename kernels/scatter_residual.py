"""Gated residual added straight into the kept rows of the full sequence, in place.

Replaces Wan's `(x_k.float() + y.float() * gate).type_as(x)` followed by `x.scatter(1, idx, ...)`: the kept rows
of x are read and written once, and no (B, K, D) residual tensor is materialised.
"""

from __future__ import annotations

import torch

from .common import check_index, gather_tokens, jit, kept_row, row_settings, tl
from .dispatch import resolve_backend


@jit
def _scatter_gated_residual_kernel(
    x_ptr, idx_ptr, y_ptr, gate_ptr,
    K, D,
    stride_xb, stride_xn, stride_xd,
    stride_ib, stride_ik,
    stride_yb, stride_yk, stride_yd,
    stride_gb, stride_gn, stride_gd,
    HAS_GATE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One program per kept row; idx rows are unique within a batch row, so no two programs touch the same x row and
    # plain loads/stores suffice (no atomics).
    b, k, n = kept_row(idx_ptr, stride_ib, stride_ik, K)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D

    x_row = x_ptr + b * stride_xb + n * stride_xn + cols * stride_xd
    x = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * stride_yb + k * stride_yk + cols * stride_yd, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        # gate arrives expanded to (B, N, D): stride_gn = 0 for a per-sample (B, 1, D) gate.
        y = y * tl.load(gate_ptr + b * stride_gb + n * stride_gn + cols * stride_gd, mask=mask, other=0.0)
    tl.store(x_row, (x + y).to(x_ptr.dtype.element_ty), mask=mask)


def scatter_gated_residual_torch_(
    x: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference and CPU path, in place on x; the same ops, in the same order, as WanTransformerBlock's residuals."""
    D = x.shape[-1]
    index = idx[:, :, None].expand(-1, -1, D)  # (B, K, D)
    update = y.float() if gate is None else y.float() * (gate if gate.shape[1] == 1 else gather_tokens(gate, idx))
    return x.scatter_(1, index, (x.gather(1, index).float() + update).to(x.dtype))


def _scatter_gated_residual_triton_(x, idx, y, gate):
    B, N, D = x.shape
    K = idx.shape[1]
    has_gate = gate is not None
    # Without a gate the kernel never reads gate_ptr; y stands in so the launch signature stays fixed.
    gate = gate.expand(B, N, D) if has_gate else y  # (B, N, D) view, stride 0 along N for a (B, 1, D) gate
    BLOCK_D, num_warps = row_settings(D)
    _scatter_gated_residual_kernel[(B * K,)](
        x, idx, y, gate,
        K, D,
        *x.stride(), *idx.stride(), *y.stride(), *gate.stride(),
        HAS_GATE=has_gate, BLOCK_D=BLOCK_D, num_warps=num_warps,
    )  # fmt: skip
    return x


def scatter_gated_residual_(
    x: torch.Tensor,
    idx: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """In place: x[b, idx[b, k]] = (x[b, idx[b, k]].float() + y[b, k].float() * gate).to(x.dtype); returns x.

    x: (B, N, D), any strides, modified in place; rows not in idx are untouched (bit for bit). idx: (B, K) int64,
    unique within each batch row (duplicates race on the GPU). y: (B, K, D). gate: fp32 (B or 1, 1, D), or per token
    (B or 1, N, D) read at row idx[b, k], or None for a plain residual (Wan's cross-attention).
    """
    check_index(idx, x.device, x.shape[0])
    if resolve_backend(backend, x.device) == "torch":
        return scatter_gated_residual_torch_(x, idx, y, gate)
    return _scatter_gated_residual_triton_(x, idx, y, gate)
