"""The engine: load a diffusers video pipeline, run it with a pruner, time it, describe the run for its sidecar.

The CLI and the bench call these functions; nothing here prints. Files are written by `vidgen_prune.outputs`.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from . import __version__
from .config import GenerateConfig, PruneConfig
from .models import TokenGrid, denoisers
from .pruning import make_pruner
from .pruning.caches import apply_cache
from .pruning.hooks import apply_pruner, remove_pruner

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32", setup: GenerateConfig | None = None):
    """A diffusers video pipeline from a local folder or hub id; None loads the embedded tiny model.

    Call `models.inspect_model(model)` first to refuse an unsupported or broken model before any weight is read.
    The VAE stays in float32 (as Wan's own examples load it); the rest takes `dtype`. `setup`: a GenerateConfig
    whose offload, attention backend, compile, LoRA and VAE tiling are applied (vidgen_prune.compose).
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .compose import setup_pipeline
    from .tiny import EMBEDDED_MODEL_DIR

    source = str(EMBEDDED_MODEL_DIR) if model is None else os.path.expanduser(model)
    diffusers_logging.disable_progress_bar()  # the CLI draws its own progress
    transformers_logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(source, dtype={"default": DTYPES[dtype], "vae": torch.float32})
    pipe.set_progress_bar_config(disable=True)
    if setup is None:
        return pipe.to(device)
    setup_pipeline(pipe, setup, denoisers(pipe))
    return pipe


@dataclass
class GenerationResult:
    frames: np.ndarray | None  # (F, H, W, 3) uint8; None when not decoded
    total_s: float  # the whole pipeline call: text encoding, denoising, VAE decode
    step_s: list[float]  # wall time of each denoising step (both CFG passes)
    transformer_s: float  # time inside transformer forwards
    transformer_calls: int
    tokens_per_forward: int
    kept_fraction: float  # token·block computations done / possible, over every forward
    peak_memory_mb: float  # CUDA: peak allocated; CPU: the process's peak resident set
    block_calls: int = 0  # block forwards that ran (a cache skips some of transformer_calls × blocks)
    cache_compute_fraction: float | None = None  # calls of the cache-hooked modules that computed; None: no cache
    flops: float = 0.0  # analytic FLOPs of the block forwards that ran, per sample
    dense_flops: float = 0.0  # the same forwards with every block at every token
    denoiser_calls: list[int] = field(default_factory=list)  # forwards of each denoiser (A14B: two experts)
    masks: list | None = field(default=None, repr=False)  # (step, call, layer, positions) when recorded
    grid: TokenGrid | None = None  # the video tokens of a forward
    kernels: dict = field(default_factory=dict)  # PruneController.kernel_report(): path taken, auto's check error
    compiled_graphs: int | None = None  # graphs torch.compile built during this generation (GenerateConfig.compile)

    @property
    def frames_per_s(self) -> float:
        return (len(self.frames) if self.frames is not None else 0) / self.total_s

    @property
    def tokens_per_s(self) -> float:
        """Video tokens through the transformer per second of transformer time (skipped tokens included)."""
        return self.tokens_per_forward * self.transformer_calls / self.transformer_s

    @property
    def flop_bound_speedup(self) -> float:
        return self.dense_flops / self.flops if self.flops else 1.0

    def timings(self) -> dict:
        return {
            "total_s": self.total_s,
            "step_s": self.step_s,
            "mean_step_s": float(np.mean(self.step_s)),
            "transformer_s": self.transformer_s,
            "transformer_calls": self.transformer_calls,
            "denoiser_calls": self.denoiser_calls,
            "compiled_graphs": self.compiled_graphs,
            "frames_per_s": self.frames_per_s,
            "tokens_per_s": self.tokens_per_s,
            "peak_memory_mb": self.peak_memory_mb,
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def pruned(denoisers, prune: PruneConfig, num_steps: int, record_masks: bool = False):
    """`denoisers` (a transformer or a list) with `prune` applied, for code that calls them directly (no pipeline,
    so the step count is given); the hooks are gone afterwards. A cache (`prune.cache`) goes on after the pruner so
    that its hooks wrap vidprune's: it sees whole sequences and the blocks it computes are pruned. Its monitor is
    `controller.cache` (None without a cache)."""
    denoisers = list(denoisers) if isinstance(denoisers, (list, tuple)) else [denoisers]
    controller = apply_pruner(denoisers, make_pruner(prune), kernels=prune.kernels, max_queries=prune.score_queries)
    controller.begin(num_steps, record_masks=record_masks)
    controller.cache = apply_cache(denoisers, prune) if prune.cache else None
    try:
        yield controller
    finally:
        if controller.cache is not None:
            controller.cache.remove()
        for transformer in denoisers:
            remove_pruner(transformer)


def generate(
    pipe,
    gen: GenerateConfig,
    prune: PruneConfig,
    on_step: Callable[[int, int], None] | None = None,
    record_masks: bool = False,
    decode: bool = True,
) -> GenerationResult:
    """Run one seeded generation with `prune` applied to every denoiser; `on_step(done, total)` reports progress."""
    from .api import apply_config
    from .compose import compiled_graphs
    from .models import describe_pipeline

    loaded = describe_pipeline(pipe)
    pipe = loaded.adapter.pipeline_for(pipe, gen, loaded)  # e.g. the image-to-video sibling for --image
    info = describe_pipeline(pipe)
    device = next(denoisers(pipe)[0].parameters()).device
    step_ends: list[float] = []

    def step_callback(pipeline, step, timestep, callback_kwargs):
        _synchronize(device)
        step_ends.append(time.perf_counter())
        check_finite_latents(callback_kwargs["latents"], step, gen.steps)
        if on_step:
            on_step(step + 1, gen.steps)
        return {}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs_before = compiled_graphs() if gen.compile else None
    with apply_config(pipe, prune, record_masks=record_masks) as handle:
        _synchronize(device)
        start = time.perf_counter()
        output = pipe(
            **info.adapter.pipeline_kwargs(gen, info),
            generator=torch.Generator(device="cpu").manual_seed(gen.seed),
            output_type="np" if decode else "latent",
            callback_on_step_end=step_callback,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        _synchronize(device)
        total = time.perf_counter() - start
    controller = handle.controller
    steps = np.diff([start] + step_ends).tolist()
    frames = None
    if decode:
        check_finite_frames(output.frames[0])
        frames = (np.clip(output.frames[0], 0.0, 1.0) * 255).round().astype(np.uint8)  # (F, H, W, 3)
    log = controller.log
    return GenerationResult(
        frames=frames,
        total_s=total,
        step_s=steps,
        transformer_s=controller.transformer_s,
        transformer_calls=log.forwards,
        tokens_per_forward=controller.grid.num_tokens,
        kept_fraction=log.kept_fraction,
        peak_memory_mb=_peak_memory_mb(device),
        block_calls=log.total // controller.grid.num_tokens,
        cache_compute_fraction=handle.cache_compute_fraction,
        flops=log.flops,
        dense_flops=log.dense_flops,
        denoiser_calls=[log.per_denoiser.get(index, 0) for index in range(len(controller.denoisers))],
        masks=log.masks,
        grid=controller.grid,
        kernels=controller.kernel_report(),
        compiled_graphs=compiled_graphs() - graphs_before if gen.compile else None,
    )


class NonFiniteOutput(RuntimeError):
    """A generation produced NaN or Inf: its video would be black or noise, so it is a failure, not an output."""


def check_finite_latents(latents: torch.Tensor, step: int, steps: int) -> None:
    """After denoising step `step` (from 0): NaN/Inf here came from the transformer's output at that step (the
    scheduler only mixes it with finite latents). One reduction per step; on CUDA the step is synchronised anyway."""
    if not torch.isfinite(latents).all():
        raise NonFiniteOutput(f"the transformer output at denoising step {step + 1} of {steps} holds NaN or Inf "
                              "(damaged weights, or a dtype that overflows)")


def check_finite_frames(frames: np.ndarray) -> None:
    """The decoded video (F, H, W, 3) float, before it is clipped to [0, 1] (which would hide a NaN as black)."""
    if not np.isfinite(frames).all():
        raise NonFiniteOutput("the VAE decode produced NaN or Inf from finite latents (damaged VAE weights, or a "
                              "dtype that overflows)")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sidecar(gen: GenerateConfig, prune: PruneConfig, result: GenerationResult, preset: str | None) -> dict:
    """Everything needed to reproduce and judge a run."""
    import diffusers
    import transformers

    return {
        "prompt": gen.prompt,
        "negative_prompt": gen.negative_prompt,
        "seed": gen.seed,
        "model": gen.model or "embedded:tiny-wan",
        "preset": preset,
        "generate": {k: v for k, v in asdict(gen).items() if k not in ("prompt", "negative_prompt", "seed", "out")},
        "prune": asdict(prune),
        "achieved_kept_fraction": result.kept_fraction,
        "tokens_per_forward": result.tokens_per_forward,
        "timings": result.timings(),
        "kernels": result.kernels,
        "device": torch.cuda.get_device_name(torch.device(gen.device))
        if gen.device.startswith("cuda")
        else platform.processor() or "cpu",
        "versions": {
            "vidprune": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
