"""TAPE: temporal-aware pruning (training-free) and its one-component ablations TAPE-S, -R and -T.

Per forward: a scoring block runs dense and ranks tokens by attention received, optionally smoothed across
adjacent frames (Eq. 2); the blocks after it compute only the top-K tokens until the next scoring block
(reselection every R blocks). K follows the timestep budget schedule. The dense scoring blocks count
against the budget, so the pruned blocks prune harder: rate·L / (L − scoring blocks), and the mean kept
fraction over all blocks and steps equals 1 − reduction (up to rounding K to whole tokens).
"""

from __future__ import annotations

from .base import ForwardInfo, Pruner
from .plan import TokenPlan, skip_plan
from .schedule import MAX_RATE, step_rates
from .scores import ScoreProbe, smooth_temporal, top_positions


class TapePruner(Pruner):
    name = "tape"
    smoothing = True
    reselection = True
    scheduled = True  # False: constant rate at every step

    def scoring_layers(self, num_layers: int) -> range:
        return range(0, num_layers, self.config.reselect_every if self.reselection else num_layers)

    def rates(self, num_steps: int) -> list[float]:
        cfg = self.config
        schedule = cfg.schedule if self.scheduled else "constant"
        return step_rates(cfg.reduction, num_steps, schedule, cfg.schedule_delta, cfg.schedule_stages)

    def layer_rate(self, step_rate: float, num_layers: int) -> float:
        scoring = len(self.scoring_layers(num_layers))
        return step_rate * num_layers / (num_layers - scoring) if num_layers > scoring else 0.0

    def check_budget(self, num_layers: int) -> None:
        cfg = self.config
        highest = max(self.rates(cfg.schedule_stages))  # every level of the schedule appears once
        if num_layers <= len(self.scoring_layers(num_layers)) and cfg.reduction:
            raise ValueError(f"{self.name}: every block of this {num_layers}-block model is a scoring block")
        if self.layer_rate(highest, num_layers) > MAX_RATE:
            raise ValueError(
                f"{self.name}: reduction {cfg.reduction} (peak {highest:.2f}) cannot be reached with "
                f"{len(self.scoring_layers(num_layers))} dense scoring blocks of {num_layers}; lower --reduction, "
                "--schedule-delta, or raise --reselect-every"
            )

    def start_forward(self, info: ForwardInfo) -> None:
        super().start_forward(info)
        rate = min(MAX_RATE, self.layer_rate(self.rates(info.num_steps)[info.step], info.num_layers))
        tokens = info.grid.num_tokens
        self.keep = max(1, round(tokens * (1.0 - rate)))
        self.scoring = set(self.scoring_layers(info.num_layers))
        self.positions = None

    def plan(self, layer: int, probe: ScoreProbe) -> TokenPlan | None:
        if self.keep >= self.info.grid.num_tokens:
            return None
        if layer in self.scoring:
            scores = probe.attention()  # (B, N)
            if self.smoothing:
                scores = smooth_temporal(scores, self.info.grid, self.config.alpha)
            self.positions = top_positions(scores, self.keep)  # (B, K)
            return None
        return skip_plan(self.positions)


class TapeSmoothingOnly(TapePruner):
    name = "tape-s"
    reselection = False
    scheduled = False


class TapeReselectionOnly(TapePruner):
    name = "tape-r"
    smoothing = False
    scheduled = False


class TapeScheduleOnly(TapePruner):
    name = "tape-t"
    smoothing = False
    reselection = False
