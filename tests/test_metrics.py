"""Metrics on constructed videos whose answer is known in closed form or by construction."""

import math

import cv2
import numpy as np
import pytest

from vidgen_prune.metrics import (
    PSNR_CAP_DB,
    adjacent_frame_iou,
    block_flop_breakdown,
    block_flops,
    flop_bound_speedup,
    forward_flops,
    psnr,
    ssim,
    static_flicker,
    temporal_difference_error,
    video_fidelity,
    warping_error,
    warping_error_ratio,
)
from vidgen_prune.metrics.fidelity import SSIM_C1

FRAMES, HEIGHT, WIDTH = 12, 64, 64

# Wan2.1-T2V-1.3B at 81×480×832 (DESIGN.md)
WAN13_TOKENS, WAN13_DIM, WAN13_FFN, WAN13_LAYERS, WAN13_TEXT = 32_760, 1536, 8960, 30, 512


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random RGB texture stretched to [0, 1]: enough structure for optical flow to lock onto."""
    texture = cv2.GaussianBlur(rng.random((height, width, 3), dtype=np.float32), (0, 0), 1.5)
    return (texture - texture.min()) / (texture.max() - texture.min())


def _translating(texture: np.ndarray, frames: int = FRAMES, width: int = WIDTH) -> np.ndarray:
    """A window sliding 1 px/frame to the right over ``texture``, so the content moves 1 px/frame left."""
    return np.stack([texture[:, f : f + width] for f in range(frames)])  # (F, H, W, 3)


def _half_frozen(rng: np.random.Generator) -> np.ndarray:
    """Left half a frozen texture, right half a texture translating 1 px/frame."""
    video = _translating(_texture(rng, HEIGHT, WIDTH + FRAMES))
    video[:, :, : WIDTH // 2] = _texture(rng, HEIGHT, WIDTH // 2)
    return video


def _with_noise(video: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(video + rng.normal(0.0, sigma, video.shape).astype(np.float32), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- fidelity


def test_identical_videos_score_perfectly(rng):
    video = _half_frozen(rng)
    assert video_fidelity(video, video) == {
        "psnr": PSNR_CAP_DB,
        "ssim": 1.0,
        "tde": 0.0,
        "warp_ratio": 1.0,
        "flicker": static_flicker(video, reference=video),  # the reference's own residual change
    }


def test_degraded_video_scores_worse_on_every_metric(rng):
    reference = _half_frozen(rng)
    scores = video_fidelity(reference, _with_noise(reference, rng, 0.05))
    assert scores["psnr"] < 30.0 and scores["ssim"] < 0.9 and scores["tde"] > 0.01
    assert scores["warp_ratio"] > 1.5 and scores["flicker"] > 0.01


def test_uint8_and_float_inputs_agree(rng):
    reference = (_half_frozen(rng) * 255).round().astype(np.uint8)
    candidate = (_with_noise(reference / 255.0, rng, 0.05) * 255).round().astype(np.uint8)
    assert psnr(reference, candidate) == pytest.approx(psnr(reference / 255.0, candidate / 255.0), abs=1e-4)
    assert ssim(reference, candidate) == pytest.approx(ssim(reference / 255.0, candidate / 255.0), abs=1e-5)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_psnr_of_gaussian_noise_matches_its_variance(rng, sigma):
    # Mid-grey keeps the noise 10σ from the clip at 0 and 1, so the MSE is σ².
    reference = np.full((4, HEIGHT, WIDTH, 3), 0.5, dtype=np.float32)
    assert psnr(reference, _with_noise(reference, rng, sigma)) == pytest.approx(10 * math.log10(1 / sigma**2), abs=0.1)


def test_identical_frame_enters_the_psnr_mean_at_the_cap(rng):
    reference = _half_frozen(rng)[:3]
    candidate = reference.copy()
    candidate[1:] = _with_noise(reference[1:], rng, 0.05)
    assert psnr(reference, candidate) == pytest.approx((PSNR_CAP_DB + 2 * psnr(reference[1:], candidate[1:])) / 3)


def test_ssim_of_flat_frames_is_the_luminance_term():
    # σ = 0 on both sides, so SSIM reduces to (2ab + C1) / (a² + b² + C1).
    dark, light = (np.full((2, 32, 32, 3), level, dtype=np.float32) for level in (0.4, 0.6))
    expected = (2 * 0.4 * 0.6 + SSIM_C1) / (0.4**2 + 0.6**2 + SSIM_C1)
    assert ssim(dark, light) == pytest.approx(expected, abs=1e-5)
    assert ssim(light, dark) == pytest.approx(expected, abs=1e-5)


def test_ssim_falls_as_structure_is_destroyed(rng):
    reference = _half_frozen(rng)
    mild, strong = ssim(reference, _with_noise(reference, rng, 0.02)), ssim(reference, _with_noise(reference, rng, 0.1))
    mirrored = ssim(reference, reference[:, :, ::-1])  # same pixels, different structure
    assert 1.0 > mild > strong and mirrored < 0.5


def test_ssim_rejects_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)))


# ----------------------------------------------------------------------------------------------- temporal


def test_tde_ignores_a_constant_error_but_not_a_flickering_one():
    reference = np.full((5, 16, 16, 3), 0.5, dtype=np.float32)
    offset = reference + 0.1
    flickering = reference.copy()
    flickering[1::2] += 0.1  # every frame pair now changes by ±0.1 where the reference does not change
    assert temporal_difference_error(reference, offset) == pytest.approx(0.0, abs=1e-6)
    assert temporal_difference_error(reference, flickering) == pytest.approx(0.1, abs=1e-6)


def test_translation_warps_well_and_independent_frames_do_not(rng):
    translating = _translating(_texture(rng, HEIGHT, WIDTH + FRAMES))
    independent = np.stack([_texture(rng, HEIGHT, WIDTH) for _ in range(FRAMES)])
    assert warping_error(translating) < 0.1 * warping_error(independent)


def test_shuffling_frames_raises_warping_error(rng):
    # The texture also cross-fades into a second one, so frames far apart in time are not warps of each other.
    first, second = (_texture(rng, HEIGHT, WIDTH + FRAMES) for _ in range(2))
    fade = np.linspace(0.0, 1.0, FRAMES, dtype=np.float32)[:, None, None, None]
    video = (1 - fade) * _translating(first) + fade * _translating(second)
    shuffled = video[rng.permutation(FRAMES)]
    assert warping_error(shuffled) > 2 * warping_error(video)
    assert warping_error_ratio(video, shuffled) > 2


@pytest.mark.parametrize("with_reference", [True, False])
def test_noise_on_a_frozen_region_raises_flicker(rng, with_reference):
    clean = _half_frozen(rng)
    noisy = clean.copy()
    noisy[:, :, : WIDTH // 2] = _with_noise(clean[:, :, : WIDTH // 2], rng, 0.03)
    reference = clean if with_reference else None
    assert static_flicker(noisy, reference) > 0.02 > 0.005 > static_flicker(clean, reference)


def test_flicker_is_undefined_without_static_pixels(rng):
    independent = np.stack([_texture(rng, 16, 16) for _ in range(3)])
    assert math.isnan(static_flicker(independent, reference=independent))


# ----------------------------------------------------------------------------------------------------- masks


def test_adjacent_frame_iou_of_identical_frames_is_one(rng):
    mask = np.repeat(rng.random((1, 6, 8)) < 0.7, 4, axis=0)  # (F, H, W)
    assert adjacent_frame_iou(mask) == 1.0


def test_adjacent_frame_iou_of_disjoint_skip_sets_is_zero():
    mask = np.ones((4, 2, 4), dtype=bool)
    mask[0::2, :, :2] = False  # even frames skip the left half, odd frames the right
    mask[1::2, :, 2:] = False
    assert adjacent_frame_iou(mask) == 0.0


def test_adjacent_frame_iou_hand_computed_and_stacked():
    # Sites a, b, c, d. Skipped: frame 0 {a}, frame 1 {a, b}, frame 2 nothing → IoUs 1/2 and 0/2.
    # (The kept sets would give 2/3 and 2/4, so this also pins down that skipped sets are compared.)
    mask = np.ones((3, 1, 4), dtype=bool)
    mask[0, 0, 0] = False
    mask[1, 0, [0, 1]] = False
    assert adjacent_frame_iou(mask) == pytest.approx((1 / 2 + 0) / 2)
    all_kept = np.ones_like(mask)  # empty unions count as identical
    assert adjacent_frame_iou(all_kept) == 1.0
    assert adjacent_frame_iou(np.stack([mask, all_kept])) == pytest.approx((1 / 4 + 1) / 2)


def test_adjacent_frame_iou_rejects_score_arrays():
    with pytest.raises(TypeError, match="bool"):
        adjacent_frame_iou(np.ones((2, 3, 3)))


# ----------------------------------------------------------------------------------------------------- flops


def test_attention_is_seventy_percent_of_wan_1_3b_flops():
    parts = block_flop_breakdown(WAN13_TOKENS, WAN13_DIM, WAN13_FFN, WAN13_TEXT)
    assert parts["self_attn_core"] / sum(parts.values()) == pytest.approx(0.70, abs=0.01)


def test_block_flops_scale_with_the_kept_tokens():
    dense = block_flop_breakdown(WAN13_TOKENS, WAN13_DIM, WAN13_FFN, WAN13_TEXT)
    half = block_flop_breakdown(WAN13_TOKENS, WAN13_DIM, WAN13_FFN, WAN13_TEXT, kept=WAN13_TOKENS // 2)
    assert half["self_attn_core"] == pytest.approx(dense["self_attn_core"] / 4)
    assert half["ffn"] == pytest.approx(dense["ffn"] / 2)
    assert block_flops(WAN13_TOKENS, WAN13_DIM, WAN13_FFN, WAN13_TEXT) == pytest.approx(sum(dense.values()))
    stack = forward_flops(WAN13_TOKENS, [WAN13_TOKENS] * WAN13_LAYERS, WAN13_DIM, WAN13_FFN, WAN13_TEXT)
    assert stack == pytest.approx(WAN13_LAYERS * sum(dense.values()))


@pytest.mark.parametrize("keep, measured_h100", [(1.0, 1.0), (0.8, 1.37), (0.7, 1.68), (0.6, 2.12)])
def test_flop_bound_sits_just_above_the_measured_speedup(keep, measured_h100):
    # DESIGN.md: a plain gather/scatter skip on an H100 reached ~93 % of the FLOP bound with every layer pruned.
    kept = [round(keep * WAN13_TOKENS)] * WAN13_LAYERS
    bound = flop_bound_speedup(WAN13_TOKENS, kept, WAN13_DIM, WAN13_FFN, WAN13_TEXT)
    assert 0.90 * bound <= measured_h100 <= bound
