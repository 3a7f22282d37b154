"""Train a learned token router (`pruning/router.py`) by distillation from the dense model, and evaluate it.

    vidprune train-router --prompts FILE --target-reduction 0.3 --steps 200 --out DIR
    python -m vidgen_prune.router_training evaluate --router DIR --prompts 4

Training data needs no videos:
1. Teacher trajectories: the dense pipeline generates every prompt (seeded, with CFG) for `sample_steps`
   steps while a hook records each transformer call's keyword inputs per sample (latents, timestep, text
   embedding, and whatever else the family passes: masks, grid sizes) and its velocity. Those are exactly the
   states the pruned model meets at inference, and the dense velocities are the targets.
2. Distillation: each optimiser step takes one denoising step s and `batch` prompts (both CFG passes of
   each), runs the transformer with the router pruner at step s (bin interpolation, router gates, and the
   restoration of skipped tokens the router will run with, `restore`), and minimises the distillation loss +
   ratio_weight · L_ratio. The transformer is frozen; only the routers and the per-layer ratios train.
   `objective` picks the distillation loss: "pass" matches each CFG pass's velocity; "guided" matches the
   velocity the sampler steps with (cond and uncond mixed by the guidance scale), which is what the video
   follows: with guidance g it weighs the cond pass's error g² and lets errors both passes share cancel. The
   mix is read from the pipeline, not assumed: the dense run records what reaches `scheduler.step`, and the
   weights that make that velocity from the step's passes are fitted by least squares (Wan at g = 5: 5, −4).
Each step's random choices come from (seed, step) alone and the optimiser state is checkpointed, so a run
resumed from a checkpoint ends exactly where an uninterrupted one does.

A checkpoint folder holds router.safetensors + router.yaml (what `--method router --router DIR` loads),
train_state.safetensors (Adam moments), losses.csv and loss.png.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import GenerateConfig, check_finite, check_seed
from .outputs import atomic_files, save_png, write_json, writing
from .pruning.router import (
    BIN,
    MIN_RETENTION,
    STEP_SWING,
    RouterNet,
    check_fits,
    model_fingerprint,
    read_router_meta,
    save_router,
)

STATE_FILE, LOSSES_FILE, PLOT_FILE = "train_state.safetensors", "losses.csv", "loss.png"
LOSS_COLUMNS = ("step", "distill", "ratio", "mean_ratio", "elapsed_s")
OBJECTIVES = ("pass", "guided")
# settings a checkpoint written before they existed was trained with (its router.yaml does not name them)
SETTINGS_BEFORE_NAMED = {"objective": "pass", "restore": "none"}
MIX_TOLERANCE = 1e-3  # relative residual of the fitted CFG mix: float32 rounding is ~1e-6, a non-linear mix far more


@dataclass(frozen=True)
class TrainRouterConfig:
    prompts: tuple[str, ...]  # one teacher trajectory each
    out: Path  # checkpoint folder; resumed when it already holds a checkpoint of the same settings
    sampling: GenerateConfig  # model, steps (= trajectory length), frames, size, guidance of the trajectories
    target_reduction: float = 0.3  # ρ_target = 1 − target_reduction
    steps: int = 200  # optimiser steps
    lr: float = 1e-3  # Adam, routers
    ratio_lr: float = 0.05  # plain steps on ρ(ℓ): with λ = 10 and 8 blocks the mean closes 12 % of its gap a step
    ratio_weight: float = 10.0  # λ of L_ratio = (mean ρ − ρ_target)²
    batch: int = 1  # prompts per optimiser step, each with both CFG passes
    hidden: int = 32  # router width r
    kernel: int = 3  # temporal convolution over latent frames
    checkpoint_every: int = 25
    seed: int = 0
    causal: object | None = None  # a causal.config.CausalConfig: teach on the causal model's own chunk trajectories
    objective: str = "pass"  # pass: each CFG pass's velocity; guided: the velocity the sampler steps with
    restore: str = "none"  # skipped tokens' update while training (the restoration the router will run with)

    def __post_init__(self):
        check_finite(self)
        if not self.prompts:
            raise ValueError("--prompts file holds no prompts")
        check_seed(self.seed)
        check_seed(self.seed + len(self.prompts) - 1, "--seed + prompts - 1 (prompt i is seeded seed + i)")
        if not 0.0 <= self.target_reduction <= 1.0 - MIN_RETENTION:
            raise ValueError(f"--target-reduction must be in [0, {1.0 - MIN_RETENTION:g}], got {self.target_reduction}")
        for name in ("steps", "batch", "hidden", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"--kernel must be odd and positive, got {self.kernel}")
        if self.batch > len(self.prompts):
            raise ValueError(f"--batch {self.batch} exceeds the {len(self.prompts)} prompts")
        for name in ("lr", "ratio_lr", "ratio_weight"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out is a file, not a folder: {self.out}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "guided" and self.causal is not None:  # the chunk sampler steps without a scheduler
            raise ValueError("--objective guided reads the pipeline's scheduler; with --causal use --objective pass")
        from .pruning.restore import RESTORES

        if self.restore not in RESTORES:
            raise ValueError(f"unknown --restore {self.restore!r}; choose from {', '.join(RESTORES)}")

    def settings(self) -> dict:
        """What a resumed run must share with the checkpoint it continues (`steps` may grow)."""
        sampling = self.sampling
        return {
            "target_reduction": self.target_reduction,
            "seed": self.seed,
            "lr": self.lr,
            "ratio_lr": self.ratio_lr,
            "ratio_weight": self.ratio_weight,
            "batch": self.batch,
            "sample_steps": sampling.steps,
            "frames": sampling.frames,
            "height": sampling.height,
            "width": sampling.width,
            "guidance": sampling.guidance,
            "prompts": len(self.prompts),
            "prompts_sha256": hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16],
            "objective": self.objective,
            "restore": self.restore,
        } | ({"causal": asdict(self.causal)} if self.causal is not None else {})


def read_prompts(path: Path) -> tuple[str, ...]:
    """Non-empty lines of a text file, `#` comments left out."""
    if not path.is_file():
        raise ValueError(f"--prompts file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not part of prompt 1
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--prompts file {path} is unreadable ({type(error).__name__})") from error
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def sampling_config(model: str | None, prompt: str, overrides: dict, causal_flags: dict | None = None):
    """The trajectories' generation settings: dataclass defaults < the model's preset < flags. With `causal_flags`
    (train a router for causal generation): the model's causal preset, and returns (GenerateConfig, CausalConfig)
    with the GenerateConfig's steps the steps per chunk."""
    from dataclasses import replace

    from .causal.config import CausalConfig
    from .presets import default_preset, load_preset, merged

    preset_name = default_preset(model, causal=causal_flags is not None)
    preset = load_preset(preset_name) if preset_name else None
    values = merged("generate", preset, {**overrides, "model": model, "prompt": prompt})
    if "out" in values:
        raise ValueError(f"preset {preset_name}: generate.out names one video; train-router writes into --out")
    if causal_flags is None:
        return GenerateConfig(**values)
    if overrides.get("steps") is not None:
        raise ValueError("--causal denoises each chunk separately: give --chunk-steps instead of --sample-steps")
    causal = CausalConfig(**merged("causal", preset, causal_flags))
    return replace(GenerateConfig(**values), steps=causal.chunk_steps), causal


