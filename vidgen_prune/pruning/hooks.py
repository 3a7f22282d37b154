"""Apply a pruner to a pipeline's denoisers as named, removable hooks (and take it off again).

One controller owns every denoiser a pipeline calls (Wan2.2 A14B: `transformer` for the high-noise steps,
`transformer_2` after the boundary): one step counter, one budget, one kept-token log and one timer over all of
them. A hook on each denoiser learns the token grid and the denoising step of each call (a new timestep value is
a new step, whichever expert runs it; CFG's two passes share one) and times the call; a hook per block asks the
pruner for a plan and runs gather → original block forward → scatter. Removing the hooks restores the original
forwards exactly.

A generation's length comes from the pipeline: `begin(num_steps)` is called when its scheduler sets its
timesteps (see `vidgen_prune.api`), or by whoever calls the transformer directly; the stateful reset diffusers
pipelines run at the end of every call (`maybe_free_model_hooks`) ends the generation, so the next one counts from
step 0 even without a `begin`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..kernels.dispatch import resolve_backend
from ..kernels.guard import FusedGuard, path_taken
from ..metrics.flops import restore_flops
from ..models import BlockCall, ModelAdapter, adapter_for
from .base import ForwardInfo, Pruner
from .restore import Restorer
from .scores import ScoreProbe

TRANSFORMER_HOOK = "vidprune_forward"
TIMER_HOOK = "vidprune_timer"
BLOCK_HOOK = "vidprune_block"


@dataclass
class KeptTokenLog:
    """Token-block computations done vs. possible, over every forward since the generation began."""

    kept: int = 0
    total: int = 0
    forwards: int = 0
    masks: list[tuple[int, int, int, torch.Tensor]] | None = None  # (step, call, layer, positions (B, K) on CPU)
    per_step: dict[int, list[int]] = field(default_factory=dict)  # step → [kept, total]
    per_denoiser: dict[int, int] = field(default_factory=dict)  # denoiser index → its forwards
    flops: float = 0.0  # analytic FLOPs of the block forwards that ran (per sample)
    dense_flops: float = 0.0  # every forward's every block at every token: dense_flops / flops is the FLOP bound

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 1.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PruneController:
    """All pruning state of a pipeline's denoisers: the pruner, the step counter, the kept-token log, the timer."""

    def __init__(self, denoisers: list[torch.nn.Module], pruner: Pruner, adapter: ModelAdapter, backend: str,
                 max_queries: int, check_kernels: bool = False):
        self.denoisers, self.pruner, self.adapter = denoisers, pruner, adapter
        self.backend, self.max_queries = backend, max_queries
        # --kernels auto: each fused path is compared with torch on its first call (explicit triton: trusted)
        self.fused_guard = FusedGuard("the fused skip forward", check=check_kernels)
        self.score_guard = FusedGuard("the attention-score kernel", check=check_kernels)
        self.num_layers = len(adapter.blocks(denoisers[0]))
        self.num_steps = 1
        self.cache = None  # the diffusers cache composed with this pruner (vidgen_prune.api adds one)
        self.record_masks = False
        self.transformer_s, self.grid, self.denoiser = 0.0, None, 0
        self.forced_step: int | None = None
        self.forced_num_steps: int | None = None
        # called before every block call as observer(layer, block, call, plan) (plan None: the block runs dense): what
        # code outside the pruner needs at a block, e.g. causal generation's full-width keys/values for its KV cache
        self.block_observers: list = []
        self.begin()

    def begin(self, num_steps: int | None = None, record_masks: bool | None = None) -> None:
        """Start a new generation of `num_steps` denoising steps (or keep the last count)."""
        self.num_steps = num_steps or self.num_steps
        self.record_masks = self.record_masks if record_masks is None else record_masks
        self.step, self.call, self._last_timestep = -1, -1, None
        self.log = KeptTokenLog(masks=[] if self.record_masks else None)
        self.transformer_s = 0.0
        self.restorer = Restorer(self.pruner.config.restore)

    reset = begin  # the name code that drives a transformer by hand (bench profile, router training) uses

    def end(self) -> None:
        """The pipeline call is over: the log stays readable; the next forward counts from step 0 again."""
        self.step, self._last_timestep = -1, None

    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        """Drive the step counter by hand: every forward until the next call runs as step `step` (a sampler that
        knows its step, a dry run on the meta device that has no timestep values); None: count timestep changes.
        `num_steps`: the length of the schedule the pruner sees for those forwards (None: the generation's, from
        `begin`), for a sampler whose calls follow schedules of their own (causal chunks); a step past a schedule's
        end runs as its last step, and the log counts it under `step` itself."""
        self.forced_step, self.forced_num_steps = step, num_steps

    def start_forward(self, denoiser: int, args: tuple, kwargs: dict) -> None:
        if self.forced_step is not None:
            self.step = self.forced_step
        else:
            timestep_value = float(self.adapter.timestep(args, kwargs).max())
            if timestep_value != self._last_timestep:
                self.step, self._last_timestep = self.step + 1, timestep_value
        self.call += 1
        self.denoiser = denoiser
        transformer = self.denoisers[denoiser]
        self.grid = self.adapter.token_grid(transformer, args, kwargs)
        self.text_tokens = self.adapter.text_tokens(args, kwargs)
        tokens = self.grid.num_tokens
        self.log.dense_flops += sum(self.adapter.block_flops(transformer, layer, tokens, tokens, self.text_tokens)
                                    for layer in range(self.num_layers))
        batch = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape[0]
        num_steps = self.forced_num_steps or self.num_steps
        self.pruner.start_forward(
            ForwardInfo(
                step=min(self.step, num_steps - 1),
                num_steps=num_steps,
                grid=self.grid,
                batch=batch,
                num_layers=self.num_layers,
            )
        )
        self.log.forwards += 1
        self.log.per_denoiser[denoiser] = self.log.per_denoiser.get(denoiser, 0) + 1

    def run_block(self, layer: int, block, original_forward, args: tuple, kwargs: dict):
        call = BlockCall(block, self.adapter.layout(block), args, kwargs)
        probe = ScoreProbe(self.adapter, block, call, self.grid, self.max_queries, self.backend, self.score_guard)
        plan = self.pruner.plan(layer, probe)
        hidden_states = call.hidden_states  # (B, N, D)
        tokens = hidden_states.shape[1]
        self._account(layer, tokens if plan is None else plan.kept, tokens, plan)
        for observe in self.block_observers:
            observe(layer, block, call, plan)
        if plan is None:
            return original_forward(*args, **kwargs)
        restoring = self.restorer.enabled and plan.passes_through

        def gather_block_scatter():
            rows = plan.gather(hidden_states)  # (B, K, D)
            rows_out, output = call.run(original_forward, rows, plan.positions)
            video = plan.scatter(hidden_states, rows, rows_out)  # (B, N, D)
            if restoring:
                video = self.restorer.apply(video, rows, hidden_states, plan.positions, self.grid)  # (B, N, D)
                self.log.flops += restore_flops(self.restorer.mode, tokens, plan.kept, hidden_states.shape[2],
                                                self.grid.tokens_per_frame, self.restorer.rematched)
            return call.with_video(output, video)

        fused = self.adapter.fused_skip(block) if plan.is_skip and self.backend == "triton" and not restoring else None
        if fused is None:
            return gather_block_scatter()
        # the fused path updates its input in place: safe when only the transformer loop, which rebinds
        # hidden_states to each block's output, holds it; another hook on the block (a cache) may read it
        fused_input = hidden_states.clone() if len(block._diffusers_hook.hooks) > 1 else hidden_states
        # on a check the torch path runs first, so the fused path's in-place update comes after it
        return self.fused_guard.run(lambda: fused(fused_input, plan.positions, call), gather_block_scatter,
                                    base=hidden_states)

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
        transformer = self.denoisers[self.denoiser]
        log.flops += self.adapter.block_flops(transformer, layer, tokens, kept, self.text_tokens)
        if log.masks is not None and plan is not None:
            log.masks.append((self.step, self.call, layer, plan.positions.detach().cpu()))

    @property
    def transformer_calls(self) -> int:
        return self.log.forwards


