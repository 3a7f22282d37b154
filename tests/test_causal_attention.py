"""Block-causal attention: the KV cache path against one masked forward, eviction, rotary offsets, round trip."""

from __future__ import annotations

import pytest
import torch

from vidgen_prune.causal.attention import apply_causal, causal_attention, remove_causal
from vidgen_prune.causal.config import CausalConfig
from vidgen_prune.causal.kv_cache import BlockKVCache
from vidgen_prune.causal.mask import block_causal_frame_mask, token_mask
from vidgen_prune.causal.rope import rotary_at_frames
from vidgen_prune.causal.sampler import generate_causal
from vidgen_prune.config import GenerateConfig

# float32, the cached path sums attention over [cache; chunk] and the reference over a masked full row: the two
# orders differ by rounding only (measured max |Δ| 4.8e-7 on velocities up to 2.0)
TOLERANCE = 2e-5


def record_calls(transformer):
    """Every transformer call's (latents, timestep, text, velocity); returns the list and the hook handle."""
    calls = []

    def hook(module, args, output):
        hidden_states, timestep, text = args
        calls.append((hidden_states.clone(), timestep.clone(), text.clone(), output[0].clone()))

    return calls, transformer.register_forward_hook(hook)


@pytest.mark.parametrize(("frames", "chunk_frames", "window", "sink"), [(9, 1, None, 0), (13, 1, 2, 1), (13, 2, 3, 1)])
def test_chunked_generation_with_the_cache_equals_one_masked_forward(tiny_pipe, frames, chunk_frames, window, sink):
    """Every call of a causal generation (each chunk's denoising steps and its context pass) gives the velocities
    that one forward over [clean chunks | every noisy call input] gives under the block-causal mask."""
    transformer = tiny_pipe.transformer
    causal = CausalConfig(chunk_frames=chunk_frames, chunk_steps=2, kv_window=window, sink_frames=sink)
    gen = GenerateConfig(prompt="a red circle moving left", frames=frames, height=32, width=32, guidance=4.0,
                         max_sequence_length=8)
    calls, handle = record_calls(transformer)
    try:
        result = generate_causal(tiny_pipe, gen, causal)
    finally:
        handle.remove()
    assert len(calls) == result.transformer_calls
    infos = result.calls
    # the sequence: context calls' clean chunks first (copy 0, context), then every denoising call's input
    order = sorted(range(len(infos)), key=lambda i: not infos[i].context)  # stable: context calls first
    latents = torch.cat([calls[i][0] for i in order], dim=2)  # (B, z, F_total, h, w)
    positions = torch.cat([torch.tensor(list(infos[i].frames)) for i in order])  # (F_total,)
    copies = torch.cat([torch.full((len(infos[i].frames),), 0 if infos[i].context else 1 + i) for i in order])
    context = copies == 0
    tokens_per_frame = result.tokens_per_frame
    frame_timesteps = torch.cat([calls[i][1][:1].expand(len(infos[i].frames)) for i in order])  # (F_total,)
    timestep = frame_timesteps.repeat_interleave(tokens_per_frame)[None].expand(latents.shape[0], -1)  # (B, S)
    with causal_attention(transformer, "mask") as state, torch.no_grad():
        state.frame_positions = positions
        state.mask = token_mask(block_causal_frame_mask(positions, copies, context, chunk_frames, window, sink),
                                tokens_per_frame)
        reference = transformer(latents, timestep, calls[0][2], return_dict=False)[0]  # (B, z, F_total, h, w)
    start = 0
    for i in order:
        width = len(infos[i].frames)
        torch.testing.assert_close(calls[i][3], reference[:, :, start : start + width], atol=TOLERANCE, rtol=0)
        start += width
    assert sum(info.context for info in infos) == len(result.chunk_frames) - 1  # nothing reads the last chunk's
    assert len(result.frames) == frames


def test_the_window_keeps_the_sink_frames_and_the_most_recent_ones():
    cache = BlockKVCache(tokens_per_frame=2, window=4, sink_frames=1)
    for first in range(0, 9, 2):  # chunks of two frames: 0-1, 2-3, ..., 8-9
        frame_ids = torch.arange(first, first + 2).repeat_interleave(2).float()  # (4,) each token holds its frame
        key = frame_ids.view(1, 4, 1, 1).expand(1, 4, 1, 3)  # (B, S, heads, d)
        cache.append(key, -key, first_frame=first)
    assert cache.frames == [0, 7, 8, 9]
    assert cache.key[0, :, 0, 0].tolist() == [0, 0, 7, 7, 8, 8, 9, 9]
    assert torch.equal(cache.value, -cache.key)
    unlimited = BlockKVCache(tokens_per_frame=2)
    unlimited.append(torch.zeros(1, 6, 1, 3), torch.zeros(1, 6, 1, 3), first_frame=0)
    assert unlimited.frames == [0, 1, 2] and len(unlimited) == 6