def checkpoint_step(config: TrainRouterConfig) -> int:
    """0 for a fresh folder, else the step of the checkpoint in `config.out`; ValueError if its settings differ."""
    if not (config.out / "router.yaml").exists():
        return 0
    meta = read_router_meta(config.out)
    trained = meta.get("training", {})
    different = [key for key, value in config.settings().items()
                 if trained.get(key, SETTINGS_BEFORE_NAMED.get(key)) != value]
    spec = meta["router"]
    different += [key for key in ("hidden", "kernel") if spec[key] != getattr(config, key)]
    if different:
        raise ValueError(
            f"--out {config.out} holds a router trained with other settings ({', '.join(different)}); "
            "choose another --out or repeat the original settings to resume"
        )
    return int(meta["step"])


# ---------------------------------------------------------------------------------------------------------------
# Teacher trajectories
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TeacherCall:
    inputs: dict  # the forward's keyword arguments for one sample: its row of each batched tensor, the rest as given
    batched: frozenset  # the names in `inputs` that are rows of a batched tensor
    velocity: torch.Tensor  # the dense model's output for the sample, (C, F, H, W) or packed (S, C)


@dataclass
class GuidedStep:
    velocity: torch.Tensor  # what the sampler stepped with for the prompt, shaped like one sample's velocity
    mix: torch.Tensor  # (S,) weights: velocity = Σ mix[i] · (the step's sample i)


