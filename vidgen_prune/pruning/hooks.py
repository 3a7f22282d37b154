"""Apply a pruner to a diffusers transformer as named, removable hooks (and take it off again).

One hook on the transformer learns the token grid and the denoising step of each call (a new timestep value
is a new step: CFG's two passes share one); one hook per block asks the pruner for a plan and runs
gather → original block forward → scatter. Removing the hooks restores the original forwards exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..kernels.dispatch import resolve_backend
from ..kernels.guard import FusedGuard, path_taken
from ..models import ModelAdapter, adapter_for
from .base import ForwardInfo, Pruner
from .scores import ScoreProbe

TRANSFORMER_HOOK = "vidprune_forward"
BLOCK_HOOK = "vidprune_block"


@dataclass
class KeptTokenLog:
    """Token-block computations done vs. possible, over every forward since the last reset."""

    kept: int = 0
    total: int = 0
    forwards: int = 0
    masks: list[tuple[int, int, int, torch.Tensor]] | None = None  # (step, call, layer, positions (B, K) on CPU)
    per_step: dict[int, list[int]] = field(default_factory=dict)  # step → [kept, total]

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 1.0


class PruneController:
    """All pruning state of one transformer: the pruner, the step counter and the kept-token log."""

    def __init__(self, transformer, pruner: Pruner, adapter: ModelAdapter, backend: str, max_queries: int,
                 check_kernels: bool = False):
        self.transformer, self.pruner, self.adapter = transformer, pruner, adapter
        self.backend, self.max_queries = backend, max_queries
        # --kernels auto: each fused path is compared with torch on its first call of a run (explicit triton: trusted)
        self.fused_guard = FusedGuard("the fused skip forward", check=check_kernels)
        self.score_guard = FusedGuard("the attention-score kernel", check=check_kernels)
        self.num_layers = len(adapter.blocks(transformer))
        self.num_steps = 1
        self.log = KeptTokenLog()
        self.cache = None  # the diffusers cache composed with this pruner, when engine.pruned() adds one
        self.reset()

    def reset(self, num_steps: int | None = None, record_masks: bool = False) -> None:
        """Start a new generation of `num_steps` denoising steps (or keep the last count)."""
        self.num_steps = num_steps or self.num_steps
        self.step, self.call, self._last_timestep = -1, -1, None
        self.log = KeptTokenLog(masks=[] if record_masks else None)

    def start_forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> None:
        timestep_value = float(timestep.flatten()[0])
        if timestep_value != self._last_timestep:
            self.step, self._last_timestep = self.step + 1, timestep_value
        self.call += 1
        self.grid = self.adapter.token_grid(self.transformer, hidden_states)
        self.pruner.start_forward(
            ForwardInfo(
                step=min(self.step, self.num_steps - 1),
                num_steps=self.num_steps,
                grid=self.grid,
                batch=hidden_states.shape[0],
                num_layers=self.num_layers,
            )
        )
        self.log.forwards += 1

    def run_block(self, layer: int, block, original_forward, hidden_states: torch.Tensor, *block_args):
        probe = ScoreProbe(self.adapter, block, hidden_states, block_args, self.grid, self.max_queries, self.backend,
                           self.score_guard)
        plan = self.pruner.plan(layer, probe)
        tokens = hidden_states.shape[1]
        kept = tokens if plan is None else plan.kept
        self._account(layer, kept, tokens, plan)
        if plan is None:
            return original_forward(hidden_states, *block_args)

        def gather_block_scatter():
            rows = plan.gather(hidden_states)  # (B, K, D)
            rows_out = original_forward(rows, *self.adapter.gather_block_args(plan.positions, block_args))
            return plan.scatter(hidden_states, rows, rows_out)  # (B, N, D)

        if plan.is_skip and self.backend == "triton":
            from ..models.wan_fused import fused_skip_forward

            # the fused path updates its input in place: safe when only the transformer loop, which rebinds
            # hidden_states to each block's output, holds it; another hook on the block (a cache) may read it
            if len(block._diffusers_hook.hooks) > 1:
                hidden_states = hidden_states.clone()
            return self.fused_guard.run(  # on a check the torch path runs first, so the in-place update comes after
                lambda: fused_skip_forward(block, hidden_states, plan.positions, *block_args, backend="triton"),
                gather_block_scatter, base=hidden_states)
        return gather_block_scatter()

    def kernel_report(self) -> dict:
        """Which path the pruned blocks and the scores took, and --kernels auto's first-call error (tolerance units)."""
        return {"kernel_path": path_taken(self.backend, self.fused_guard), "fused_error": self.fused_guard.error,
                "score_kernel_path": path_taken(self.backend, self.score_guard), "score_error": self.score_guard.error}

    def _account(self, layer: int, kept: int, tokens: int, plan) -> None:
        log = self.log
        log.kept += kept
        log.total += tokens
        step_counts = log.per_step.setdefault(self.step, [0, 0])
        step_counts[0] += kept
        step_counts[1] += tokens
        if log.masks is not None and plan is not None:
            log.masks.append((self.step, self.call, layer, plan.positions.detach().cpu()))


class _TransformerHook(ModelHook):
    def __init__(self, controller: PruneController):
        super().__init__()
        self.controller = controller

    def pre_forward(self, module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.controller.start_forward(hidden_states, timestep)
        return args, kwargs


class _BlockHook(ModelHook):
    def __init__(self, controller: PruneController, layer: int):
        super().__init__()
        self.controller, self.layer = controller, layer

    def new_forward(self, module, hidden_states, *block_args):
        return self.controller.run_block(self.layer, module, self.fn_ref.original_forward, hidden_states, *block_args)


def apply_pruner(
    transformer: torch.nn.Module, pruner: Pruner, kernels: str = "auto", max_queries: int = 256
) -> PruneController:
    """Hook `pruner` into `transformer`; applying again replaces the previous pruner."""
    remove_pruner(transformer)
    adapter = adapter_for(transformer)
    blocks = adapter.blocks(transformer)
    pruner.check_budget(len(blocks))
    backend = resolve_backend(kernels, next(transformer.parameters()).device)
    controller = PruneController(transformer, pruner, adapter, backend, max_queries, check_kernels=kernels == "auto")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_TransformerHook(controller), TRANSFORMER_HOOK)
    for layer, block in enumerate(blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(_BlockHook(controller, layer), BLOCK_HOOK)
    registry.invalidate_child_registries_cache()
    transformer._vidprune_controller = controller
    return controller


def remove_pruner(transformer: torch.nn.Module) -> None:
    """Take vidprune's hooks off `transformer`; a no-op when none are on."""
    if getattr(transformer, "_vidprune_controller", None) is None:
        return
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(TRANSFORMER_HOOK, recurse=False)
    registry.remove_hook(BLOCK_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()
    transformer._vidprune_controller = None
