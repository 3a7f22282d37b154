"""Token skipping on a real (small, random) Wan pipeline: exactness, removal, budgets."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate
from vidgen_prune.models import BlockCall, adapter_for, wan_fused
from vidgen_prune.pruning import make_pruner
from vidgen_prune.pruning.hooks import apply_pruner, remove_pruner
from vidgen_prune.pruning.plan import skip_plan

PROMPT = "a red circle moving left on a blue background"


def small_run(model_dir, **overrides) -> GenerateConfig:
    values = dict(prompt=PROMPT, model=str(model_dir), steps=3, frames=9, height=64, width=64, seed=1)
    return GenerateConfig(**{**values, **overrides})


def transformer_inputs(pipe, seed=0):
    """One transformer call's inputs for the 9-frame 64×64 small run: latents (1, C, 3, 16, 16)."""
    generator = torch.Generator().manual_seed(seed)
    config = pipe.transformer.config
    latents = torch.randn(1, config.in_channels, 3, 16, 16, generator=generator)
    text = torch.randn(1, 8, config.text_dim, generator=generator)
    return dict(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)


@torch.no_grad()
def test_gather_block_scatter_with_every_token_is_bit_identical(tiny_pipe, seeded):
    transformer = tiny_pipe.transformer
    adapter = adapter_for(transformer)
    captured = {}

    def capture(module, args):
        captured.setdefault("args", args)

    handle = adapter.blocks(transformer)[1].register_forward_pre_hook(capture)
    transformer(**transformer_inputs(tiny_pipe))
    handle.remove()
    block = adapter.blocks(transformer)[1]
    call = BlockCall(block, adapter.layout(block), captured["args"], {})
    hidden = call.hidden_states
    plan = skip_plan(torch.arange(hidden.shape[1]).expand(hidden.shape[0], -1))
    rows = plan.gather(hidden)
    rows_out, output = call.run(block, rows, plan.positions)
    assert torch.equal(plan.scatter(hidden, rows, rows_out), block(*captured["args"]))


@torch.no_grad()
@pytest.mark.parametrize("method", ["tape", "evit"])
def test_reduction_zero_is_bit_identical_to_dense(tiny_pipe, method):
    gen = small_run(tiny_pipe.config._name_or_path)
    dense = generate(tiny_pipe, gen, PruneConfig(method="dense"))
    unpruned = generate(tiny_pipe, gen, PruneConfig(method=method, reduction=0.0))
    assert unpruned.kept_fraction == 1.0
    assert np.array_equal(dense.frames, unpruned.frames)


@torch.no_grad()
def test_removing_the_pruner_restores_the_dense_model(tiny_pipe):
    transformer = tiny_pipe.transformer
    inputs = transformer_inputs(tiny_pipe)
    before = transformer(**inputs)[0]
    controller = apply_pruner(transformer, make_pruner(PruneConfig(method="tape", reduction=0.3, reselect_every=3)))
    controller.reset(num_steps=1)
    pruned = transformer(**inputs)[0]
    remove_pruner(transformer)
    after = transformer(**inputs)[0]
    assert controller.log.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert not torch.equal(before, pruned)
    assert torch.equal(before, after)
    assert not hasattr(adapter_for(transformer).blocks(transformer)[0], "_diffusers_hook") or not (
        adapter_for(transformer).blocks(transformer)[0]._diffusers_hook.hooks
    )


@torch.no_grad()
@pytest.mark.parametrize("method", ["tape", "tape-s", "tape-r", "tape-t", "evit"])
def test_pruned_output_differs_from_dense_and_stays_finite(tiny_pipe, method):
    gen = small_run(tiny_pipe.config._name_or_path)
    dense = generate(tiny_pipe, gen, PruneConfig(method="dense"))
    transformer = tiny_pipe.transformer
    inputs = transformer_inputs(tiny_pipe)
    controller = apply_pruner(transformer, make_pruner(PruneConfig(method=method, reduction=0.4, reselect_every=3)))
    controller.reset(num_steps=1)
    velocity = transformer(**inputs)[0]
    remove_pruner(transformer)
    assert torch.isfinite(velocity).all()
    pruned = generate(tiny_pipe, gen, PruneConfig(method=method, reduction=0.4, reselect_every=3))
    assert not np.array_equal(dense.frames, pruned.frames)


@torch.no_grad()
@pytest.mark.parametrize("reduction", [0.2, 0.3, 0.4])
def test_evit_and_tape_spend_the_same_token_budget(tiny_pipe, reduction):
    gen = small_run(tiny_pipe.config._name_or_path, steps=5)
    kept = {
        method: generate(tiny_pipe, gen, PruneConfig(method=method, reduction=reduction, reselect_every=3))
        for method in ("tape", "tape-s", "tape-r", "tape-t", "evit")
    }
    kept = {method: result.kept_fraction for method, result in kept.items()}
    # 192 tokens per forward: whole-token (TAPE) and whole-tokens-per-frame (EViT) rounding moves it by < 0.02
    for method, fraction in kept.items():
        assert fraction == pytest.approx(1.0 - reduction, abs=0.02), (method, kept)


def test_out_of_reach_budget_is_refused_before_running(tiny_pipe):
    blocks = len(adapter_for(tiny_pipe.transformer).blocks(tiny_pipe.transformer))  # 6
    with pytest.raises(ValueError, match="cannot be reached"):
        make_pruner(PruneConfig(method="tape", reduction=0.9, reselect_every=3)).check_budget(blocks)
    with pytest.raises(ValueError, match="out of reach"):
        make_pruner(PruneConfig(method="evit", reduction=0.9)).check_budget(blocks)


@torch.no_grad()
def test_tape_follows_the_highlow_schedule_per_step(tiny_pipe):
    gen = small_run(tiny_pipe.config._name_or_path, steps=5)
    config = PruneConfig(method="tape", reduction=0.3, reselect_every=3, schedule="highlow", schedule_stages=5)
    transformer = tiny_pipe.transformer
    from vidgen_prune.engine import pruned

    with pruned(transformer, config, gen.steps) as controller:
        tiny_pipe(
            prompt=PROMPT, num_frames=9, height=64, width=64, num_inference_steps=5, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    fractions = [kept / total for kept, total in (controller.log.per_step[s] for s in range(5))]
    assert fractions == sorted(fractions)  # pruning relaxes step by step: 0.4 → 0.2
    assert fractions[0] == pytest.approx(0.6, abs=0.02) and fractions[-1] == pytest.approx(0.8, abs=0.02)


@torch.no_grad()
def test_triton_skip_path_matches_the_torch_path(tiny_pipe):
    """The fused Triton skip forward (interpreted on a CPU) computes what gather → block → scatter computes."""
    transformer = tiny_pipe.transformer
    inputs = transformer_inputs(tiny_pipe)
    outputs = {}
    with mock.patch.object(wan_fused, "fused_skip_forward", wraps=wan_fused.fused_skip_forward) as fused:
        for kernels in ("torch", "triton"):
            config = PruneConfig(method="tape", reduction=0.3, reselect_every=3, kernels=kernels)
            apply_pruner(transformer, make_pruner(config), kernels=kernels).reset(num_steps=1)
            outputs[kernels] = transformer(**inputs)[0]
            remove_pruner(transformer)
    assert fused.call_count == 4  # the four pruned blocks of the Triton run; the torch run never calls it
    assert torch.allclose(outputs["triton"], outputs["torch"], atol=1e-4, rtol=1e-4)
