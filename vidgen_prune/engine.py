"""The engine: load a diffusers video pipeline, run it with a pruner, time it, write the MP4 and its sidecar.

The CLI and the bench call these functions; nothing here prints.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


def load_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32"):
    """A diffusers video pipeline from a local folder or hub id; None loads the embedded tiny model.

    Call `models.inspect_model(model)` first to refuse an unsupported or broken model before any weight is read.
    The VAE stays in float32 (as Wan's own examples load it); the rest takes `dtype`.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .tiny import EMBEDDED_MODEL_DIR

    source = str(EMBEDDED_MODEL_DIR) if model is None else os.path.expanduser(model)
    diffusers_logging.disable_progress_bar()  # the CLI draws its own progress
    transformers_logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(source, dtype={"default": DTYPES[dtype], "vae": torch.float32})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


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
    from .models import describe_pipeline

    loaded = describe_pipeline(pipe)
    pipe = loaded.adapter.pipeline_for(pipe, gen, loaded)  # e.g. the image-to-video sibling for --image
    info = describe_pipeline(pipe)
    device = next(denoisers(pipe)[0].parameters()).device
    step_ends: list[float] = []

    def step_callback(pipeline, step, timestep, callback_kwargs):
        _synchronize(device)
        step_ends.append(time.perf_counter())
        if on_step:
            on_step(step + 1, gen.steps)
        return {}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with apply_config(pipe, prune, record_masks=record_masks) as handle:
        _synchronize(device)
        start = time.perf_counter()
        output = pipe(
            **info.adapter.pipeline_kwargs(gen, info),
            generator=torch.Generator(device="cpu").manual_seed(gen.seed),
            output_type="np" if decode else "latent",
            callback_on_step_end=step_callback,
        )
        _synchronize(device)
        total = time.perf_counter() - start
    controller = handle.controller
    steps = np.diff([start] + step_ends).tolist()
    frames = None
    if decode:
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
    )


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def check_writable(path: Path) -> None:
    """Refuse an output path whose nearest existing folder cannot be written, before any compute."""
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"output folder is not writable: {path.parent}")


def write_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """MP4 (H.264 through imageio-ffmpeg) written under a temporary name and renamed once complete."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        with imageio.get_writer(partial, fps=fps, codec="libx264", quality=8, macro_block_size=16) as writer:
            for frame in frames:
                writer.append_data(frame)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(data: dict, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, default=str))
    os.replace(partial, path)


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
