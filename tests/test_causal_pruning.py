"""Pruning inside causal chunks: exact at reduction 0, the budget over the whole generation, the chunk's schedule,
full-width keys/values in the cache, restoration, FLOPs with the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidgen_prune.causal.attention import STATE_ATTRIBUTE, rotate
from vidgen_prune.causal.config import CausalConfig
from vidgen_prune.causal.sampler import generate_causal
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.metrics.flops import block_flops
from vidgen_prune.pruning import METHODS
from vidgen_prune.pruning.router import RouterNet, model_fingerprint, save_router

GEN = GenerateConfig(prompt="a red circle moving left", frames=9, height=64, width=64, guidance=4.0,
                     max_sequence_length=8)  # 3 latent frames of 8×8 tokens
CAUSAL = CausalConfig(chunk_frames=2, chunk_steps=4)  # chunks of 128 and 64 tokens, one context pass


@pytest.fixture(scope="module")
def router_dir(tiny_pipe, tmp_path_factory):
    """An untrained router of the test model's shape (the shipped ones fit the embedded models)."""
    fingerprint = model_fingerprint(tiny_pipe.transformer)
    folder = tmp_path_factory.mktemp("router")
    save_router(RouterNet.seeded(0, num_layers=fingerprint["blocks"], width=fingerprint["width"]), folder,
                {"model": fingerprint, "step": 0})
    return str(folder)


def config(method: str, reduction: float, router_dir: str, **options) -> PruneConfig:
    extra = {"router": router_dir} if method == "router" else {}
    return PruneConfig(method=method, reduction=reduction, reselect_every=3, **extra, **options)


@pytest.fixture(scope="module")
def dense(tiny_pipe):
    return generate_causal(tiny_pipe, GEN, CAUSAL)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_is_exact_at_reduction_zero_and_spends_the_budget_at_0_3(tiny_pipe, dense, router_dir, method):
    unpruned = generate_causal(tiny_pipe, GEN, CAUSAL, config(method, 0.0, router_dir))
    assert np.array_equal(unpruned.frames, dense.frames) and unpruned.kept_fraction == 1.0
    pruned = generate_causal(tiny_pipe, GEN, CAUSAL, config(method, 0.3, router_dir))
    if method == "dense":
        assert np.array_equal(pruned.frames, dense.frames)
        return
    # over every call of the generation, both chunks' denoising steps and the context pass
    assert pruned.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert not np.array_equal(pruned.frames, dense.frames)
    assert pruned.flop_bound_speedup > 1.2


def spy_on_the_pruner(pipe):
    """on_call that records the (step, num_steps) every forward of the generation hands the pruner."""
    seen = []

    def on_call(call):
        pruner = pipe.transformer._vidprune_controller.pruner
        if not hasattr(pruner, "_spied"):
            start = pruner.start_forward
            pruner.start_forward = lambda info: (seen.append((info.step, info.num_steps)), start(info))
            pruner._spied = True

    return seen, on_call


def test_the_chunks_steps_drive_the_schedule_and_the_context_pass_runs_at_the_mean_rate(tiny_pipe, router_dir):
    seen, on_call = spy_on_the_pruner(tiny_pipe)
    result = generate_causal(tiny_pipe, GEN, CAUSAL, config("router", 0.3, router_dir), on_call=on_call)
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (0, 1), (0, 4), (1, 4), (2, 4), (3, 4)]
    assert [call.context for call in result.calls] == [False] * 4 + [True] + [False] * 4


def test_the_router_prunes_noisy_chunk_steps_more(tiny_pipe, router_dir):
    """Per-step offsets over the chunk's 4 steps (−0.3, −0.1, +0.1, +0.3): the kept fraction rises step by step."""
    from vidgen_prune.pruning.router import step_offsets

    assert step_offsets(CAUSAL.chunk_steps).tolist() == pytest.approx([-0.3, -0.1, 0.1, 0.3])
    kept = []

    def on_frames(chunk, frames):
        if chunk == 0:
            per_step = tiny_pipe.transformer._vidprune_controller.log.per_step
            kept.extend(per_step[step][0] / per_step[step][1] for step in range(CAUSAL.chunk_steps + 1))

    generate_causal(tiny_pipe, GEN, CAUSAL, config("router", 0.3, router_dir), on_frames=on_frames)
    denoising, context = kept[:-1], kept[-1]
    assert all(a < b for a, b in zip(denoising, denoising[1:])), denoising
    assert np.mean(denoising) == pytest.approx(0.7, abs=0.02) and context == pytest.approx(0.7, abs=0.02)