def test_the_cache_refuses_a_partial_frame_and_out_of_order_frames():
    cache = BlockKVCache(tokens_per_frame=4)
    with pytest.raises(ValueError, match="full width"):
        cache.append(torch.zeros(1, 3, 1, 2), torch.zeros(1, 3, 1, 2), first_frame=0)
    cache.append(torch.zeros(1, 4, 1, 2), torch.zeros(1, 4, 1, 2), first_frame=2)
    with pytest.raises(ValueError, match="do not follow"):
        cache.append(torch.zeros(1, 4, 1, 2), torch.zeros(1, 4, 1, 2), first_frame=1)


def test_the_mask_is_the_cache_rule():
    positions = torch.arange(5)
    mask = block_causal_frame_mask(positions, torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.bool),
                                   chunk_frames=1, kv_window=3, sink_frames=1)
    # frame 4 sees the sink (0), the two most recent earlier frames (2, 3) and itself; not frame 1
    assert mask[4].tolist() == [True, False, True, True, True]
    assert mask[2].tolist() == [True, True, True, False, False]  # nothing evicted yet; never the future
    assert mask.tril().equal(mask)


def test_rotary_at_frame_positions(tiny_pipe):
    rope = tiny_pipe.transformer.rope
    latents = torch.zeros(1, 4, 5, 8, 8)  # (B, z, F, h, w) → 5 frames of 4×4 tokens
    cos, sin = rope(latents)  # (1, 80, 1, d)
    shifted_cos, shifted_sin = rotary_at_frames(rope, torch.arange(2, 5), 4, 4)
    assert torch.equal(shifted_cos, cos[:, 2 * 16 :]) and torch.equal(shifted_sin, sin[:, 2 * 16 :])


def test_apply_and_remove_are_a_round_trip(tiny_pipe):
    transformer = tiny_pipe.transformer
    latents, timestep, text = torch.randn(2, 4, 3, 8, 8), torch.tensor([700.0, 700.0]), torch.randn(2, 8, 16)
    with torch.no_grad():
        dense = transformer(latents, timestep, text, return_dict=False)[0]
        state = apply_causal(transformer, "cache")
        state.reset(tokens_per_frame=16)
        state.frame_positions = torch.arange(3)
        one_chunk = transformer(latents, timestep, text, return_dict=False)[0]  # the whole video as one chunk
        apply_causal(transformer, "mask")  # applying again replaces, never stacks
        remove_causal(transformer)
        restored = transformer(latents, timestep, text, return_dict=False)[0]
    assert torch.equal(one_chunk, dense) and torch.equal(restored, dense)
    assert all(type(block.attn1.processor).__name__ == "WanAttnProcessor" for block in transformer.blocks)


def test_a_pruned_context_pass_is_refused(tiny_pipe):
    """The cache needs every token's keys and values; a context pass that sees a subset must fail loudly."""
    transformer = tiny_pipe.transformer
    block = transformer.blocks[0]
    with causal_attention(transformer, "cache") as state, torch.no_grad():
        state.reset(tokens_per_frame=16)
        state.frame_positions, state.writing = torch.arange(1), True
        cos, sin = rotary_at_frames(transformer.rope, torch.arange(1), 4, 4)
        with pytest.raises(ValueError, match="all 16 tokens"):
            block.attn1(torch.randn(1, 10, 32), None, None, (cos[:, :10], sin[:, :10]))


def test_a_pruned_context_pass_that_supplies_full_width_keys_caches_every_token(tiny_pipe):
    """The phase-2 write path: a block computing 10 of 16 tokens supplies the chunk's full-width keys/values; the
    cache then holds exactly what a dense context pass writes, and the kept queries see the whole chunk."""
    from vidgen_prune.causal.attention import self_attention_kv

    attn = tiny_pipe.transformer.blocks[0].attn1
    normed = torch.randn(1, 16, 32)  # (B, S, D) the block's normalised, modulated full-width input
    rotary = rotary_at_frames(tiny_pipe.transformer.rope, torch.arange(1), 4, 4)
    kept = torch.tensor([0, 1, 2, 4, 5, 7, 8, 11, 13, 15])
    with causal_attention(tiny_pipe.transformer, "cache") as state, torch.no_grad():
        state.reset(tokens_per_frame=16)
        state.frame_positions, state.writing = torch.arange(1), True
        dense = attn(normed, None, None, rotary)  # (1, 16, D)
        dense_key = state.caches[0].key.clone()
        state.reset(tokens_per_frame=16)
        state.frame_positions, state.writing = torch.arange(1), True
        _, key, value = self_attention_kv(attn, normed, rotary)
        state.supply_full_width(0, key, value)
        pruned = attn(normed[:, kept], None, None, tuple(t[:, kept] for t in rotary))  # (1, 10, D)
    assert torch.equal(state.caches[0].key, dense_key) and not state.full_width  # consumed
    torch.testing.assert_close(pruned, dense[:, kept], atol=TOLERANCE, rtol=0)
