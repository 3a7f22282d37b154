"""Attention received per key: mean over heads and queries of softmax(q kᵀ · scale), without an Sq × N matrix.

TAPE's and EViT's importance score. The Triton path makes two passes over q kᵀ, recomputing the logits instead of
storing them (at Wan2.1-1.3B's 32,760 tokens one head's fp32 Sq × N matrix alone is 4.3 GB):
  1. per query row: running max m and normaliser (online softmax, base 2), O(Sq) floats out;
  2. per key block: column sums of exp2(s - m) / normaliser over the query blocks, O(N) floats out per head.
Frame-local scoring (EViT) restricts each query to the keys of its own frame; with frame-major layouts a frame is a
contiguous segment of the token axis, so both kernels run per segment and never look at other frames' keys.
"""

from __future__ import annotations

import torch

from .common import interpreting, jit, tl, triton
from .dispatch import resolve_backend

# torch reference: at most this many fp32 logits live at once (256 MB); one query chunk is B·H·chunk·N of them.
_REFERENCE_LOGITS_PER_CHUNK = 2**26
_LOG2E = 1.4426950408889634


@jit
def _row_stats_kernel(
    q_ptr, k_ptr, m_ptr, norm_ptr,
    H, SEG_Q, SEG_K, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    # Grid: (segments · query blocks per segment, B · H). A block never straddles two segments (frames).
    blocks_per_seg = tl.cdiv(SEG_Q, BLOCK_M)
    n_seg = tl.num_programs(0) // blocks_per_seg
    seg = tl.program_id(0) // blocks_per_seg
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows_in_seg = (tl.program_id(0) % blocks_per_seg) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows_in_seg < SEG_Q
    rows = seg * SEG_Q + rows_in_seg
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + dims[None, :] * stride_qd,
        mask=row_mask[:, None] & dim_mask[None, :], other=0.0,
    )  # fmt: skip

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    norm = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, SEG_K, BLOCK_N):
        cols_in_seg = start + tl.arange(0, BLOCK_N)
        col_mask = cols_in_seg < SEG_K
        cols = seg * SEG_K + cols_in_seg
        k = tl.load(
            k_ptr + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + dims[None, :] * stride_kd,
            mask=col_mask[:, None] & dim_mask[None, :], other=0.0,
        )  # fmt: skip
        if DOT_IN_FP32:  # see _dot_in_fp32
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        # "ieee" only changes fp32 operands (no TF32 rounding, to honour the fp32 reference); bf16 operands, the
        # production dtype, take the tensor-core path either way.
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N), log2 domain
        s = tl.where(col_mask[None, :], s, float("-inf"))
        # The first key block always holds a valid key, so m is finite from then on and m - m_new is never nan.
        m_new = tl.maximum(m, tl.max(s, axis=1))
        norm = norm * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m = m_new
    stats = bh * (SEG_Q * n_seg) + rows  # m, norm are (B·H, Sq) contiguous
    tl.store(m_ptr + stats, m, mask=row_mask)
    tl.store(norm_ptr + stats, norm, mask=row_mask)


@jit
def _column_sums_kernel(
    q_ptr, k_ptr, m_ptr, norm_ptr, out_ptr,
    H, SEG_Q, SEG_K, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    # Grid: (segments · key blocks per segment, B · H). Each program owns its keys' sums: no atomics, deterministic.
    blocks_per_seg = tl.cdiv(SEG_K, BLOCK_N)
    n_seg = tl.num_programs(0) // blocks_per_seg
    seg = tl.program_id(0) // blocks_per_seg
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    cols_in_seg = (tl.program_id(0) % blocks_per_seg) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols_in_seg < SEG_K
    cols = seg * SEG_K + cols_in_seg
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    k = tl.load(
        k_ptr + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + dims[None, :] * stride_kd,
        mask=col_mask[:, None] & dim_mask[None, :], other=0.0,
    )  # fmt: skip

    acc = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, SEG_Q, BLOCK_M):
        rows_in_seg = start + tl.arange(0, BLOCK_M)
        row_mask = rows_in_seg < SEG_Q
        rows = seg * SEG_Q + rows_in_seg
        q = tl.load(
            q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + dims[None, :] * stride_qd,
            mask=row_mask[:, None] & dim_mask[None, :], other=0.0,
        )  # fmt: skip
        stats = bh * (SEG_Q * n_seg) + rows
        m = tl.load(m_ptr + stats, mask=row_mask, other=0.0)
        norm = tl.load(norm_ptr + stats, mask=row_mask, other=1.0)
        if DOT_IN_FP32:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N), log2 domain
        p = tl.exp2(s - m[:, None]) / norm[:, None]
        acc += tl.sum(tl.where(row_mask[:, None], p, 0.0), axis=0)
    tl.store(out_ptr + bh * (SEG_K * n_seg) + cols, acc / SEG_Q, mask=col_mask)


