"""Do causal videos jump where one chunk ends and the next begins?

The change between consecutive frames (mean |Δ| over pixels and channels, [0, 1] scale) is split into the pairs
that straddle a chunk boundary and the pairs inside a chunk. A ratio near 1 means the boundaries are as smooth as
the rest of the video. Compare it with a bidirectional generation cut at the same frames: the VAE alone can make
latent-frame boundaries differ from the frames decoded from one latent frame.
"""

from __future__ import annotations

import numpy as np

from ._video import require_frames, to_float_video


def chunk_first_frames(chunk_latent_frames: list[int], temporal_factor: int) -> list[int]:
    """Video frame index where each chunk after the first begins; Wan's VAE decodes latent frame 0 to one frame
    and every later latent frame to `temporal_factor` frames."""
    starts, latent = [], 0
    for frames in chunk_latent_frames[:-1]:
        latent += frames
        starts.append(1 + (latent - 1) * temporal_factor)
    return starts


def boundary_jump(frames: np.ndarray, boundary_frames: list[int]) -> dict[str, float]:
    """Mean frame-to-frame change into each frame of `boundary_frames` (from the frame before) and into every other
    frame, and their ratio (boundary / within)."""
    video = to_float_video(frames)
    require_frames(video, 2)
    change = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))  # (F-1,): change[i] is frame i → i+1
    into_boundary = np.zeros(len(change), dtype=bool)
    into_boundary[[frame - 1 for frame in boundary_frames]] = True
    if into_boundary.all() or not into_boundary.any():
        raise ValueError("boundary_jump needs frame pairs both across and within chunks")
    boundary, within = float(change[into_boundary].mean()), float(change[~into_boundary].mean())
    return {"boundary": boundary, "within": within, "ratio": boundary / within if within > 0 else float("inf")}
