"""Timestep budget schedules: the pruning rate of each denoising step, averaging to the target reduction.

TAPE's "HighLow" prunes hardest at the noisy first steps and relaxes towards the fidelity-critical end: the
rate falls linearly from r+δ to r−δ in `stages` even levels (the paper: every 10 of 50 steps, 30 % → 10 %
for a 20 % mean). "LowHigh" is its mirror and "constant" the flat ablation.
"""

from __future__ import annotations

SCHEDULES = ("highlow", "constant", "lowhigh")
MAX_RATE = 0.95  # keep at least 5 % of the tokens in any pruned step


def step_rates(reduction: float, num_steps: int, schedule: str = "highlow", delta: float = 0.1, stages: int = 5):
    """Per-step pruning rates whose mean is exactly `reduction`.

    δ shrinks where r±δ would leave [0, MAX_RATE], so reduction 0 stays dense at every step. When `num_steps`
    does not split evenly into `stages`, the levels are re-centred so the mean is still `reduction`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    delta = min(delta, reduction, MAX_RATE - reduction) if schedule != "constant" else 0.0
    stages = max(1, min(stages, num_steps))
    sign = -1.0 if schedule == "lowhigh" else 1.0
    levels = [
        reduction + sign * delta * (1 - 2 * stage / (stages - 1)) if stages > 1 else reduction
        for stage in range(stages)
    ]
    rates = [levels[step * stages // num_steps] for step in range(num_steps)]
    offset = reduction - sum(rates) / num_steps
    return [min(MAX_RATE, max(0.0, rate + offset)) for rate in rates]
