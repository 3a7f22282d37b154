"""Causal generation: the video denoised chunk by chunk against a rolling KV cache, decoded as it goes.

Every transformer call is one chunk at one timestep: `chunk_steps` denoising calls, then (except after the last
chunk, whose keys/values nothing reads) one context call on the finished clean chunk that writes its keys/values
into every block's cache. Classifier-free guidance runs both prompts as a batch of two in the same call, so
the cache holds both and each call is still one (chunk, step). Before each call `on_call(ChunkCall)` says which
call it is; after each chunk `on_frames(chunk, frames)` receives its decoded frames. A `PruneConfig` prunes inside
the chunks (`pruning.py`: how the chunk's steps drive the pruner, and what the cache receives from a pruned block).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..config import GenerateConfig, PruneConfig
from ..engine import _peak_memory_mb, _synchronize, pruned
from ..models import TokenGrid
from .attention import causal_attention
from .config import CausalConfig
from .decode import StreamingDecoder
from .pruning import ChunkPruning


@dataclass(frozen=True)
class ChunkCall:
    """Which transformer call of a causal generation is about to run: what a pruner-side observer is told."""

    call: int  # index of this transformer call in the generation
    chunk: int  # 0-based chunk index
    num_chunks: int
    step: int  # denoising step within the chunk, 0 .. steps_per_chunk - 1; steps_per_chunk for the context pass
    steps_per_chunk: int
    context: bool  # the clean pass that writes the chunk's keys/values into the cache (every token must be computed)
    frames: range  # the chunk's absolute latent frames
    timestep: float
    batch: int  # 2 with classifier-free guidance (negative prompt, prompt), else 1


@dataclass
class CausalResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    total_s: float  # text encoding, every chunk, decoding
    first_chunk_s: float  # start → the first chunk's frames decoded: how long a viewer waits
    chunk_s: list[float]  # per chunk: its denoising steps, its context pass and its decode
    transformer_s: float
    transformer_calls: int
    tokens_per_frame: int
    chunk_frames: list[int]  # latent frames per chunk
    kv_cache_peak_mb: float  # every block's cache at its fullest (both guidance prompts)
    peak_memory_mb: float
    calls: list[ChunkCall] = field(default_factory=list, repr=False)
    kept_fraction: float = 1.0  # token·block computations done / possible over every call, context passes included
    flops: float = 0.0  # analytic FLOPs of the block forwards, attention to the cache included, per sample
    dense_flops: float = 0.0  # the same calls with every block at every token
    masks: list | None = field(default=None, repr=False)  # (step, call, layer, positions (B, K)) when recorded
    grid: TokenGrid | None = None  # the token grid of a full chunk
    kernels: dict = field(default_factory=dict)  # which skip path ran (PruneController.kernel_report)
    block_calls: int = 0  # block forwards that ran (all of them: no diffusers cache composes with causal generation)
    cache_compute_fraction: float | None = None  # (no diffusers cache)

    @property
    def tokens_per_forward(self) -> int:
        """Video tokens of one call on a full chunk."""
        return max(self.chunk_frames) * self.tokens_per_frame

    @property
    def flop_bound_speedup(self) -> float:
        return self.dense_flops / self.flops if self.flops else 1.0

    @property
    def tokens_per_s(self) -> float:
        """Video tokens through the transformer per second of transformer time (skipped tokens included)."""
        tokens = sum(len(call.frames) for call in self.calls) * self.tokens_per_frame
        return tokens / self.transformer_s

    def timings(self) -> dict:
        return {
            "total_s": self.total_s,
            "first_chunk_s": self.first_chunk_s,
            "chunk_s": self.chunk_s,
            "mean_chunk_s": float(np.mean(self.chunk_s)),
            "transformer_s": self.transformer_s,
            "transformer_calls": self.transformer_calls,
            "frames_per_s": len(self.frames) / self.total_s,
            "tokens_per_s": self.tokens_per_s,
            "kv_cache_peak_mb": self.kv_cache_peak_mb,
            "peak_memory_mb": self.peak_memory_mb,
        }


def chunk_timesteps(pipe, causal: CausalConfig, device) -> tuple[object | None, list[float]]:
    """A fresh scheduler for one chunk (None for the renoise sampler) and the chunk's timesteps."""
    if causal.sampler == "scheduler":
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(causal.chunk_steps, device=device)
        return scheduler, [float(t) for t in scheduler.timesteps]
    return None, renoise_timesteps(causal)


def renoise_timesteps(causal: CausalConfig) -> list[float]:
    """Self-Forcing's few-step timesteps: 1000·(1 − j/T) warped by the shift (4 steps, shift 5: 1000, 938, 833, 625)."""
    uniform = 1.0 - np.arange(causal.chunk_steps) / causal.chunk_steps  # 1000, 750, 500, 250 before the shift
    shift = causal.renoise_shift
    return (1000.0 * shift * uniform / (1.0 + (shift - 1.0) * uniform)).tolist()


