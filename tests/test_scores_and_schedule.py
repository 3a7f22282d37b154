"""Schedules, temporal smoothing and selection on hand-made score fields."""

from __future__ import annotations

import pytest
import torch

from vidgen_prune.metrics import adjacent_frame_iou
from vidgen_prune.models import TokenGrid
from vidgen_prune.pruning.schedule import step_rates
from vidgen_prune.pruning.scores import smooth_temporal, top_positions, top_positions_per_frame


def test_highlow_matches_the_paper_over_50_steps():
    rates = step_rates(0.2, 50, "highlow", delta=0.1, stages=5)
    assert rates[:10] == pytest.approx([0.3] * 10)
    assert rates[10:20] == pytest.approx([0.25] * 10)
    assert rates[40:] == pytest.approx([0.1] * 10)
    assert sum(rates) / 50 == pytest.approx(0.2)


@pytest.mark.parametrize("schedule", ["highlow", "constant", "lowhigh"])
@pytest.mark.parametrize("steps", [1, 4, 8, 20, 50])
def test_every_schedule_averages_to_the_target(schedule, steps):
    rates = step_rates(0.3, steps, schedule, delta=0.1, stages=5)
    assert len(rates) == steps
    assert sum(rates) / steps == pytest.approx(0.3)
    order = {"highlow": sorted(rates, reverse=True), "lowhigh": sorted(rates), "constant": rates}[schedule]
    assert rates == order


def test_zero_reduction_stays_dense_at_every_step():
    assert step_rates(0.0, 20, "highlow", delta=0.1) == [0.0] * 20


def test_smoothing_formula_on_a_hand_made_field():
    grid = TokenGrid(frames=3, height=1, width=2)
    scores = torch.tensor([[1.0, 2.0, 3.0, 6.0, 5.0, 0.0]])  # frames [1, 2], [3, 6], [5, 0]
    smoothed = smooth_temporal(scores, grid, alpha=0.25)
    # s̃[0] = s[0]; s̃[f] = 0.25·s[f] + 0.75·s[f−1]
    expected = torch.tensor([[1.0, 2.0, 0.25 * 3 + 0.75 * 1, 0.25 * 6 + 0.75 * 2, 0.25 * 5 + 0.75 * 3, 0.75 * 6]])
    assert torch.allclose(smoothed, expected)
    assert torch.equal(smooth_temporal(scores, grid, alpha=1.0), scores)


def keep_mask(positions: torch.Tensor, grid: TokenGrid):
    mask = torch.zeros(grid.num_tokens, dtype=torch.bool)
    mask[positions[0]] = True
    return mask.view(grid.frames, grid.height, grid.width).numpy()


def test_smoothing_raises_adjacent_frame_mask_iou_on_a_noisy_field():
    grid = TokenGrid(frames=8, height=12, width=12)
    generator = torch.Generator().manual_seed(0)
    structure = torch.rand(grid.height * grid.width, generator=generator).repeat(grid.frames)  # static scene
    noisy = (structure + 0.6 * torch.rand(grid.num_tokens, generator=generator)).unsqueeze(0)  # per-frame jitter
    keep = grid.num_tokens * 6 // 10
    raw_iou = adjacent_frame_iou(keep_mask(top_positions(noisy, keep), grid))
    smooth_iou = adjacent_frame_iou(keep_mask(top_positions(smooth_temporal(noisy, grid, 0.5), keep), grid))
    assert smooth_iou > raw_iou + 0.05


def test_per_frame_selection_takes_equal_counts_from_every_frame():
    scores = torch.tensor([[9.0, 8.0, 7.0, 0.1, 0.2, 0.3]])  # frame 0 scores high everywhere
    positions = top_positions_per_frame(scores, frames=2, count=4)
    assert positions.tolist() == [[0, 1, 4, 5]]
    assert top_positions(scores, 4).tolist() == [[0, 1, 2, 5]]
