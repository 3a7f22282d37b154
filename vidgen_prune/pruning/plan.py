"""How a block call is reduced: a pair of callables (gather, scatter) around the original block forward.

A disabled layer has no plan (the block runs on all tokens); a pruned layer gets a `TokenPlan` whose
`gather` picks the rows the block computes and whose `scatter` writes the block's result back into the full
sequence. Token skipping leaves the other rows untouched; merging methods (ToMe) return every row its
representative's update. `positions` says which sequence positions the computed rows stand for, so the
adapter can gather per-token block arguments (rotary, modulation) for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TokenPlan:
    positions: torch.Tensor  # (B, K) int64, sorted: sequence positions of the computed rows
    gather: Callable[[torch.Tensor], torch.Tensor]  # (B, N, D) → (B, K, D)
    scatter: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (full, rows_in, rows_out) → full
    is_skip: bool = False  # plain token skip: fused kernels may replace gather → block → scatter
    passes_through: bool = False  # tokens outside `positions` leave the block unchanged (restoration may add to them)

    @property
    def kept(self) -> int:
        return self.positions.shape[1]


def skip_plan(index: torch.Tensor) -> TokenPlan:
    """Compute only the tokens in `index` (B, K); every other token passes through the block unchanged."""

    def expanded(hidden: torch.Tensor) -> torch.Tensor:
        return index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, K, D)

    def gather(hidden: torch.Tensor) -> torch.Tensor:
        return hidden.gather(1, expanded(hidden))  # (B, K, D)

    def scatter(hidden: torch.Tensor, rows_in: torch.Tensor, rows_out: torch.Tensor) -> torch.Tensor:
        return hidden.scatter(1, expanded(hidden), rows_out)  # (B, N, D)

    return TokenPlan(index, gather, scatter, is_skip=True, passes_through=True)
