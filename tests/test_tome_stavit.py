"""ToMe and STA-ViT: merge/unmerge algebra, the budget they spend, and that they really change the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate
from vidgen_prune.models import TokenGrid
from vidgen_prune.pruning import make_pruner
from vidgen_prune.pruning.stavit import redundancy
from vidgen_prune.pruning.tome import merge_plan

PROMPT = "a red circle moving left on a blue background"
GRID = TokenGrid(frames=3, height=4, width=6)  # 72 tokens, 6 destinations per frame


def small_run(model_dir, **overrides) -> GenerateConfig:
    values = dict(prompt=PROMPT, model=str(model_dir), steps=3, frames=9, height=64, width=64, seed=1)
    return GenerateConfig(**{**values, **overrides})


def test_tome_without_merging_is_the_identity(seeded):
    hidden = torch.randn(2, GRID.num_tokens, 8)  # (B, N, D)
    plan = merge_plan(hidden, GRID, keep=GRID.num_tokens)
    rows = plan.gather(hidden)
    assert torch.equal(plan.positions, torch.arange(GRID.num_tokens).expand(2, -1))
    assert torch.equal(rows, hidden)
    rows_out = torch.randn_like(rows)
    torch.testing.assert_close(plan.scatter(hidden, rows, rows_out), rows_out)


def test_tome_merges_copies_first_and_gives_a_group_one_update(seeded):
    hidden = torch.randn(1, GRID.num_tokens, 8)  # (B, N, D)
    # make the token right of each destination (h even, w even → w + 1) a scaled copy of it: cosine 1
    copies = [f * 24 + h * 6 + w + 1 for f in range(3) for h in (0, 2) for w in (0, 2, 4)]
    for position in copies:
        hidden[0, position] = 2.0 * hidden[0, position - 1]
    plan = merge_plan(hidden, GRID, keep=GRID.num_tokens - len(copies))
    kept = set(plan.positions[0].tolist())
    assert kept.isdisjoint(copies)  # the 18 perfect matches merge before any other pair
    rows = plan.gather(hidden)
    destination_row = {p: i for i, p in enumerate(plan.positions[0].tolist())}
    torch.testing.assert_close(rows[0, destination_row[0]], 1.5 * hidden[0, 0])  # mean of x and 2x
    update = torch.randn_like(rows)
    out = plan.scatter(hidden, rows, rows + update)
    for position in copies:  # a merged token and its destination get the same update
        group_update = update[0, destination_row[position - 1]]  # (D,)
        torch.testing.assert_close(out[0, position] - hidden[0, position], group_update)
        torch.testing.assert_close(out[0, position - 1] - hidden[0, position - 1], group_update)


def test_stavit_redundancy_marks_static_weak_tokens():
    frame = torch.randn(1, 1, GRID.tokens_per_frame, 8)
    hidden = frame.repeat(1, GRID.frames, 1, 1).flatten(1, 2).clone()  # (1, N, 8): a static clip
    strongest = hidden[0, :, :].norm(dim=-1).argmax() % GRID.tokens_per_frame
    scores = redundancy(hidden, GRID).view(GRID.frames, -1)  # (F, S)
    assert torch.all(scores[0] == 0)  # the first frame has nothing to repeat
    assert torch.all(scores[1:, strongest] == 0)  # the strongest token is not weak
    assert scores[1:].max() > 0.5
    hidden[0, GRID.tokens_per_frame + 3] = -hidden[0, 3]  # a token that flips between frames 0 and 1
    assert redundancy(hidden, GRID)[0, GRID.tokens_per_frame + 3] == 0


@torch.no_grad()
@pytest.mark.parametrize("reduction", [0.2, 0.3, 0.4])
def test_tome_stavit_tape_evit_spend_the_same_budget(tiny_pipe, reduction):
    gen = small_run(tiny_pipe.config._name_or_path, steps=5)
    kept = {
        method: generate(tiny_pipe, gen, PruneConfig(method=method, reduction=reduction, reselect_every=3),
                         decode=False).kept_fraction
        for method in ("tome", "stavit", "tape", "evit")
    }
    # 192 tokens per forward: rounding K to whole tokens (per frame for EViT) moves the fraction by < 0.02
    for method, fraction in kept.items():
        assert fraction == pytest.approx(1.0 - reduction, abs=0.02), (method, kept)


@torch.no_grad()
@pytest.mark.parametrize("method", ["tome", "stavit"])
def test_new_methods_differ_from_dense_and_stay_finite(tiny_pipe, method):
    gen = small_run(tiny_pipe.config._name_or_path)
    dense = generate(tiny_pipe, gen, PruneConfig(method="dense"), decode=False)
    pruned = generate(tiny_pipe, gen, PruneConfig(method=method, reduction=0.4), decode=True)
    assert np.isfinite(pruned.frames).all()
    again_dense = generate(tiny_pipe, gen, PruneConfig(method="dense"))
    assert not np.array_equal(again_dense.frames, pruned.frames)
    assert dense.kept_fraction == 1.0 and pruned.kept_fraction < 1.0


def test_tome_refuses_a_reduction_it_cannot_merge():
    with pytest.raises(ValueError, match="out of reach"):
        make_pruner(PruneConfig(method="tome", reduction=0.8)).check_budget(6)