@dataclass
class Trajectories:
    """The teacher of a pipeline's generations; `replay` runs one of its steps through the (pruned) transformer."""

    calls: list[list[list[TeacherCall]]]  # [prompt][step] → the step's samples (cond and uncond, in whatever calls)
    grid: dict = field(default_factory=dict)  # latent token grid: frames, height, width
    guided: list[list[GuidedStep]] = field(default_factory=list)  # [prompt][step]

    @property
    def count(self) -> int:
        """Steps a training step draws from: the denoising steps."""
        return len(self.calls[0])

    def session(self, transformer, controller):
        """What the transformer runs under while it trains on these trajectories: nothing more than the pruner."""
        return nullcontext()

    def replay(self, transformer, controller, pruner, prompts: list[int], step: int):
        """(velocity of the pruned transformer, dense velocity) of `prompts` at denoising `step`."""
        inputs, target = self.batch(prompts, step)
        controller.reset(num_steps=self.count)
        pruner.forced_step = step
        return transformer(**inputs)[0], target  # (B, C, F, H, W), or packed (B, S, C)

    def batch(self, prompts: list[int], step: int) -> tuple[dict, torch.Tensor]:
        """Transformer keyword arguments and dense velocities (B, ...) of `prompts` at denoising `step`."""
        calls = [call for prompt in prompts for call in self.calls[prompt][step]]
        first = calls[0]
        inputs = {name: torch.stack([call.inputs[name] for call in calls]) if name in first.batched else value
                  for name, value in first.inputs.items()}  # (B, ...) each batched tensor
        return inputs | {"return_dict": False}, torch.stack([call.velocity for call in calls])

    def guided_batch(self, prompts: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixing matrix (P, B) from the rows of `batch(prompts, step)` to each prompt's guided velocity, and
        the dense guided velocities (P, ...)."""
        steps = [self.guided[prompt][step] for prompt in prompts]
        mix = torch.block_diag(*[guided.mix[None, :] for guided in steps])  # (P, B)
        return mix, torch.stack([guided.velocity for guided in steps])


def fitted_mix(samples: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """(S,) weights w with guided ≈ Σ w[i]·samples[i] (least squares; samples (S, ...), guided (...)); ValueError
    when no fixed linear mix reproduces it (a guidance rescale or a guidance that changes the passes)."""
    basis = samples.flatten(1).double().T  # (E, S)
    target = guided.flatten().double()  # (E,)
    weights = torch.linalg.lstsq(basis, target[:, None]).solution[:, 0]  # (S,)
    residual = float((basis @ weights - target).norm() / target.norm().clamp(min=1e-12))
    if residual > MIX_TOLERANCE:
        raise ValueError(f"--objective guided: the sampler's velocity is not a fixed mix of the transformer passes "
                         f"(relative residual {residual:.2g}); use --objective pass")
    return weights.float()


@torch.no_grad()
def collect_trajectories(
    pipe, prompts: tuple[str, ...], sampling: GenerateConfig, seed: int, on_prompt: Callable[[int], None],
    guided: bool = False,
) -> Trajectories:
    """Generate every prompt densely (seed + its index) and record every transformer call (module docstring);
    `guided`: also each step's guided velocity and its mix of the passes."""
    from dataclasses import replace

    from .config import PruneConfig
    from .engine import generate
    from .models import adapter_for

    transformer = pipe.transformer
    trajectories = Trajectories(calls=[])

    def record(module, args, kwargs, output):
        """Each sample of the call (Wan: one per CFG pass; LTX-Video: both passes in one batched call)."""
        trajectories.grid = asdict(adapter_for(transformer).token_grid(transformer, (), kwargs))
        batch = kwargs["hidden_states"].shape[0]
        given = {name: value for name, value in kwargs.items() if name != "return_dict"}
        batched = frozenset(name for name, value in given.items()
                            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch)
        for row in range(batch):
            inputs = {name: value[row].clone() if name in batched else value for name, value in given.items()}
            trajectories.calls[-1][-1].append(TeacherCall(inputs, batched, output[0][row].clone()))

    scheduler_step = pipe.scheduler.step

    def record_guided(model_output, *args, **kwargs):
        """The velocity the sampler steps with (one prompt: batch 1), against the step's recorded samples."""
        samples = torch.stack([call.velocity for call in trajectories.calls[-1][-1]])  # (S, ...)
        velocity = model_output[0].detach().clone()
        trajectories.guided[-1].append(GuidedStep(velocity, fitted_mix(samples, velocity)))
        return scheduler_step(model_output, *args, **kwargs)

    handle = transformer.register_forward_hook(record, with_kwargs=True)
    if guided:
        pipe.scheduler.step = record_guided  # an instance attribute over the class's method, deleted below
    try:
        for index, prompt in enumerate(prompts):
            trajectories.calls.append([[]])
            trajectories.guided.append([])
            # each finished step opens the next step's list; the one opened after the last step is dropped
            generate(pipe, replace(sampling, prompt=prompt, seed=seed + index), PruneConfig(method="dense"),
                     on_step=lambda done, total: trajectories.calls[-1].append([]), decode=False)
            trajectories.calls[-1].pop()
            on_prompt(index + 1)
    finally:
        handle.remove()
        if guided:
            del pipe.scheduler.step
    return trajectories


# ---------------------------------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    net: RouterNet
    first_step: int  # 0, or the step a resumed run started from
    losses: list[dict]  # one row per optimiser step since step 0: LOSS_COLUMNS
    collect_s: float  # teacher trajectories
    train_s: float  # distillation, this session


def make_optimizer(net: RouterNet, config: TrainRouterConfig) -> torch.optim.Adam:
    """Adam for the routers; the ratios take plain gradient steps (`RouterNet.descend_ratios`)."""
    return torch.optim.Adam(net.routers.parameters(), lr=config.lr)


def train_router(
    pipe,
    config: TrainRouterConfig,
    on_collect: Callable[[int, int], None] = lambda done, total: None,
    on_step: Callable[[dict], None] = lambda row: None,
) -> TrainResult:
    """Train (or resume) the router for `pipe`'s transformer, checkpointing into `config.out`.

    Call `checkpoint_step(config)` first to refuse a foreign checkpoint before loading the model.
    """
    from .config import PruneConfig
    from .pruning.hooks import apply_pruner, remove_pruner
    from .pruning.router import RouterPruner

    transformer = pipe.transformer.requires_grad_(False)
    fingerprint = model_fingerprint(transformer)
    spec = {
        "num_layers": fingerprint["blocks"],
        "width": fingerprint["width"],
        "hidden": config.hidden,
        "kernel": config.kernel,
    }
    net = RouterNet.seeded(config.seed, **spec).to(transformer.device)
    optimizer = make_optimizer(net, config)
    first_step = checkpoint_step(config)
    losses = resume_checkpoint(net, optimizer, config.out, first_step, transformer) if first_step else []
    if first_step >= config.steps:
        return TrainResult(net.eval(), first_step, losses, 0.0, 0.0)

    start = time.perf_counter()

    def on_prompt(done: int) -> None:
        on_collect(done, len(config.prompts))

    if config.causal is None:
        trajectories = collect_trajectories(pipe, config.prompts, config.sampling, config.seed, on_prompt,
                                            guided=config.objective == "guided")
    else:
        from .causal.trajectories import collect_causal_trajectories

        trajectories = collect_causal_trajectories(pipe, config.prompts, config.sampling, config.causal,
                                                   config.seed, on_prompt)
    collect_s = time.perf_counter() - start
    name = config.sampling.model or ("embedded:tiny-wan" if config.causal is None else "embedded:tiny-wan-causal")
    meta = {
        "model": {**fingerprint, "name": name, "grid": trajectories.grid},
        "bins": {"width": BIN, "min_retention": MIN_RETENTION, "step_swing": STEP_SWING},
        "target_reduction": config.target_reduction,
        "training": config.settings(),
    }

    pruner = RouterPruner(PruneConfig(method="router", reduction=config.target_reduction, restore=config.restore),
                          net=net.train(), meta=meta)
    controller = apply_pruner(transformer, pruner, kernels="torch")
    target_retention = 1.0 - config.target_reduction
    start = time.perf_counter()
    elapsed_before = losses[-1]["elapsed_s"] if losses else 0.0
    try:
        with trajectories.session(transformer, controller):
            for step in range(first_step, config.steps):
                rng = np.random.default_rng([config.seed, step])  # (seed, step) alone: resuming repeats the draws
                drawn = int(rng.integers(trajectories.count))  # a denoising step (causal: a chunk call)
                prompts = rng.choice(len(config.prompts), size=config.batch, replace=False).tolist()
                velocity, target = trajectories.replay(transformer, controller, pruner, prompts, drawn)
                distill = distillation_loss(velocity, target, trajectories, prompts, drawn, config.objective)
                ratio = net.ratio_loss(target_retention)
                optimizer.zero_grad(set_to_none=True)
                net.layer_ratios.grad = None
                (distill + config.ratio_weight * ratio).backward()
                optimizer.step()
                net.descend_ratios(config.ratio_lr)
                row = {
                    "step": step + 1,
                    "distill": float(distill.detach()),
                    "ratio": float(ratio.detach()),
                    "mean_ratio": float(net.layer_ratios.detach().mean()),
                    "elapsed_s": elapsed_before + time.perf_counter() - start,
                }
                losses.append(row)
                on_step(row)
                if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                    write_checkpoint(net, optimizer, losses, {**meta, "step": step + 1, "final": row}, config.out)
    finally:
        remove_pruner(transformer)
    with atomic_files(config.out / PLOT_FILE) as (plot_partial,):  # ~1 s: once, not at every checkpoint
        plot_losses(losses, plot_partial)
    return TrainResult(net.eval(), first_step, losses, collect_s, time.perf_counter() - start)


def distillation_loss(velocity: torch.Tensor, target: torch.Tensor, trajectories: Trajectories, prompts: list[int],
                      step: int, objective: str) -> torch.Tensor:
    """MSE of the pruned velocities (B, ...) against the dense ones, per pass or of the guided mix. The guided MSE is
    divided by Σ w² of the mix, so that errors independent between the passes weigh as they do per pass."""
    if objective == "pass":
        return torch.nn.functional.mse_loss(velocity.float(), target.float())
    mix, guided = trajectories.guided_batch(prompts, step)  # (P, B), (P, ...)
    mixed = torch.tensordot(mix.to(velocity.device), velocity.float(), dims=1)  # (P, ...)
    return torch.nn.functional.mse_loss(mixed, guided.to(velocity.device).float()) / mix.square().sum(1).mean()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------


def write_checkpoint(net: RouterNet, optimizer, losses: list[dict], meta: dict, out: Path) -> None:
    """Optimiser state and loss log first, the router (whose YAML names the step) last; each file is
    written under a temporary name and renamed, so an interruption leaves the previous checkpoint readable."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    moments = {
        f"{index}.{key}": value.contiguous()
        for index, entries in optimizer.state_dict()["state"].items()
        for key, value in entries.items()
    }  # Adam: step, exp_avg, exp_avg_sq per parameter
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=LOSS_COLUMNS)
    writer.writeheader()
    writer.writerows(losses)
    with atomic_files(out / STATE_FILE, out / LOSSES_FILE) as (state_partial, losses_partial):
        with writing(state_partial):
            save_file(moments, state_partial, metadata={"step": str(meta["step"])})
        with writing(losses_partial):
            losses_partial.write_text(table.getvalue())
    save_router(net, out, meta)


def resume_checkpoint(net: RouterNet, optimizer, out: Path, step: int, transformer) -> list[dict]:
    """Load the router, Adam moments and loss log of the checkpoint at `step` in `out`; returns the log."""
    from safetensors import safe_open

    from .pruning.router import load_router

    trained, meta = load_router(out)
    check_fits(meta, transformer, str(out))
    net.load_state_dict(trained.state_dict())
    try:
        with safe_open(out / STATE_FILE, framework="pt") as state_file:
            if int(state_file.metadata()["step"]) != step:
                raise ValueError(f"{STATE_FILE} is from another step than router.yaml")
            moments: dict[int, dict] = {}
            for name in state_file.keys():
                index, key = name.split(".", 1)
                moments.setdefault(int(index), {})[key] = state_file.get_tensor(name)
        optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
        with open(out / LOSSES_FILE, newline="") as handle:
            rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise ValueError(f"cannot resume from {out}: {error}") from error
    return [{**row, "step": int(row["step"])} for row in rows if row["step"] <= step]


def plot_losses(losses: list[dict], path: Path) -> None:
    """Distillation loss (log scale) and mean layer ratio against the optimiser step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in losses]
    distill = np.array([row["distill"] for row in losses])
    window = max(1, min(20, len(distill) // 5))  # each step draws one denoising step: the raw loss jumps tenfold
    smoothed = np.convolve(distill, np.ones(window) / window, mode="valid")
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(steps, distill, color="tab:blue", linewidth=0.5, alpha=0.4, label="velocity MSE")
    loss_axis.plot(steps[window - 1 :], smoothed, color="tab:blue", label=f"mean of {window} steps")
    loss_axis.legend(loc="upper left")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("optimiser step")
    loss_axis.set_ylabel("velocity MSE vs dense", color="tab:blue")
    ratio_axis = loss_axis.twinx()
    ratio_axis.plot(steps, [row["mean_ratio"] for row in losses], color="tab:orange", label="mean ρ(ℓ)")
    ratio_axis.set_ylabel("mean layer ratio ρ", color="tab:orange")
    figure.suptitle("train-router: distillation loss and mean retention ratio")
    figure.tight_layout()
    save_png(figure, path, dpi=100)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: trained router vs its untrained initialisation vs TAPE, on held-out prompts
# ---------------------------------------------------------------------------------------------------------------


def evaluate(pipe, router: Path, prompts: tuple[str, ...], sampling: GenerateConfig, reduction: float,
             restore: str | None = None) -> dict:
    """PSNR against the dense video of the same seed, kept fraction and transformer time, per method.

    "untrained" is the router a `train-router` run with the checkpoint's seed starts from (step 0): the
    same architecture, the alternating ratio initialisation and the same budget calibration. All three run with
    the same restoration of skipped tokens: `restore`, or the one the router was trained with.
    """
    import tempfile
    from dataclasses import replace

    from .config import PruneConfig
    from .engine import generate
    from .metrics import psnr
    from .presets import default_preset, load_preset, merged
    from .pruning import check_pruner
    from .pruning.router import load_router

    trained, meta = load_router(router)
    restore = restore or meta.get("training", {}).get("restore", "none")
    preset_name = default_preset(sampling.model)
    preset = load_preset(preset_name) if preset_name else None
    with tempfile.TemporaryDirectory() as scratch:
        untrained_dir = Path(scratch)
        untrained = RouterNet.seeded(meta.get("training", {}).get("seed", 0), **trained.spec)
        save_router(untrained, untrained_dir, {**meta, "step": 0})
        methods = {
            "router": PruneConfig(method="router", reduction=reduction, router=str(router), restore=restore),
            "untrained router": PruneConfig(method="router", reduction=reduction, router=str(untrained_dir),
                                            restore=restore),
            "tape": PruneConfig(**merged("prune", preset, {"method": "tape", "reduction": reduction,
                                                           "restore": restore})),
        }
        for config in methods.values():
            check_pruner(config, pipe.transformer)
        rows = []
        for prompt in prompts:
            gen = replace(sampling, prompt=prompt)
            dense = generate(pipe, gen, PruneConfig(method="dense"))
            for name, config in methods.items():
                result = generate(pipe, gen, config)
                rows.append(
                    {
                        "prompt": prompt,
                        "method": name,
                        "psnr": psnr(dense.frames, result.frames),
                        "kept_fraction": result.kept_fraction,
                        "transformer_s": result.transformer_s,
                        "dense_transformer_s": dense.transformer_s,
                    }
                )
    summary = {
        name: {
            key: float(np.mean([row[key] for row in rows if row["method"] == name]))
            for key in ("psnr", "kept_fraction", "transformer_s", "dense_transformer_s")
        }
        for name in methods
    }
    return {
        "router": str(router),
        "reduction": reduction,
        "restore": restore,
        "prompts": list(prompts),
        "generate": {key: value for key, value in asdict(sampling).items() if key not in ("prompt", "out")},
        "summary": summary,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m vidgen_prune.router_training evaluate ...`: the held-out comparison, as a table and JSON."""
    from rich.console import Console
    from rich.table import Table

    from .engine import load_pipeline
    from .tiny.prompts import HELD_OUT_PROMPTS

    parser = argparse.ArgumentParser(prog="python -m vidgen_prune.router_training")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("evaluate", help="trained vs untrained router vs TAPE: PSNR against dense")
    run.add_argument("--router", type=Path, default=None, help="router folder (default: the embedded model's)")
    run.add_argument("--model", default=None, help="pipeline folder or hub id (default: the embedded model)")
    run.add_argument("--prompts", type=int, default=4, help="how many held-out prompts of the embedded model")
    run.add_argument("--prompts-file", type=Path, default=None, help="prompts for another model, one a line")
    run.add_argument("--reduction", type=float, default=0.3)
    run.add_argument("--restore", default=None, help="restoration of all three (default: the router's training one)")
    run.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's preset)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=None)
    run.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .pruning.router import DEFAULT_ROUTER_DIR

    prompts = read_prompts(args.prompts_file) if args.prompts_file else HELD_OUT_PROMPTS[: args.prompts]
    sampling = sampling_config(args.model, prompts[0], {"steps": args.steps, "seed": args.seed})
    pipe = load_pipeline(sampling.model)
    report = evaluate(pipe, args.router or DEFAULT_ROUTER_DIR, prompts, sampling, args.reduction, args.restore)
    table = Table(
        title=f"{len(prompts)} prompts, reduction {args.reduction:g}, restore {report['restore']}, "
              f"{sampling.steps} steps, seed {args.seed}"
    )
    for column in ("method", "PSNR vs dense (dB)", "kept fraction", "transformer s (dense)"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, figures in report["summary"].items():
        table.add_row(
            name,
            f"{figures['psnr']:.2f}",
            f"{figures['kept_fraction']:.4f}",
            f"{figures['transformer_s']:.2f} ({figures['dense_transformer_s']:.2f})",
        )
    Console().print(table)
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
