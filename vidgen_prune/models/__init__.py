"""Model adapters, one per diffusers video-DiT family; the registry feeds `--model` resolution."""

from __future__ import annotations

import torch

from .base import ModelAdapter, TokenGrid
from .wan import WanAdapter

# transformer class name → adapter; LTX, CogVideoX and HunyuanVideo plug in here without touching pruners
ADAPTERS: dict[str, ModelAdapter] = {"WanTransformer3DModel": WanAdapter()}


def adapter_for(transformer: torch.nn.Module) -> ModelAdapter:
    name = type(transformer).__name__
    if name not in ADAPTERS:
        raise ValueError(f"no pruning adapter for {name}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


__all__ = ["ADAPTERS", "ModelAdapter", "TokenGrid", "WanAdapter", "adapter_for"]