class _TransformerHook(ModelHook):
    _is_stateful = True  # diffusers pipelines reset stateful hooks when a call ends: that ends the generation

    def __init__(self, controller: PruneController, denoiser: int):
        super().__init__()
        self.controller, self.denoiser = controller, denoiser

    def pre_forward(self, module, *args, **kwargs):
        self.controller.start_forward(self.denoiser, args, kwargs)
        return args, kwargs

    def reset_state(self, module):
        self.controller.end()
        return module


class _TimerHook(ModelHook):
    """Wall time inside a denoiser, synchronised on CUDA; registered last, so the pruning bookkeeping counts."""

    def __init__(self, controller: PruneController):
        super().__init__()
        self.controller = controller

    def pre_forward(self, module, *args, **kwargs):
        self.device = next(module.parameters()).device
        _synchronize(self.device)
        self._start = time.perf_counter()
        return args, kwargs

    def post_forward(self, module, output):
        _synchronize(self.device)
        self.controller.transformer_s += time.perf_counter() - self._start
        return output


class _BlockHook(ModelHook):
    def __init__(self, controller: PruneController, layer: int):
        super().__init__()
        self.controller, self.layer = controller, layer

    def new_forward(self, module, *args, **kwargs):
        return self.controller.run_block(self.layer, module, self.fn_ref.original_forward, args, kwargs)


