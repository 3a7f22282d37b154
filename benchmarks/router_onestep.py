"""Does training lower the router's own objective on held-out states? The one-step velocity error (guided and per
pass) of a trained router and of its untrained start, replayed on the dense trajectories of held-out prompts, per
denoising step, with the restoration the router was trained with, at reduction 0.3.

    OMP_NUM_THREADS=1 python benchmarks/router_onestep.py ROUTER_DIR PROMPTS OUT.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from vidgen_prune.config import PruneConfig
from vidgen_prune.engine import load_pipeline
from vidgen_prune.pruning.hooks import apply_pruner, remove_pruner
from vidgen_prune.pruning.router import RouterNet, RouterPruner, load_router
from vidgen_prune.router_training import collect_trajectories, distillation_loss, sampling_config
from vidgen_prune.tiny.prompts import HELD_OUT_PROMPTS

OBJECTIVES = ("guided", "pass")


def one_step_errors(pipe, trajectories, pruner, prompts: int, steps: int) -> dict[str, list[float]]:
    """Mean over prompts of each objective's error at each denoising step, the router replayed on dense states."""
    transformer = pipe.transformer
    controller = apply_pruner(transformer, pruner, kernels="torch")
    per_step: dict[str, list[float]] = {objective: [] for objective in OBJECTIVES}
    try:
        with torch.no_grad(), trajectories.session(transformer, controller):
            for step in range(steps):
                errors: dict[str, list[float]] = {objective: [] for objective in OBJECTIVES}
                for prompt in range(prompts):
                    velocity, target = trajectories.replay(transformer, controller, pruner, [prompt], step)
                    for objective in OBJECTIVES:
                        loss = distillation_loss(velocity, target, trajectories, [prompt], step, objective)
                        errors[objective].append(float(loss))
                for objective in OBJECTIVES:
                    per_step[objective].append(statistics.fmean(errors[objective]))
    finally:
        remove_pruner(transformer)
    return per_step


def main() -> None:
    router_dir, prompt_count, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    prompts = HELD_OUT_PROMPTS[:prompt_count]
    sampling = sampling_config(None, prompts[0], {})
    pipe = load_pipeline(sampling.model)
    trained, meta = load_router(router_dir)
    training = meta.get("training", {})
    restore = training.get("restore", "none")
    untrained = RouterNet.seeded(training.get("seed", 0), **trained.spec)
    with torch.no_grad():
        trajectories = collect_trajectories(pipe, prompts, sampling, 0, lambda done: None, guided=True)
    report = {"router": str(router_dir), "restore": restore, "prompts": prompt_count, "steps": sampling.steps}
    for name, net in (("trained", trained), ("untrained", untrained)):
        pruner = RouterPruner(PruneConfig(method="router", reduction=0.3, restore=restore), net=net.eval(), meta=meta)
        per_step = one_step_errors(pipe, trajectories, pruner, prompt_count, sampling.steps)
        report[name] = {objective: {"mean": statistics.fmean(values), "per_step": values}
                        for objective, values in per_step.items()}
        print(name, {objective: round(entry["mean"], 5) for objective, entry in report[name].items()}, flush=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
