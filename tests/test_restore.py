"""Restoration of skipped tokens: the estimates on hand-made cases, exactness at reduction 0, an unchanged budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate
from vidgen_prune.models import TokenGrid
from vidgen_prune.pruning.restore import Restorer, most_similar_kept, neighbour_mean
from vidgen_prune.pruning.router import RouterNet, model_fingerprint, save_router

PROMPT = "a red circle moving left on a blue background"


def test_similar_gives_each_skipped_token_the_update_of_its_best_match_in_its_frame():
    grid = TokenGrid(frames=2, height=1, width=3)  # frame 0: tokens 0-2, frame 1: tokens 3-5
    hidden = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0],   # token 1 resembles kept 0, not kept 2
                            [0.0, 1.0], [1.0, 0.0], [0.1, 0.9]]])  # tokens 3, 5 resemble each other; 4 is alone
    positions = torch.tensor([[0, 2, 4, 5]])  # kept: 0, 2 (frame 0); 4, 5 (frame 1)
    assert most_similar_kept(hidden, positions, grid).tolist() == [[0, 0, 2, 5, 4, 5]]  # 3 matches 5, not 4

    update = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])  # of kept 0, 2, 4, 5
    rows_in = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, 2))
    video_out = hidden.clone()
    video_out.scatter_(1, positions.unsqueeze(-1).expand(-1, -1, 2), rows_in + update)
    restored = Restorer("similar").apply(video_out, rows_in, hidden, positions, grid)
    expected = video_out.clone()
    expected[0, 1] += update[0, 0]  # token 1 takes token 0's update
    expected[0, 3] += update[0, 3]  # token 3 takes token 5's update
    assert torch.equal(restored, expected)


def test_neighbours_averages_the_kept_updates_of_the_space_time_window():
    grid = TokenGrid(frames=2, height=3, width=3)
    tokens, dim = grid.num_tokens, 1
    kept = torch.zeros(1, tokens, dtype=torch.bool)
    kept[0, [0, 4, 9 + 8]] = True  # frame 0 corner (0,0) and centre (1,1); frame 1 corner (2,2)
    update = torch.zeros(1, tokens, dim)
    update[0, 0], update[0, 4], update[0, 17] = 3.0, 6.0, 12.0
    mean = neighbour_mean(update, kept, grid)[0, :, 0]
    assert mean[1] == pytest.approx((3.0 + 6.0) / 2)  # frame 0 (0,1): sees (0,0) and (1,1)
    assert mean[8] == pytest.approx((6.0 + 12.0) / 2)  # frame 0 (2,2): its frame's centre and frame 1's (2,2)
    assert mean[9 + 4] == pytest.approx((3.0 + 6.0 + 12.0) / 3)  # frame 1 centre: all three in its window
    assert mean[9 + 2] == pytest.approx(6.0)  # frame 1 (0,2): only frame 0's centre is within reach


def test_neighbours_corner_case_counts_every_kept_neighbour():
    grid = TokenGrid(frames=2, height=3, width=3)
    kept = torch.zeros(1, grid.num_tokens, dtype=torch.bool)
    kept[0, [4, 17]] = True
    update = torch.zeros(1, grid.num_tokens, 1)
    update[0, 4], update[0, 17] = 6.0, 12.0
    assert neighbour_mean(update, kept, grid)[0, 8, 0] == pytest.approx(9.0)  # (2,2) of frame 0 sees both
    assert neighbour_mean(update, torch.zeros_like(kept), grid).abs().sum() == 0  # nothing kept: no update


def small_run(model_dir, **overrides) -> GenerateConfig:
    values = dict(prompt=PROMPT, model=str(model_dir), steps=3, frames=9, height=64, width=64, seed=1)
    return GenerateConfig(**{**values, **overrides})


@torch.no_grad()
@pytest.mark.parametrize("restore", ["similar", "neighbours"])
@pytest.mark.parametrize("method", ["tape", "evit", "stavit", "router"])
def test_restoration_keeps_reduction_zero_exact_and_the_budget_unchanged(tiny_pipe, tiny_model_dir, tmp_path,
                                                                          method, restore):
    gen = small_run(tiny_model_dir)
    extra = dict(reselect_every=3) if method == "tape" else {}
    if method == "router":  # an untrained router of this model's shape (the shipped one fits the embedded model)
        fingerprint = model_fingerprint(tiny_pipe.transformer)
        net = RouterNet.seeded(0, num_layers=fingerprint["blocks"], width=fingerprint["width"])
        save_router(net, tmp_path, {"model": fingerprint, "step": 0})
        extra = dict(router=str(tmp_path))
    dense = generate(tiny_pipe, gen, PruneConfig(method="dense"))
    unpruned = generate(tiny_pipe, gen, PruneConfig(method=method, reduction=0.0, restore=restore, **extra))
    assert np.array_equal(dense.frames, unpruned.frames)
    plain = generate(tiny_pipe, gen, PruneConfig(method=method, reduction=0.3, **extra))
    restored = generate(tiny_pipe, gen, PruneConfig(method=method, reduction=0.3, restore=restore, **extra))
    assert restored.kept_fraction == plain.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert not np.array_equal(plain.frames, restored.frames)
    assert restored.flops > plain.flops  # its cost is counted


def test_restore_is_refused_for_merging_and_unknown_names():
    with pytest.raises(ValueError, match="tome merges them"):
        PruneConfig(method="tome", reduction=0.3, restore="similar")
    with pytest.raises(ValueError, match="unknown --restore 'nearest'"):
        PruneConfig(method="tape", reduction=0.3, restore="nearest")
