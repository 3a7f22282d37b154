"""diffusers' own cache accelerators as a vidprune option, composed with token pruning, and what they really skipped.

A cache reuses computation across denoising steps; token pruning skips tokens within a step. They compose
when the cache sits *outside* vidprune's block hook: diffusers chains hooks so the one registered last is
the outermost, so `apply_cache` must run after `apply_pruner`. Then a block-level cache (FirstBlockCache,
TaylorSeer) sees and stores full (B, N, D) sequences, and when it decides to compute a block, the call goes
through vidprune's gather → block → scatter. The reverse order would hand the cache gathered rows whose
token set changes every step.

PyramidAttentionBroadcast hooks the attention modules *inside* the block, so under pruning it would replay
attention rows computed for another token set: `PruneConfig` refuses that combination.

MagCache is not offered: `MagCacheConfig` requires `mag_ratios`, per-checkpoint magnitude ratios measured by
a calibration run of that very model and scheduler (diffusers ships them for Flux only), so it does not run
on an arbitrary pipeline without per-model calibration data.

This module's top level imports no torch: `PruneConfig` reads `CACHES` while validating flags.
"""

from __future__ import annotations

# cache name → what it reuses (also the CLI's list of `--cache` choices)
CACHES: dict[str, str] = {
    "fbcache": "FirstBlockCache: skip blocks 1..L-1 when block 0's residual barely changed since the last step",
    "pab": "PyramidAttentionBroadcast: replay each self-attention output for pab_skip - 1 calls",
    "taylorseer": "TaylorSeer (lite): predict the output projection by a Taylor series between full steps",
}
TAYLORSEER_DENSE_STEPS = 3  # diffusers' default: the first steps run in full to seed the Taylor factors
TIMESTEP_HOOK = "vidprune_cache_timestep"
DIFFUSERS_CACHE_HOOKS = ("fbc_leader_block_hook", "fbc_block_hook", "pyramid_attention_broadcast", "taylorseer_cache")


class CacheMonitor:
    """A diffusers cache on every denoiser of a pipeline, with counts of the calls to the modules it hooks and of
    the calls that really computed (the rest were replayed, predicted or skipped), summed over the denoisers."""

    def __init__(self, transformers: list, name: str, diffusers_config):
        from diffusers.hooks import HookRegistry, ModelHook

        from ..models import adapter_for

        adapter = adapter_for(transformers[0])  # the family knows which child of a hooked module marks a compute
        self.transformers, self.name = transformers, name
        self.calls = self.computed = 0
        self._open: set = set()  # hooked modules called and not yet seen computing
        self.timestep = None
        monitor = self

        class _TimestepProbe(ModelHook):  # PAB's timestep window needs the current timestep of each call
            def pre_forward(self, module, *args, **kwargs):
                monitor.timestep = float(adapter.timestep(args, kwargs).flatten()[0])
                return args, kwargs

        self._handles = []
        try:
            for transformer in transformers:
                HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_TimestepProbe(), TIMESTEP_HOOK)
                transformer.enable_cache(diffusers_config)
                for module in transformer.modules():
                    hooks = getattr(getattr(module, "_diffusers_hook", None), "hooks", {})
                    if not any(name in hooks for name in DIFFUSERS_CACHE_HOOKS):
                        continue
                    marker = adapter.compute_marker(module)
                    if marker is None:
                        continue
                    self._handles.append(module.register_forward_pre_hook(self._count_call))
                    self._handles.append(marker.register_forward_pre_hook(self._compute_counter(module)))
        except BaseException:
            self.remove()  # a half-applied cache must not stay on the model
            raise

    def _count_call(self, module, args):
        self.calls += 1
        self._open.add(module)

    def _compute_counter(self, owner):
        """Count a call of `owner` as computed once, however often its marker runs in it (a pruned block whose
        samples keep different tokens runs once per sample)."""

        def count(marker, args):
            if owner in self._open:
                self._open.discard(owner)
                self.computed += 1

        return count

    @property
    def compute_fraction(self) -> float | None:
        """Calls of the cached modules that computed / all their calls (1.0 = the cache never reused anything)."""
        return self.computed / self.calls if self.calls else None

    def remove(self) -> None:
        from diffusers.hooks import HookRegistry

        for handle in self._handles:
            handle.remove()
        for transformer in self.transformers:
            if transformer.is_cache_enabled:
                transformer.disable_cache()
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(TIMESTEP_HOOK, recurse=False)


def check_cache(config, blocks: list) -> None:
    """ValueError when `config.cache` cannot hook these blocks: FirstBlockCache reads each block class's return
    layout from diffusers' own registry, which not every family is in (SkyReels-V2's blocks are not)."""
    if config.cache != "fbcache":
        return
    from diffusers.hooks._helpers import TransformerBlockRegistry

    for block_class in {type(block) for block in blocks}:
        try:
            TransformerBlockRegistry.get(block_class)
        except ValueError:
            raise ValueError(f"--cache fbcache: diffusers' FirstBlockCache does not know {block_class.__name__} "
                             "blocks; use taylorseer") from None


def apply_cache(transformers: list, config) -> CacheMonitor:
    """Enable the cache `config.cache` names (a PruneConfig) on every denoiser, outside any vidprune hooks."""
    from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    if config.cache == "fbcache":
        return CacheMonitor(transformers, "fbcache", FirstBlockCacheConfig(threshold=config.fbcache_threshold))
    if config.cache == "taylorseer":
        # lite mode: the default patterns (`^blocks.*attn`, fullmatch) hook nothing on Wan, whose modules are
        # `blocks.N.attn1`; lite predicts `proj_out` and lets the blocks return zeros on predicted steps
        taylor = TaylorSeerCacheConfig(
            cache_interval=config.taylorseer_interval,
            disable_cache_before_step=TAYLORSEER_DENSE_STEPS,
            taylor_factors_dtype=next(transformers[0].parameters()).dtype,
            use_lite_mode=True,
        )
        return CacheMonitor(transformers, "taylorseer", taylor)
    if config.cache == "pab":
        monitor = None
        pab = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=config.pab_skip,
            current_timestep_callback=lambda: monitor.timestep,
        )
        monitor = CacheMonitor(transformers, "pab", pab)
        return monitor
    raise ValueError(f"unknown cache {config.cache!r}; choose from {', '.join(CACHES)}")
