"""Pruning methods, one file each. The registry is also the CLI's list of `--method` choices; it names classes
by module so that reading it (for `--help`) imports no torch."""

from __future__ import annotations

import importlib

# method name → "module:Class" inside this package
METHODS: dict[str, str] = {
    "dense": "base:DensePruner",
    "tape": "tape:TapePruner",
    "tape-s": "tape:TapeSmoothingOnly",
    "tape-r": "tape:TapeReselectionOnly",
    "tape-t": "tape:TapeScheduleOnly",
    "evit": "evit:EvitPruner",
    "tome": "tome:TomePruner",
    "stavit": "stavit:StaVitPruner",
    "router": "router:RouterPruner",
}

MERGING = ("tome",)  # methods that merge tokens (each already gets its group's update): no restoration


def make_pruner(config):
    """The pruner `config.method` names, built from `config` (a PruneConfig)."""
    module, name = METHODS[config.method].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)(config)


def check_method(method: str, adapter) -> None:
    """Refuse (ValueError) a method the model family of `adapter` cannot run (`ModelAdapter.unsupported_methods`);
    known before any weight is read."""
    reason = adapter.unsupported_methods.get(method)
    if reason:
        raise ValueError(f"the {method} method is not offered for {adapter.name} models: {reason}")


def check_pruner(config, transformer) -> None:
    """Refuse (ValueError), before any compute, a method that cannot run on `transformer`: one its family does not
    offer, a diffusers cache that does not know its blocks, a budget out of reach, or learned weights (a router) made
    for another model."""
    from ..models import adapter_for
    from .caches import check_cache

    adapter = adapter_for(transformer)
    check_method(config.method, adapter)
    check_cache(config, adapter.blocks(transformer))
    pruner = make_pruner(config)
    pruner.check_budget(len(adapter.blocks(transformer)))
    pruner.check_model(transformer)