def _segments(q: torch.Tensor, k: torch.Tensor, tokens_per_frame: int | None) -> int:
    """Number of frames the token axes split into (1 = global scoring); validates the shapes."""
    if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q must be (B, H, Sq, d) and k (B, H, N, d); got {tuple(q.shape)} and {tuple(k.shape)}")
    if tokens_per_frame is None:
        return 1
    if tokens_per_frame <= 0 or k.shape[2] % tokens_per_frame or q.shape[2] % (k.shape[2] // tokens_per_frame):
        raise ValueError(
            f"frame-local scoring needs N = {k.shape[2]} to be a multiple of tokens_per_frame = {tokens_per_frame} "
            f"and Sq = {q.shape[2]} a multiple of the frame count"
        )
    return k.shape[2] // tokens_per_frame


def attention_received_torch(
    q: torch.Tensor, k: torch.Tensor, scale: float | None = None, tokens_per_frame: int | None = None
) -> torch.Tensor:
    """Reference and CPU path: fp32 softmax over query chunks, at most 2**26 logits at a time."""
    frames = _segments(q, k, tokens_per_frame)
    B, H, Sq, d = q.shape
    N = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    qf = q.unflatten(2, (frames, Sq // frames))  # (B, H, F, Sq/F, d)
    kf = k.float().unflatten(2, (frames, N // frames)).transpose(-1, -2)  # (B, H, F, d, N/F)
    received = torch.zeros(B, H, frames, N // frames, dtype=torch.float32, device=k.device)  # (B, H, F, N/F)
    chunk = max(1, _REFERENCE_LOGITS_PER_CHUNK // (B * H * N))
    for start in range(0, Sq // frames, chunk):
        logits = torch.matmul(qf[:, :, :, start : start + chunk].float(), kf) * scale  # (B, H, F, chunk, N/F)
        received += logits.softmax(dim=-1).sum(dim=-2)  # (B, H, F, N/F)
    return (received / (Sq // frames)).mean(dim=1).reshape(B, N)  # (B, N)


def _dot_in_fp32(q: torch.Tensor) -> bool:
    """Upcast the dot operands under the interpreter: triton 3.9's interpreter returns garbage for tl.dot on bf16
    blocks (errors of 3e10 on a 16×16 product of unit normals). bf16 products are exact in fp32, so this is the same
    math the bf16 tensor-core path does on a GPU, where the flag stays off."""
    return interpreting() and q.dtype != torch.float32


def _attention_received_triton(q, k, scale, frames):
    B, H, Sq, d = q.shape
    N = k.shape[2]
    seg_q, seg_k = Sq // frames, N // frames
    # tl.dot needs every block dimension >= 16.
    BLOCK_D = max(16, triton.next_power_of_2(d))
    BLOCK_M = min(64, max(16, triton.next_power_of_2(seg_q)))
    BLOCK_N = min(64, max(16, triton.next_power_of_2(seg_k)))
    qk_scale = scale * _LOG2E  # logits in base 2 so the kernels use exp2
    m = torch.empty(B * H, Sq, dtype=torch.float32, device=q.device)  # (B·H, Sq)
    norm = torch.empty_like(m)  # (B·H, Sq)
    per_head = torch.empty(B * H, N, dtype=torch.float32, device=q.device)  # (B·H, N)
    strides = (*q.stride(), *k.stride())
    meta = dict(HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, DOT_IN_FP32=_dot_in_fp32(q))
    _row_stats_kernel[(frames * triton.cdiv(seg_q, BLOCK_M), B * H)](
        q, k, m, norm, H, seg_q, seg_k, qk_scale, *strides, **meta
    )
    _column_sums_kernel[(frames * triton.cdiv(seg_k, BLOCK_N), B * H)](
        q, k, m, norm, per_head, H, seg_q, seg_k, qk_scale, *strides, **meta
    )
    return per_head.view(B, H, N).mean(dim=1)  # (B, N)


def attention_received(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    *,
    tokens_per_frame: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention each key receives: mean over heads and queries of softmax(q kᵀ · scale), as a new (B, N) fp32 tensor.

    q: (B, H, Sq, d), any query subset (e.g. sampled rows: each row's softmax is still normalised over all N keys).
    k: (B, H, N, d). scale defaults to 1/sqrt(d). Softmax rows sum to 1, so each sample's scores sum to 1 (to F
    when frame-local: 1 per frame).
    tokens_per_frame: None scores globally. Given T, the token axes are frame-major: keys split into F = N / T frames
    of T, queries into F equal frames (Sq must be a multiple of F), and queries of frame f attend only to keys of
    frame f, averaged over those Sq / F queries (EViT's per-frame score).
    """
    frames = _segments(q, k, tokens_per_frame)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if resolve_backend(backend, q.device) == "torch":
        return attention_received_torch(q, k, scale, tokens_per_frame)
    return _attention_received_triton(q, k, scale, frames)
