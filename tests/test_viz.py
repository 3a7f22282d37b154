"""`vidprune visualize-masks`: tokens mapped back to pixels, the conditional pass picked, MP4 + PNG + IoU written."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune.cli import app
from vidgen_prune.metrics import adjacent_frame_iou
from vidgen_prune.models import TokenGrid
from vidgen_prune.viz import TINT_ALPHA, TokenGeometry, cond_keep_masks, tint_skipped

runner = CliRunner()
SMALL = ["--steps", "2", "--frames", "9", "--height", "64", "--width", "64"]
WAN = TokenGeometry(temporal_factor=4, patch_frames=1, token_px=8)


def test_pixel_frames_map_to_latent_frames_as_in_wans_causal_vae():
    # 17 frames → latent frames [0] [1-4] [5-8] [9-12] [13-16]
    assert WAN.token_frame(17).tolist() == [0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert WAN.grid(17, 128, 128) == TokenGrid(5, 16, 16)
    # patch_t 2: two latents a token, 3 latent frames padded at the front as CogVideoX-1.5's pipeline pads them
    assert TokenGeometry(4, 2, 8).token_frame(9).tolist() == [0] + [1] * 8


def test_geometry_of_the_test_pipeline_matches_its_token_count(tiny_pipe):
    geometry = TokenGeometry.of(tiny_pipe)
    assert geometry == WAN  # VAE ×4 in time and space, patch (1, 2, 2)
    assert geometry.grid(9, 64, 64).num_tokens == 3 * 8 * 8


def test_a_skipped_token_tints_exactly_its_pixel_square_in_its_frames():
    frames = np.full((9, 64, 64, 3), 100, dtype=np.uint8)
    keep = np.ones((3, 8, 8), dtype=bool)
    keep[1, 0, 1] = False  # latent frame 1 = pixel frames 1-4; row 0, column 1 = pixels [0:8, 8:16]
    tinted = tint_skipped(frames, keep, WAN)
    changed = np.any(tinted != frames, axis=-1)  # (F, H, W)
    expected = np.zeros_like(changed)
    expected[1:5, 0:8, 8:16] = True
    assert np.array_equal(changed, expected)
    assert tinted[1, 0, 8, 0] == round((1 - TINT_ALPHA) * 100 + TINT_ALPHA * 255)


def test_the_conditional_pass_is_the_first_call_of_each_step():
    grid = TokenGrid(2, 1, 2)
    masks = [
        (0, 0, 1, torch.tensor([[0, 1, 2]])),  # step 0, conditional
        (0, 1, 1, torch.tensor([[3]])),  # step 0, unconditional
        (1, 2, 1, torch.tensor([[1, 3]])),  # step 1, conditional
        (1, 2, 4, torch.tensor([[0]])),
        (1, 3, 1, torch.tensor([[0]])),
    ]
    keep = cond_keep_masks(masks, grid)
    assert sorted(keep) == [(0, 1), (1, 1), (1, 4)]
    assert keep[0, 1].tolist() == [[[True, True]], [[True, False]]]
    assert keep[1, 1].tolist() == [[[False, True]], [[False, True]]]


def visualize(tiny_model_dir, out, *flags):
    args = ["visualize-masks", "--prompt", "a red circle moving left", "--method", "tape", "--compare", "evit",
            "--reduction", "0.3", "--model", tiny_model_dir, *SMALL, "--out", out, *flags]
    return runner.invoke(app, list(map(str, args)))


def test_visualize_masks_writes_mp4_and_png_and_reports_iou(tiny_model_dir, tiny_pipe, tmp_path):
    from vidgen_prune.config import GenerateConfig, PruneConfig
    from vidgen_prune.engine import generate

    png = tmp_path / "masks.png"
    result = visualize(tiny_model_dir, png, "--layer", "2", "--step", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [m["method"] for m in summary["methods"]] == ["tape", "evit"]

    video = iio.imread(png.with_suffix(".mp4"), index=None)  # (F, H, W, 3): two 256-px panels, a 16-px gap
    assert video.shape == (9, 32 + 256, 2 * 256 + 16, 3)
    assert iio.imread(png).ndim == 3

    # the reported IoU is the mask of block 2 in step 1's conditional pass, recomputed here from the records
    for method in summary["methods"]:
        run = generate(tiny_pipe, GenerateConfig(prompt="a red circle moving left", steps=2, frames=9, height=64,
                                                 width=64), PruneConfig(method=method["method"], reduction=0.3,
                                                                        reselect_every=10), record_masks=True)
        first_call = min(call for step, call, _, _ in run.masks if step == 1)
        (positions,) = [p for step, call, layer, p in run.masks if (step, call, layer) == (1, first_call, 2)]
        keep = np.zeros(3 * 8 * 8, dtype=bool)
        keep[positions[0]] = True
        assert method["adjacent_frame_iou"] == pytest.approx(adjacent_frame_iou(keep.reshape(3, 8, 8)))
        assert method["skipped_fraction"] == pytest.approx(1 - keep.mean())

    table = visualize(tiny_model_dir, tmp_path / "again.png", "--layer", "2", "--step", "1")
    assert table.exit_code == 0, table.output
    assert "IoU" in table.output and f"{summary['methods'][1]['adjacent_frame_iou']:.3f}" in table.output


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--layer", "6", "--step", "0"], "--layer must be in [0, 6)"),
        (["--layer", "1", "--step", "2"], "--step must be in [0, 2)"),
        (["--layer", "1", "--step", "0", "--frames", "1"], "adjacent-frame IoU needs two"),
        (["--layer", "1", "--step", "0", "--compare", "nope"], "unknown method 'nope'"),
    ],
)
def test_bad_positions_are_refused_before_any_output(tiny_model_dir, tmp_path, flags, fragment):
    png = tmp_path / "masks.png"
    result = visualize(tiny_model_dir, png, *flags)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_not_a_png_is_refused(tiny_model_dir, tmp_path):
    result = visualize(tiny_model_dir, tmp_path / "masks.jpg", "--layer", "1", "--step", "0")
    assert result.exit_code == 2 and "--out must be a .png path" in result.output
