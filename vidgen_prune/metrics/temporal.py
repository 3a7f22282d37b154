"""Temporal coherence: does pruning add jitter, break motion, or make static content flicker?

All errors are on the [0, 1] intensity scale, averaged over the three channels.
"""

import cv2
import numpy as np

from ._video import require_frames, to_float_pair, to_float_video

# Forward-backward flow consistency (Sundaram et al. 2010, as used for the warping error of Lai et al. 2018):
# a pixel is occluded when |fw + bw(x + fw)|² ≥ α·(|fw|² + |bw(x + fw)|²) + β.
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5  # px²

# A reference pixel is "static" between two frames when no channel changes by more than this (2.5 uint8 levels:
# above the ±1 level jitter a VAE decode leaves on still content, well below any real motion edge).
STATIC_CHANGE_THRESHOLD = 0.01
# Without a reference, a pixel is static when its own optical flow moves it less than this many pixels.
STATIC_FLOW_PX = 0.5


def temporal_difference_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean |ΔC − ΔR| over all frame pairs, pixels and channels, where Δ is the next-frame minus this-frame change.

    Unlike PSNR it ignores an error that is constant in time and only sees errors that change frame to frame.
    """
    reference, candidate = to_float_pair(reference, candidate)
    require_frames(reference, 2)
    return float(np.mean(np.abs(np.diff(candidate, axis=0) - np.diff(reference, axis=0))))


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
    """DIS optical flow wants 8-bit single-channel frames."""
    return cv2.cvtColor(np.round(frame * 255.0).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))


def _sample(image: np.ndarray, flow: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Backward warp: ``out(x) = image(x + flow(x))``, bilinear."""
    grid_x, grid_y = grid
    return cv2.remap(
        image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


class _FlowPairs:
    """Forward flows t → t+1 (and, on request, backward flows t+1 → t) of one video, computed once."""

    def __init__(self, video: np.ndarray):
        self._gray = [_gray_uint8(frame) for frame in video]
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def forward(self, t: int) -> np.ndarray:
        return self._dis.calc(self._gray[t], self._gray[t + 1], None)  # (H, W, 2), x then y

    def backward(self, t: int) -> np.ndarray:
        return self._dis.calc(self._gray[t + 1], self._gray[t], None)  # (H, W, 2)


def warping_error(video: np.ndarray) -> float:
    """Mean |I_t − warp(I_{t+1})| over non-occluded pixels of all consecutive pairs (lower = more coherent).

    Frame t+1 is backward-warped onto frame t with the video's own DIS flow t → t+1. Pixels that fail the
    forward-backward consistency check, or whose flow leaves the frame, are occluded and excluded. Errors are
    pooled over all pairs; NaN if no pixel of any pair is valid.
    """
    video = to_float_video(video)
    require_frames(video, 2)
    height, width = video.shape[1:3]
    grid = _pixel_grid(height, width)
    flows = _FlowPairs(video)
    error_sum, valid_count = 0.0, 0
    for t in range(video.shape[0] - 1):
        forward, backward = flows.forward(t), flows.backward(t)  # (H, W, 2) each
        backward_at_target = _sample(backward, forward, grid)  # (H, W, 2): bw flow at x + fw(x)
        round_trip = np.sum((forward + backward_at_target) ** 2, axis=-1)  # (H, W)
        magnitude = np.sum(forward**2, axis=-1) + np.sum(backward_at_target**2, axis=-1)  # (H, W)
        target_x, target_y = grid[0] + forward[..., 0], grid[1] + forward[..., 1]
        inside = (target_x >= 0) & (target_x <= width - 1) & (target_y >= 0) & (target_y <= height - 1)
        valid = inside & (round_trip < CONSISTENCY_ALPHA * magnitude + CONSISTENCY_BETA)  # (H, W)
        warped = _sample(video[t + 1], forward, grid)  # (H, W, 3)
        abs_error = np.mean(np.abs(video[t] - warped), axis=-1)  # (H, W)
        error_sum += float(np.sum(abs_error[valid]))
        valid_count += int(np.count_nonzero(valid))
    return error_sum / valid_count if valid_count else float("nan")


def warping_error_ratio(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Candidate's warping error divided by the reference's: > 1 means pruning made motion less coherent.

    1.0 when both are exactly zero; inf when only the reference is (a perfectly still reference).
    """
    reference_error, candidate_error = warping_error(reference), warping_error(candidate)
    if reference_error == 0.0:
        return 1.0 if candidate_error == 0.0 else float("inf")
    return candidate_error / reference_error


def static_flicker(video: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Mean |V_{t+1} − V_t| over pixels that should not change between t and t+1 (lower = steadier).

    With a reference, a pixel is static for the pair (t, t+1) when no reference channel changes by more than
    ``STATIC_CHANGE_THRESHOLD``; without one, when the video's own DIS flow moves it less than
    ``STATIC_FLOW_PX`` pixels. NaN if no pixel is static.
    """
    if reference is not None:
        reference, video = to_float_pair(reference, video)
        require_frames(video, 2)
        static = np.max(np.abs(np.diff(reference, axis=0)), axis=-1) < STATIC_CHANGE_THRESHOLD  # (F-1, H, W)
    else:
        video = to_float_video(video)
        require_frames(video, 2)
        flows = _FlowPairs(video)
        static = np.stack(
            [np.hypot(*np.moveaxis(flows.forward(t), -1, 0)) < STATIC_FLOW_PX for t in range(video.shape[0] - 1)]
        )  # (F-1, H, W)
    if not static.any():
        return float("nan")
    change = np.mean(np.abs(np.diff(video, axis=0)), axis=-1)  # (F-1, H, W)
    return float(np.mean(change[static]))
