"""EViT baseline as the TAPE paper adapts it to video generation (Sec. 3.2).

Attention-based pruning at a few selected blocks (depth fractions 1/6, 1/2, 5/6: the 10th/30th/50th of
HunyuanVideo's 60), cumulative (a token skipped at one stage stays skipped for the rest of the forward),
the same number of tokens pruned in every frame, a constant rate over timesteps. Each stage keeps a fraction
ρ of the previous stage's tokens, with ρ solved so the mean kept fraction over all blocks is 1 − reduction:
the same token budget TAPE spends.
"""

from __future__ import annotations

from .base import ForwardInfo, Pruner
from .plan import TokenPlan, skip_plan
from .scores import ScoreProbe, top_positions_per_frame


def stage_layers(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    return sorted({min(num_layers - 1, max(1, round(f * num_layers))) for f in fractions})


def mean_kept(ratio: float, stages: list[int], num_layers: int) -> float:
    """Mean kept fraction over all blocks when each stage keeps `ratio` of the previous stage's tokens."""
    bounds = stages + [num_layers]
    kept_blocks = stages[0] + sum((bounds[i + 1] - bounds[i]) * ratio ** (i + 1) for i in range(len(stages)))
    return kept_blocks / num_layers


def solve_stage_ratio(reduction: float, stages: list[int], num_layers: int) -> float:
    """ρ in [0, 1] with mean_kept(ρ) = 1 − reduction (mean_kept rises monotonically with ρ)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if mean_kept(mid, stages, num_layers) < 1.0 - reduction else (low, mid)
    return (low + high) / 2


class EvitPruner(Pruner):
    name = "evit"

    def check_budget(self, num_layers: int) -> None:
        stages = stage_layers(self.config.evit_layers, num_layers)
        if mean_kept(0.0, stages, num_layers) > 1.0 - self.config.reduction:
            raise ValueError(
                f"evit: reduction {self.config.reduction} is out of reach when pruning starts at block {stages[0]} "
                f"of {num_layers}"
            )

    def start_forward(self, info: ForwardInfo) -> None:
        super().start_forward(info)
        stages = stage_layers(self.config.evit_layers, info.num_layers)
        ratio = solve_stage_ratio(self.config.reduction, stages, info.num_layers)
        frames, tokens = info.grid.frames, info.grid.num_tokens
        # whole tokens per frame so every frame is pruned alike; at least one per frame
        self.stage_keep = {
            layer: frames * max(1, round(ratio ** (i + 1) * tokens / frames)) for i, layer in enumerate(stages)
        }
        self.positions = None

    def plan(self, layer: int, probe: ScoreProbe) -> TokenPlan | None:
        if layer in self.stage_keep and self.stage_keep[layer] < self.info.grid.num_tokens:
            scores = probe.attention(self.positions, frame_local=True)  # (B, K_prev)
            chosen = top_positions_per_frame(scores, self.info.grid.frames, self.stage_keep[layer])  # (B, K)
            self.positions = chosen if self.positions is None else self.positions.gather(1, chosen)
        return None if self.positions is None else skip_plan(self.positions)
