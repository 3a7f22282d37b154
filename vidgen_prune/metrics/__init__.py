"""Video quality metrics: numpy videos in, floats out, no downloaded weights.

Videos are ``(F, H, W, 3)`` arrays, uint8 or float in [0, 1]. Reference-based metrics compare a pruned video
with the dense video of the same seed; ``video_fidelity`` returns all of them for the bench.
"""

import numpy as np

from .fidelity import PSNR_CAP_DB, psnr, ssim
from .flops import block_flop_breakdown, block_flops, flop_bound_speedup, forward_flops
from .masks import adjacent_frame_iou
from .temporal import static_flicker, temporal_difference_error, warping_error, warping_error_ratio

__all__ = [
    "PSNR_CAP_DB",
    "adjacent_frame_iou",
    "block_flop_breakdown",
    "block_flops",
    "flop_bound_speedup",
    "forward_flops",
    "psnr",
    "ssim",
    "static_flicker",
    "temporal_difference_error",
    "video_fidelity",
    "warping_error",
    "warping_error_ratio",
]


def video_fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """All reference-based metrics of ``candidate`` against the dense ``reference``, keyed as in the bench table.

    ``psnr`` (dB, ↑), ``ssim`` (↑, ≤ 1), ``tde`` temporal difference error (↓), ``warp_ratio`` candidate /
    reference warping error (↓, 1 = as coherent as dense), ``flicker`` candidate change on reference-static
    pixels (↓).
    """
    return {
        "psnr": psnr(reference, candidate),
        "ssim": ssim(reference, candidate),
        "tde": temporal_difference_error(reference, candidate),
        "warp_ratio": warping_error_ratio(reference, candidate),
        "flicker": static_flicker(candidate, reference=reference),
    }
