"""Per-frame fidelity of a pruned video against the dense video of the same seed (PSNR, SSIM).

Both follow the PAB/TeaCache protocol: score every frame on its own, then average over frames.
"""

import cv2
import numpy as np

from ._video import to_float_pair

# A frame identical to its reference has infinite PSNR. Capping every frame at 100 dB keeps the mean finite
# (and the bench JSON valid) while an identical video still reads as the best possible score. 100 dB is an MSE
# of 1e-10, below the smallest non-zero uint8 error on a 480×832 frame (one level on one value: ~109 dB),
# so the cap only merges "identical" with "off by one level in one pixel".
PSNR_CAP_DB = 100.0

# SSIM as in Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1.0.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 1.0) ** 2
SSIM_C2 = (0.03 * 1.0) ** 2


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over frames of per-frame PSNR in dB (data range 1.0), each frame capped at ``PSNR_CAP_DB``."""
    reference, candidate = to_float_pair(reference, candidate)
    mse_per_frame = np.mean(np.square(candidate - reference), axis=(1, 2, 3), dtype=np.float64)  # (F,)
    with np.errstate(divide="ignore"):
        psnr_per_frame = 10.0 * np.log10(1.0 / mse_per_frame)  # (F,), inf where mse == 0
    return float(np.mean(np.minimum(psnr_per_frame, PSNR_CAP_DB)))


def _gaussian_blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)


def _ssim_frame(reference: np.ndarray, candidate: np.ndarray) -> float:
    """SSIM of one (H, W, 3) frame pair, mean over the valid window positions and the three channels."""
    # float64: the variances are differences of near-equal moments; in float32 flat frames get σ² ≈ −4e-8,
    # which moves SSIM by ~6e-5 against C2 = 9e-4.
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    mu_r, mu_c = _gaussian_blur(reference), _gaussian_blur(candidate)  # (H, W, 3)
    var_r = _gaussian_blur(reference * reference) - mu_r**2
    var_c = _gaussian_blur(candidate * candidate) - mu_c**2
    cov = _gaussian_blur(reference * candidate) - mu_r * mu_c
    ssim_map = ((2 * mu_r * mu_c + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_r**2 + mu_c**2 + SSIM_C1) * (var_r + var_c + SSIM_C2)
    )
    # Keep only windows that lie inside the frame ("valid" filtering, as in the reference implementation),
    # so the reflected border never enters the score.
    border = SSIM_WINDOW // 2
    return float(np.mean(ssim_map[border:-border, border:-border]))


def ssim(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over frames of per-frame SSIM, computed per RGB channel and averaged over channels.

    Per channel rather than on luminance, like the common video-metric code (``calculate_ssim``) the
    PAB/TeaCache numbers come from, so colour shifts that keep luminance still count.
    """
    reference, candidate = to_float_pair(reference, candidate)
    if min(reference.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {reference.shape[1:3]}")
    return float(np.mean([_ssim_frame(r, c) for r, c in zip(reference, candidate)]))