@torch.no_grad()
def generate_causal(
    pipe,
    gen: GenerateConfig,
    causal: CausalConfig,
    prune: PruneConfig | None = None,
    on_call: Callable[[ChunkCall], None] | None = None,
    on_frames: Callable[[int, np.ndarray], None] | None = None,
    record_masks: bool = False,
) -> CausalResult:
    """One seeded causal generation with `pipe`'s Wan transformer made block-causal, and pruned with `prune` (None:
    dense), for its duration. Check `prune` first (`pruning.check_pruner`): a budget out of reach is refused there."""
    transformer, device = pipe.transformer, pipe.transformer.device
    guided = gen.guidance > 1.0
    latent_frames = (gen.frames - 1) // pipe.vae_scale_factor_temporal + 1
    spatial = pipe.vae_scale_factor_spatial
    latent_height, latent_width = gen.height // spatial, gen.width // spatial
    _, p_h, p_w = transformer.config.patch_size
    tokens_per_frame = (latent_height // p_h) * (latent_width // p_w)
    chunks = causal.chunks(latent_frames)
    generator = torch.Generator(device="cpu").manual_seed(gen.seed)
    noise_shape = (1, transformer.config.in_channels, latent_frames, latent_height, latent_width)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    clock = _Clock(device)
    with causal_attention(transformer, "cache") as state, \
            pruned(transformer, prune or PruneConfig(), causal.chunk_steps, record_masks) as controller:
        pruning = ChunkPruning(controller, state)
        state.reset(tokens_per_frame, causal.kv_window, causal.sink_frames)
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            gen.prompt, gen.negative_prompt, do_classifier_free_guidance=guided,
            max_sequence_length=gen.max_sequence_length, device=device)
        text = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds  # (B, L, text_dim)
        text = text.to(transformer.dtype)
        noise = torch.randn(noise_shape, generator=generator, dtype=torch.float32)  # (1, z, F', h, w), as WanPipeline
        decoder = StreamingDecoder(pipe.vae)
        calls: list[ChunkCall] = []

        def run(latents: torch.Tensor, timestep: float, chunk: int, step: int, frames: range) -> torch.Tensor:
            """One transformer call on the chunk `latents` (1, z, f, h, w) → guided velocity (1, z, f, h, w)."""
            info = ChunkCall(len(calls), chunk, len(chunks), step, causal.chunk_steps, step == causal.chunk_steps,
                             frames, timestep, len(text))
            calls.append(info)
            pruning.on_call(info)
            if on_call:
                on_call(info)
            model_input = latents.to(device, transformer.dtype).expand(len(text), -1, -1, -1, -1)
            timesteps = torch.full((len(text),), timestep, device=device)
            with clock.transformer():
                velocity = transformer(model_input, timesteps, text, return_dict=False)[0].float()  # (B, z, f, h, w)
            if not guided:
                return velocity
            unconditional, conditional = velocity.chunk(2)
            return unconditional + gen.guidance * (conditional - unconditional)

        pieces, chunk_s, first_chunk_s, cache_peak = [], [], 0.0, 0
        for index, frames in enumerate(chunks):
            chunk_start = clock.now()
            state.frame_positions = torch.arange(frames.start, frames.stop, device=device)
            latents = noise[:, :, frames.start : frames.stop].to(device)  # (1, z, f, h, w)
            scheduler, timesteps = chunk_timesteps(pipe, causal, device)
            for step, timestep in enumerate(timesteps):
                velocity = run(latents, timestep, index, step, frames)
                if scheduler is not None:
                    latents = scheduler.step(velocity, scheduler.timesteps[step], latents, return_dict=False)[0]
                else:  # flow: x0 = x_t - σ v, then fresh noise to the next timestep (none after the last)
                    sigma = timestep / 1000.0
                    latents = latents - sigma * velocity
                    if step + 1 < len(timesteps):
                        next_sigma = timesteps[step + 1] / 1000.0
                        fresh = torch.randn(latents.shape, generator=generator).to(device)  # (1, z, f, h, w)
                        latents = (1.0 - next_sigma) * latents + next_sigma * fresh
            if index + 1 < len(chunks):
                state.writing = True
                run(latents, causal.context_timestep, index, causal.chunk_steps, frames)
                state.writing = False
                cache_peak = max(cache_peak, state.cache_nbytes)
            frames_rgb = decoder.decode(latents)  # (n, H, W, 3) uint8
            clock.sync()
            chunk_s.append(clock.now() - chunk_start)
            if index == 0:
                first_chunk_s = clock.now() - clock.start
            pieces.append(frames_rgb)
            if on_frames:
                on_frames(index, frames_rgb)
        total_s = clock.now() - clock.start
        log = controller.log
    return CausalResult(
        frames=np.concatenate(pieces), total_s=total_s, first_chunk_s=first_chunk_s, chunk_s=chunk_s,
        transformer_s=clock.transformer_s, transformer_calls=len(calls), tokens_per_frame=tokens_per_frame,
        chunk_frames=[len(frames) for frames in chunks], kv_cache_peak_mb=cache_peak / 2**20,
        peak_memory_mb=_peak_memory_mb(device), calls=calls, kept_fraction=log.kept_fraction, flops=log.flops,
        dense_flops=log.dense_flops, masks=log.masks,
        grid=TokenGrid(max(len(frames) for frames in chunks), latent_height // p_h, latent_width // p_w),
        kernels=controller.kernel_report(), block_calls=pruning.block_calls)


class _Clock:
    """Wall time, synchronised on CUDA so that queued GPU work is counted where it belongs."""

    def __init__(self, device: torch.device):
        self.device, self.transformer_s = device, 0.0
        self.start = self.now()

    def sync(self) -> None:
        _synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @contextmanager
    def transformer(self):
        begin = self.now()
        try:
            yield
        finally:
            self.transformer_s += self.now() - begin
