"""Keep masks of a causal generation over the whole video: each chunk's mask placed at the chunk's latent frames."""

from __future__ import annotations

import numpy as np


def video_keep_masks(masks: list, calls: list, grid) -> dict[tuple[int, int], np.ndarray]:
    """(step, layer) → keep mask (B, F, H, W) bool over the video's F latent frames, True = computed: every chunk's
    call at chunk step `step` (the context pass: step = steps per chunk) puts its mask at the chunk's frames; a chunk
    whose block ran dense there keeps every token. `masks` holds the (step, call, layer, positions (B, K)) records of
    a generation (`record_masks=True`), `calls` its `ChunkCall`s, `grid` a chunk's token grid (height, width)."""
    frames, per_frame = calls[-1].frames.stop, grid.tokens_per_frame
    keep: dict[tuple[int, int], np.ndarray] = {}
    for step, call, layer, positions in masks:
        chunk = calls[call].frames
        if (step, layer) not in keep:
            keep[step, layer] = np.ones((positions.shape[0], frames, grid.height, grid.width), dtype=bool)
        computed = np.zeros((positions.shape[0], len(chunk) * per_frame), dtype=bool)  # (B, f·H·W)
        np.put_along_axis(computed, positions.numpy(), True, axis=1)
        keep[step, layer][:, chunk.start : chunk.stop] = computed.reshape(-1, len(chunk), grid.height, grid.width)
    return keep
