"""`vidprune train-router`: distil a learned token router (`--method router`) from the dense model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    Causal,
    ChunkFrames,
    ChunkSteps,
    Device,
    Frames,
    Guidance,
    Height,
    KvWindow,
    Model,
    Restore,
    Seed,
    SinkFrames,
    Width,
    bad_input,
    check_model,
    console,
    key_value_table,
    runtime_failure,
    warn_unknown_words,
)


def train_router(
    prompts: Annotated[Path, typer.Option(help="Text file of training prompts, one a line ('#' comments).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder; rerun the same command to resume.")],
    model: Model = None,
    target_reduction: Annotated[float, typer.Option(help="Mean fraction of token·block computations to skip.")] = 0.3,
    steps: Annotated[int, typer.Option(help="Optimiser steps (in total, counting resumed ones).")] = 200,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the routers.")] = 1e-3,
    ratio_lr: Annotated[float, typer.Option(help="Gradient step size of the per-layer ratios ρ(ℓ).")] = 0.05,
    ratio_weight: Annotated[float, typer.Option(help="Weight λ of L_ratio = (mean ρ − ρ_target)².")] = 10.0,
    batch: Annotated[int, typer.Option(help="Prompts per optimiser step (each with both CFG passes).")] = 1,
    sample_steps: Annotated[
        Optional[int], typer.Option(help="Denoising steps of the teacher trajectories; default: the model's preset.")
    ] = None,
    frames: Frames = None,
    height: Height = None,
    width: Width = None,
    guidance: Guidance = None,
    checkpoint_every: Annotated[int, typer.Option(help="Optimiser steps between checkpoints.")] = 25,
    objective: Annotated[
        str, typer.Option(help="pass: match each CFG pass's velocity; guided: the velocity the sampler steps with.")
    ] = "pass",
    restore: Restore = None,
    seed: Seed = None,
    device: Device = None,
    causal: Causal = False,
    chunk_frames: ChunkFrames = None,
    chunk_steps: ChunkSteps = None,
    kv_window: KvWindow = None,
    sink_frames: SinkFrames = None,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Tracebacks and library logs."),
) -> None:
    """Train a per-block temporal router and per-layer retention ratios by matching the dense model's velocity.

    With --causal: for chunk-by-chunk generation, on the causal model's own chunk trajectories (default model: the
    embedded causal one)."""
    with bad_input():
        from ..outputs import check_writable
        from ..router_training import TrainRouterConfig, checkpoint_step, read_prompts, sampling_config

        prompt_list = read_prompts(prompts)
        causal_flags = dict(chunk_frames=chunk_frames, chunk_steps=chunk_steps, kv_window=kv_window,
                            sink_frames=sink_frames)
        given = [f"--{name.replace('_', '-')}" for name, value in causal_flags.items() if value is not None]
        if given and not causal:
            raise ValueError(f"{', '.join(given)} only apply with --causal")
        sampling = sampling_config(
            model,
            prompt_list[0] if prompt_list else "-",
            dict(steps=sample_steps, frames=frames, height=height, width=width, guidance=guidance, seed=seed,
                 device=device),
            causal_flags if causal else None,
        )
        sampling, causal_config = sampling if causal else (sampling, None)
        config = TrainRouterConfig(
            prompts=prompt_list, out=out, sampling=sampling,
            target_reduction=target_reduction, steps=steps, lr=lr, ratio_lr=ratio_lr, ratio_weight=ratio_weight,
            batch=batch, checkpoint_every=checkpoint_every, seed=sampling.seed,  # --seed, else the preset's, else 0
            causal=causal_config,
            objective=objective, restore=restore or "none",
        )
        check_writable(out / "router.yaml")
        first_step = checkpoint_step(config)
        from ..config import PruneConfig
        from ..pruning import check_method

        info = check_model(config.sampling, [])
        check_method("router", info.adapter)
        if causal:
            from ..causal.config import check_causal_run

            check_causal_run(config.sampling, PruneConfig(method="router"), info)

    with runtime_failure(verbose):
        sampling = config.sampling
        if causal:
            from ..causal.pipeline import load_causal_pipeline

            pipe = load_causal_pipeline(sampling.model, sampling.device, sampling.dtype)
        else:
            from ..engine import load_pipeline

            pipe = load_pipeline(sampling.model, sampling.device, sampling.dtype, setup=sampling)
    warn_unknown_words(pipe, {f"prompt {i + 1}": text for i, text in enumerate(config.prompts)})
    with bad_input():
        from ..pruning.router import check_fits, read_router_meta

        if first_step:
            check_fits(read_router_meta(out), pipe.transformer, str(out))

    with runtime_failure(verbose):
        result = _train_with_progress(pipe, config, first_step)

    last = result.losses[-1]
    console.print(
        key_value_table(
            f"router for reduction {config.target_reduction:g} → {out}",
            [
                ("optimiser steps", f"{first_step} → {last['step']}"),
                ("teacher trajectories", f"{len(config.prompts)} × {config.sampling.steps} steps"
                                         + (" per chunk" if causal else "")),
                ("collecting them", f"{result.collect_s:.0f} s"),
                ("training", f"{result.train_s:.0f} s"),
                ("velocity MSE (first → last)", f"{result.losses[0]['distill']:.4g} → {last['distill']:.4g}"),
                ("ratio loss", f"{last['ratio']:.3g}"),
                ("mean layer ratio", f"{last['mean_ratio']:.3f} (target {1 - config.target_reduction:.3f})"),
            ],
        )
    )


def _train_with_progress(pipe, config, first_step: int):
    from rich import progress as bar

    from ..router_training import train_router as run_training

    columns = (bar.TextColumn("{task.description}"), bar.BarColumn(), bar.MofNCompleteColumn(),
               bar.TimeElapsedColumn(), bar.TimeRemainingColumn(), bar.TextColumn("{task.fields[losses]}"))
    with bar.Progress(*columns, console=console) as progress:
        collect = progress.add_task("teacher trajectories", total=len(config.prompts), losses="")
        train = progress.add_task("distillation", total=config.steps, completed=first_step, losses="", start=False)

        def on_step(row: dict) -> None:
            progress.start_task(train)
            losses = f"mse {row['distill']:.4g}  L_ratio {row['ratio']:.2g}  mean ρ {row['mean_ratio']:.3f}"
            progress.update(train, completed=row["step"], losses=losses)

        return run_training(
            pipe, config, on_collect=lambda done, total: progress.update(collect, completed=done), on_step=on_step
        )