def apply_pruner(
    denoisers: torch.nn.Module | list[torch.nn.Module], pruner: Pruner, kernels: str = "auto", max_queries: int = 256
) -> PruneController:
    """Hook `pruner` into every denoiser (one module or a pipeline's list); applying again replaces the previous
    pruner."""
    denoisers = list(denoisers) if isinstance(denoisers, (list, tuple)) else [denoisers]
    for transformer in denoisers:
        remove_pruner(transformer)
    adapter = adapter_for(denoisers[0])
    depths = {len(adapter.blocks(transformer)) for transformer in denoisers}
    if len(depths) > 1:
        raise ValueError(f"the denoisers have different depths {sorted(depths)}: one budget cannot span them")
    pruner.check_budget(depths.pop())
    backend = resolve_backend(kernels, next(denoisers[0].parameters()).device)
    controller = PruneController(denoisers, pruner, adapter, backend, max_queries, check_kernels=kernels == "auto")
    for index, transformer in enumerate(denoisers):
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(_TransformerHook(controller, index), TRANSFORMER_HOOK)
        for layer, block in enumerate(adapter.blocks(transformer)):
            register_innermost(HookRegistry.check_if_exists_or_initialize(block), _BlockHook(controller, layer),
                               BLOCK_HOOK)
        registry.invalidate_child_registries_cache()
        transformer._vidprune_controller = controller
    return controller


def register_innermost(registry: HookRegistry, hook: ModelHook, name: str) -> None:
    """Register `hook` inside the hooks a module already has, which are taken off and put back around it in their
    order. A block's other hooks must run first: group offloading's onloads the block's own weights (its
    modulation table), which the scoring pass reads before the block runs; a cache decides whether the block runs
    at all and must see whole sequences."""
    outer = [(other, registry.hooks[other]) for other in list(registry._hook_order)]
    for other, _ in reversed(outer):
        registry.remove_hook(other, recurse=False)
    registry.register_hook(hook, name)
    for other, other_hook in outer:
        registry.register_hook(other_hook, other)


def start_timer(controller: PruneController) -> None:
    """Time every denoiser's forwards into `controller.transformer_s`; call after any cache is applied, so the timer
    is the outermost hook."""
    for transformer in controller.denoisers:
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_TimerHook(controller), TIMER_HOOK)


def remove_pruner(transformer: torch.nn.Module) -> None:
    """Take vidprune's hooks off `transformer`; a no-op when none are on."""
    if getattr(transformer, "_vidprune_controller", None) is None:
        return
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(TIMER_HOOK) is not None:
        registry.remove_hook(TIMER_HOOK, recurse=False)
    registry.remove_hook(TRANSFORMER_HOOK, recurse=False)
    registry.remove_hook(BLOCK_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()
    transformer._vidprune_controller = None
