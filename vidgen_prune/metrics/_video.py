"""The one place where metric inputs are validated and converted.

Every metric takes videos as ``(F, H, W, 3)`` arrays, either uint8 in [0, 255] or float in [0, 1], and works on
float32 in [0, 1]: float32 rather than float64 because an 81×480×832 Wan video is already 390 MB at 32 bits.
"""

import numpy as np


def to_float_video(video: np.ndarray) -> np.ndarray:
    """Return ``video`` as float32 in [0, 1], shape ``(F, H, W, 3)``; uint8 is divided by 255."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video of shape (F, H, W, 3), got {video.shape}")
    if video.dtype == np.uint8:
        return video.astype(np.float32) / 255.0
    if not np.issubdtype(video.dtype, np.floating):
        raise TypeError(f"expected uint8 or float video, got {video.dtype}")
    if video.size and (video.min() < 0.0 or video.max() > 1.0):
        raise ValueError(f"float video must lie in [0, 1], got [{video.min()}, {video.max()}]")
    return video.astype(np.float32, copy=False)


def to_float_pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert a reference/candidate pair, which must have the same shape."""
    reference, candidate = to_float_video(reference), to_float_video(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"reference {reference.shape} and candidate {candidate.shape} differ in shape")
    return reference, candidate


def require_frames(video: np.ndarray, minimum: int) -> None:
    """Temporal metrics compare consecutive frames, so they need at least two."""
    if video.shape[0] < minimum:
        raise ValueError(f"need at least {minimum} frames, got {video.shape[0]}")
