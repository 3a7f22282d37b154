"""The bench's causal side (`vidprune bench --causal`, `--profile self-forcing-1.3b`): what a causal record adds to
a quality record, and the causal profile.

A quality record of a causal bench is a `generate_causal` run judged against the dense causal video of the same
prompt and seed; it adds the mean per-chunk latency, the first-chunk latency (how long a viewer waits) and the peak
KV-cache size. A causal profile runs a real-size random-weight transformer chunk by chunk against its KV cache:
`chunk_steps` forwards per chunk on random chunk latents, then a context pass (none after the last chunk), the
controller driven as in generation (`pruning.ChunkPruning`), so its FLOPs count the attention to the cache and its
kept fraction the context passes.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from ..metrics import adjacent_frame_iou
from .attention import causal_attention
from .config import CausalConfig
from .masks import video_keep_masks
from .pruning import ChunkPruning
from .sampler import ChunkCall, renoise_timesteps


def chunk_fields(results: list) -> dict:
    """Per-chunk and first-chunk latency (medians over the timed repeats) and the KV cache at its fullest."""
    return {"chunk_s": statistics.median(float(np.mean(r.chunk_s)) for r in results),
            "first_chunk_s": statistics.median(r.first_chunk_s for r in results),
            "kv_cache_mb": results[0].kv_cache_peak_mb}


def video_mask_iou(result) -> float | None:
    """Adjacent-latent-frame IoU of the skipped sites over the whole video (each chunk's mask at its frames), over
    every pruned (denoising step, block); None when nothing was pruned."""
    keep = video_keep_masks(result.masks, result.calls, result.grid)
    steps = result.calls[0].steps_per_chunk
    stack = [mask for (step, _), mask in keep.items() if step < steps]  # each (B, F, H, W)
    if not stack or stack[0].shape[1] < 2:
        return None
    return adjacent_frame_iou(np.concatenate(stack))


@torch.no_grad()
def profile_chunks(transformer, inputs: dict, controller, causal: CausalConfig, timed) -> dict:
    """One causal generation of random chunk latents: every chunk's `chunk_steps` forwards and its context pass.

    `inputs`: the profile's `hidden_states` (1, C, F, H, W) for the whole video and its `encoder_hidden_states`;
    `timed(fn) → seconds`. Returns the seconds of each chunk, the calls, block calls and video tokens they ran, the
    tokens of a full chunk and the KV cache's peak bytes."""
    latents, text = inputs["hidden_states"], inputs["encoder_hidden_states"]
    device = latents.device
    _, p_h, p_w = transformer.config.patch_size
    tokens_per_frame = (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
    chunks = causal.chunks(latents.shape[2])
    timesteps = renoise_timesteps(causal)  # the values do not change the cost; Self-Forcing's own schedule
    chunk_s, calls, tokens, cache_peak = [], 0, 0, 0
    with causal_attention(transformer, "cache") as state:
        pruning = ChunkPruning(controller, state)
        state.reset(tokens_per_frame, causal.kv_window, causal.sink_frames)
        controller.begin(causal.chunk_steps)
        for index, frames in enumerate(chunks):
            state.frame_positions = torch.arange(frames.start, frames.stop)  # on the host: meta tensors hold no values
            chunk = latents[:, :, frames.start : frames.stop]  # (1, C, f, H, W)
            passes = list(enumerate(timesteps))
            passes += [(causal.chunk_steps, causal.context_timestep)] if index + 1 < len(chunks) else []
            seconds = 0.0
            for step, t in passes:
                call = ChunkCall(calls, index, len(chunks), step, causal.chunk_steps, step == causal.chunk_steps,
                                 frames, t, 1)
                pruning.on_call(call)
                state.writing = call.context
                timestep = torch.full((1,), t, device=device)
                seconds += timed(lambda: transformer(chunk, timestep, text, return_dict=False))
                state.writing = False
                calls, tokens = calls + 1, tokens + len(frames) * tokens_per_frame
            cache_peak = max(cache_peak, state.cache_nbytes)
            chunk_s.append(seconds)
        pruning.remove()
    return {"chunk_s": chunk_s, "calls": calls, "block_calls": pruning.block_calls, "tokens": tokens,
            "tokens_per_call": causal.chunk_frames * tokens_per_frame, "kv_cache_bytes": cache_peak}
