"""The interface every pruning method implements, and what it is told about each forward."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PruneConfig
from ..models import TokenGrid
from .plan import TokenPlan
from .scores import ScoreProbe


@dataclass(frozen=True)
class ForwardInfo:
    """One transformer call: CFG's conditional and unconditional passes are two calls of the same step."""

    step: int  # denoising step index, 0-based
    num_steps: int
    grid: TokenGrid
    batch: int
    num_layers: int


class Pruner:
    """Decides, block by block, which tokens a transformer forward computes.

    `start_forward` is called once per transformer call; `plan` once per block, in order, with a probe that
    scores the block's input tokens on demand. Returning None runs the block on every token.
    """

    name = ""

    def __init__(self, config: PruneConfig):
        self.config = config

    def check_budget(self, num_layers: int) -> None:
        """Raise ValueError when `config.reduction` cannot be reached on a model with `num_layers` blocks."""

    def check_model(self, transformer) -> None:
        """Raise ValueError when learned weights of this pruner (a router) were made for another model."""

    def start_forward(self, info: ForwardInfo) -> None:
        self.info = info

    def plan(self, layer: int, probe: ScoreProbe) -> TokenPlan | None:
        raise NotImplementedError


class DensePruner(Pruner):
    """The reference: every block computes every token."""

    name = "dense"

    def plan(self, layer: int, probe: ScoreProbe) -> TokenPlan | None:
        return None


class EveryBlockPruner(Pruner):
    """A method that reduces every block to the same K = N·(1 − r) rows at every step (ToMe, STA-ViT): its kept
    fraction is 1 − r in each block, the budget TAPE spends on average. Subclasses choose the rows."""

    def start_forward(self, info: ForwardInfo) -> None:
        super().start_forward(info)
        self.keep = max(1, round(info.grid.num_tokens * (1.0 - self.config.reduction)))

    def plan(self, layer: int, probe: ScoreProbe) -> TokenPlan | None:
        if self.keep >= self.info.grid.num_tokens:
            return None
        return self.reduce(probe)

    def reduce(self, probe: ScoreProbe) -> TokenPlan:
        raise NotImplementedError
