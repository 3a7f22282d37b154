"""The Python API: prune a diffusers video pipeline in place, until the handle is removed.

    handle = vidgen_prune.apply(pipe, "tape", reduction=0.3)   # every denoiser of the pipeline
    video = pipe(prompt="...").frames[0]
    print(handle.kept_fraction, handle.transformer_s, handle.transformer_calls)
    handle.remove()                                            # or vidgen_prune.remove(pipe), or `with apply(...)`

The shape follows tomesd's `apply_patch` / `remove_patch` and diffusers' own `enable_cache`: all state lives in one
controller reachable from each denoiser, applying again replaces what was there, and removing restores every
forward exactly. No step count is passed in: the pipeline's scheduler tells it when `set_timesteps` runs at the
start of each call. The CLI and the bench run through these same functions.
"""

from __future__ import annotations

import functools
from dataclasses import fields

from .config import PruneConfig
from .pruning.hooks import PruneController


class PruneHandle:
    """The pruning applied to one pipeline; its figures describe the last (or the running) generation."""

    def __init__(self, pipe, controller: PruneController, config: PruneConfig):
        self.pipe, self.controller, self.config = pipe, controller, config
        self._scheduler = None
        self.active = True

    # ------------------------------------------------------------------------------------------------ figures

    @property
    def kept_fraction(self) -> float:
        """Token·block computations done / possible over the generation (≈ 1 − reduction)."""
        return self.controller.log.kept_fraction

    @property
    def transformer_s(self) -> float:
        """Seconds inside the denoisers' forwards (CUDA-synchronised), pruning bookkeeping included."""
        return self.controller.transformer_s

    @property
    def transformer_calls(self) -> int:
        return self.controller.log.forwards

    @property
    def flop_bound_speedup(self) -> float:
        """Analytic FLOPs of the block forwards at every token / those done: the speedup pruning could reach."""
        log = self.controller.log
        return log.dense_flops / log.flops if log.flops else 1.0

    @property
    def masks(self) -> list | None:
        """(step, call, layer, positions (B, K)) of every pruned block call, when applied with record_masks."""
        return self.controller.log.masks

    @property
    def cache_compute_fraction(self) -> float | None:
        cache = self.controller.cache
        return cache.compute_fraction if cache is not None else None

    # -------------------------------------------------------------------------------------------- life cycle

    def remove(self) -> None:
        """Take every hook off: the pipeline computes exactly what it computed before `apply`. The figures of the
        last generation stay readable."""
        from .pruning.hooks import remove_pruner

        if not self.active:
            return
        self.active = False
        if self._scheduler is not None:
            vars(self._scheduler).pop("set_timesteps", None)
        if self.controller.cache is not None:
            self.controller.cache.remove()
        for transformer in self.controller.denoisers:
            remove_pruner(transformer)
        self.pipe._vidprune_handle = None

    def __enter__(self) -> PruneHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _follow_scheduler(self) -> None:
        """Begin a generation whenever the pipeline's scheduler sets its timesteps (once per pipeline call)."""
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is None:
            return
        original = scheduler.set_timesteps
        controller = self.controller

        # wraps: pipelines read set_timesteps' signature (HunyuanVideo passes sigmas only where it takes them)
        @functools.wraps(original)
        def set_timesteps(*args, **kwargs):
            result = original(*args, **kwargs)
            controller.begin(len(scheduler.timesteps))
            return result

        scheduler.set_timesteps = set_timesteps
        self._scheduler = scheduler


def apply(pipe, method: str = "tape", reduction: float = 0.3, *, record_masks: bool = False,
          **options) -> PruneHandle:
    """Prune every denoiser of `pipe` with `method` at `reduction` until the handle is removed.

    `options` are PruneConfig fields (alpha, reselect_every, schedule, schedule_delta, kernels, cache, router, ...);
    a bad value raises ValueError with the one-line message the CLI prints. Applying again replaces the previous
    pruner.
    """
    known = {f.name for f in fields(PruneConfig)} - {"method", "reduction"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown pruning option {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    return apply_config(pipe, PruneConfig(method=method, reduction=reduction, **options), record_masks)


def apply_config(pipe, config: PruneConfig, record_masks: bool = False) -> PruneHandle:
    """`apply` for a ready PruneConfig (what the CLI and the bench build)."""
    from .models import denoisers
    from .pruning import check_pruner, make_pruner
    from .pruning.caches import apply_cache
    from .pruning.hooks import apply_pruner, start_timer

    remove(pipe)
    modules = denoisers(pipe)
    for transformer in modules:
        check_pruner(config, transformer)
    controller = apply_pruner(modules, make_pruner(config), kernels=config.kernels, max_queries=config.score_queries)
    controller.begin(record_masks=record_masks)
    handle = PruneHandle(pipe, controller, config)
    pipe._vidprune_handle = handle
    try:
        controller.cache = apply_cache(modules, config) if config.cache else None
        start_timer(controller)
        handle._follow_scheduler()
    except BaseException:
        handle.remove()
        raise
    return handle


def remove(pipe) -> None:
    """Take vidprune off `pipe`; a no-op when it is not on."""
    handle = getattr(pipe, "_vidprune_handle", None)
    if handle is not None:
        handle.remove()
