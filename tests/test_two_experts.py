"""Wan2.2 A14B's two experts under one controller: both pruned, one step counter, one budget, exact removal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dummies import wan_two_experts
from typer.testing import CliRunner

from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate, load_pipeline

PROMPT = "a red circle moving left on a blue background"
STEPS = 6  # boundary_ratio 0.5 of UniPC's shifted schedule: the first 4 steps on transformer, 2 on transformer_2


@pytest.fixture(scope="module")
def two_experts_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_a14b")
    wan_two_experts(boundary_ratio=0.5).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_experts(two_experts_dir):
    return load_pipeline(str(two_experts_dir))


def small_run(model_dir, **overrides) -> GenerateConfig:
    values = dict(prompt=PROMPT, model=str(model_dir), steps=STEPS, frames=9, height=64, width=64, seed=1,
                  max_sequence_length=16)
    return GenerateConfig(**{**values, **overrides})


@torch.no_grad()
def test_both_experts_are_pruned_and_the_budget_spans_them(two_experts, two_experts_dir):
    gen = small_run(two_experts_dir)
    result = generate(two_experts, gen, PruneConfig(method="tape", reduction=0.3, reselect_every=3))
    high, low = result.denoiser_calls
    assert high > 0 and low > 0 and high + low == result.transformer_calls == 2 * STEPS  # CFG: two calls a step
    assert result.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert result.flop_bound_speedup > 1.2  # FLOPs summed over both experts


@torch.no_grad()
def test_the_schedule_follows_the_pipelines_step_across_the_experts(two_experts, two_experts_dir):
    """HighLow prunes hardest at the first step and least at the last, whichever expert runs it: a second expert
    that restarted its own step counter would prune its late steps as if they were the noisiest."""
    from vidgen_prune.api import apply_config

    gen = small_run(two_experts_dir)
    config = PruneConfig(method="tape", reduction=0.3, reselect_every=3, schedule_stages=STEPS)
    seen = []
    hook = two_experts.transformer_2.register_forward_pre_hook(lambda module, args: seen.append(module))
    with apply_config(two_experts, config) as handle:
        two_experts(**handle.controller.adapter.pipeline_kwargs(gen, _info(two_experts)), output_type="latent",
                    generator=torch.Generator().manual_seed(0))
    hook.remove()
    per_step = handle.controller.log.per_step
    assert sorted(per_step) == list(range(STEPS)) and seen
    kept = [per_step[step][0] / per_step[step][1] for step in range(STEPS)]
    assert all(later > earlier for earlier, later in zip(kept, kept[1:])), kept


def _info(pipe):
    from vidgen_prune.models import describe_pipeline

    return describe_pipeline(pipe)


@torch.no_grad()
def test_reduction_zero_is_bit_identical_and_removal_restores_both_experts(two_experts, two_experts_dir):
    gen = small_run(two_experts_dir, steps=4)
    dense = generate(two_experts, gen, PruneConfig(method="dense"))
    unpruned = generate(two_experts, gen, PruneConfig(method="tape", reduction=0.0, reselect_every=3))
    pruned = generate(two_experts, gen, PruneConfig(method="evit", reduction=0.3))
    after = generate(two_experts, gen, PruneConfig(method="dense"))
    assert np.array_equal(dense.frames, unpruned.frames) and np.array_equal(dense.frames, after.frames)
    assert not np.array_equal(dense.frames, pruned.frames)
    for transformer in (two_experts.transformer, two_experts.transformer_2):
        assert not transformer._diffusers_hook.hooks
        assert all(not block._diffusers_hook.hooks for block in transformer.blocks if hasattr(block, "_diffusers_hook"))


def test_the_cli_sidecar_counts_both_experts(two_experts_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = CliRunner().invoke(app, [
        "generate", "--prompt", PROMPT, "--model", str(two_experts_dir), "--steps", str(STEPS), "--frames", "9",
        "--height", "64", "--width", "64", "--method", "tape", "--reduction", "0.3", "--reselect-every", "3",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["timings"]["transformer_calls"] == 2 * STEPS
    assert min(sidecar["timings"]["denoiser_calls"]) > 0
    assert sidecar["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.02)