def block_inputs_on_context_passes(pipe):
    """Every block's full-width input (hidden_states, temb, rotary) on each context pass, in call order."""
    captured, handles = [], []
    for block in pipe.transformer.blocks:
        def capture(module, args, layer=len(handles)):
            if getattr(pipe.transformer, STATE_ATTRIBUTE).writing:
                captured.append((layer, [arg.clone() if torch.is_tensor(arg) else arg for arg in args]))
        handles.append(block.register_forward_pre_hook(capture))
    return captured, handles


def expected_key_value(block, hidden, text, temb, rotary):
    """Wan's self-attention key and value from a block input, written out as diffusers' block computes them."""
    shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
    normed = (block.norm1(hidden.float()) * (1 + scale) + shift).type_as(hidden)  # (B, N, D)
    attn = block.attn1
    key = attn.norm_k(attn.to_k(normed)).unflatten(2, (attn.heads, -1))  # (B, N, heads, d)
    return rotate(key, *rotary), attn.to_v(normed).unflatten(2, (attn.heads, -1))


@pytest.mark.parametrize("method", ["tape", "evit", "tome", "router"])
def test_the_cache_holds_full_width_keys_and_values_of_every_token_of_every_cached_chunk(tiny_pipe, router_dir,
                                                                                        method):
    causal = CausalConfig(chunk_frames=1, chunk_steps=2)  # 3 chunks, 2 context passes
    captured, handles = block_inputs_on_context_passes(tiny_pipe)
    final_cache = []

    def on_frames(chunk, frames):
        if chunk == 2:  # after the last context pass: every cached chunk is in
            final_cache.extend((c.key.clone(), c.value.clone(), list(c.frames))
                               for c in getattr(tiny_pipe.transformer, STATE_ATTRIBUTE).caches)

    try:
        result = generate_causal(tiny_pipe, GEN, causal, config(method, 0.4, router_dir), on_frames=on_frames,
                                 record_masks=True)
    finally:
        for handle in handles:
            handle.remove()
    context_calls = {call.call for call in result.calls if call.context}
    pruned_layers = {(call, layer) for _, call, layer, positions in result.masks if call in context_calls
                     and positions.shape[1] < result.tokens_per_frame}
    assert len({layer for _, layer in pruned_layers}) >= 2  # the context passes really were pruned
    layers = len(tiny_pipe.transformer.blocks)
    assert len(captured) == 2 * layers
    for layer, (key, value, frames) in enumerate(final_cache):
        assert frames == [0, 1] and key.shape[1] == 2 * result.tokens_per_frame  # every token of both chunks
        inputs = [args for captured_layer, args in captured if captured_layer == layer]
        expected = [expected_key_value(tiny_pipe.transformer.blocks[layer], *args) for args in inputs]
        torch.testing.assert_close(key, torch.cat([k for k, _ in expected], dim=1), atol=1e-5, rtol=0)
        torch.testing.assert_close(value, torch.cat([v for _, v in expected], dim=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("restore", ["similar", "neighbours"])
def test_restoration_works_inside_chunks(tiny_pipe, dense, restore):
    unpruned = generate_causal(tiny_pipe, GEN, CAUSAL, PruneConfig(method="tape", reduction=0.0, restore=restore))
    assert np.array_equal(unpruned.frames, dense.frames)
    plain = generate_causal(tiny_pipe, GEN, CAUSAL, PruneConfig(method="stavit", reduction=0.3))
    restored = generate_causal(tiny_pipe, GEN, CAUSAL, PruneConfig(method="stavit", reduction=0.3, restore=restore))
    assert restored.kept_fraction == plain.kept_fraction
    assert not np.array_equal(restored.frames, plain.frames)


def test_flops_count_the_attention_to_the_cache(tiny_pipe, dense):
    transformer = tiny_pipe.transformer
    config_ = transformer.config
    dim, layers, per_frame = config_.num_attention_heads * config_.attention_head_dim, config_.num_layers, 64
    expected = 0.0
    for call in dense.calls:
        tokens, cached = len(call.frames) * per_frame, call.frames.start * per_frame  # no window: every earlier frame
        block = block_flops(tokens, dim, config_.ffn_dim, GEN.max_sequence_length) + 4.0 * tokens * cached * dim
        expected += layers * block
    assert dense.dense_flops == pytest.approx(expected) and dense.flops == pytest.approx(expected)
