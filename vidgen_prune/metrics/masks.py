"""Statistics of keep masks over the latent token grid."""

import numpy as np


def _skip_set_iou(skipped_a: np.ndarray, skipped_b: np.ndarray) -> np.ndarray:
    """IoU of two stacks of skip sets over their last two axes; an empty union counts as identical (1.0)."""
    intersection = np.count_nonzero(skipped_a & skipped_b, axis=(-2, -1))
    union = np.count_nonzero(skipped_a | skipped_b, axis=(-2, -1))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def adjacent_frame_iou(mask: np.ndarray) -> float:
    """Mean IoU between the *skipped* token sets of consecutive latent frames.

    ``mask`` is bool, True = token kept (computed), shape ``(F, H, W)`` or a stack ``(S, F, H, W)`` (e.g. one per
    layer or step), averaged over all ``S·(F−1)`` frame pairs. The skipped sets are compared, as the TAPE paper
    visualises them: 1.0 means the same spatial sites are skipped in every frame (temporally coherent pruning),
    0.0 means consecutive frames skip disjoint sites. A pair where neither frame skips anything scores 1.0.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"keep mask must be bool (True = kept), got {mask.dtype}")
    if mask.ndim == 3:
        mask = mask[None]
    if mask.ndim != 4 or mask.shape[1] < 2:
        raise ValueError(f"expected a keep mask of shape (F, H, W) or (S, F, H, W) with F >= 2, got {mask.shape}")
    skipped = ~mask  # (S, F, H, W)
    return float(np.mean(_skip_set_iou(skipped[:, :-1], skipped[:, 1:])))  # mean of (S, F-1)
