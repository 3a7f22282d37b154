"""Block-causal attention masks over whole sequences: what the KV cache computes, written as one mask.

A sequence is a run of latent frames, each described by its absolute position, the copy it belongs to and whether
it is context. A frame attends to (a) the frames of its own chunk in its own copy and (b) the context frames of
earlier chunks that a rolling cache of `kv_window` frames (the first `sink_frames` kept) would still hold.

Inference is one clean copy, all context (each chunk's clean pass); teacher forcing appends a noisy copy that is
not context (it sees the clean past and itself, never another noisy chunk); diffusion forcing is one noisy copy,
all context.
"""

from __future__ import annotations

import torch


def block_causal_frame_mask(
    positions: torch.Tensor,
    copies: torch.Tensor,
    context: torch.Tensor,
    chunk_frames: int,
    kv_window: int | None = None,
    sink_frames: int = 0,
) -> torch.Tensor:
    """(F, F) bool, True where query frame i may attend key frame j; inputs are (F,) per input latent frame."""
    chunk = positions // chunk_frames  # (F,)
    same_chunk = (chunk[:, None] == chunk[None, :]) & (copies[:, None] == copies[None, :])  # (F, F)
    earlier = context[None, :] & (chunk[None, :] < chunk[:, None])  # (F, F)
    if kv_window is not None:
        # the cache at chunk c holds the sink frames and the last (window - sink) frames before c's first frame
        oldest_recent = chunk[:, None] * chunk_frames - (kv_window - sink_frames)  # (F, 1)
        earlier &= (positions[None, :] < sink_frames) | (positions[None, :] >= oldest_recent)
    return same_chunk | earlier


def token_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """The frame mask (F, F) widened to tokens (F·T, F·T), frame-major as Wan lays tokens out."""
    return frame_mask.repeat_interleave(tokens_per_frame, dim=0).repeat_interleave(tokens_per_frame, dim=1)
