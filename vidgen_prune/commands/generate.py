"""`vidprune generate`: one prompt → one MP4 (+ JSON sidecar), generated with the chosen pruning method."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    Alpha,
    Device,
    Dtype,
    Fps,
    Frames,
    Guidance,
    Height,
    Kernels,
    Method,
    Model,
    NegativePrompt,
    OutPath,
    Preset,
    Prompt,
    Reduction,
    ReselectEvery,
    RouterDir,
    Schedule,
    ScheduleDelta,
    Seed,
    Steps,
    Width,
    bad_input,
    console,
    key_value_table,
    runtime_failure,
)


def build_configs(generate_flags: dict, prune_flags: dict, preset_name: str | None):
    """GenerateConfig and PruneConfig from dataclass defaults < preset < flags; raises ValueError on bad input."""
    from ..config import GenerateConfig, PruneConfig
    from ..presets import default_preset, load_preset, merged

    preset_name = preset_name or default_preset(generate_flags.get("model"))
    preset = load_preset(preset_name) if preset_name else None
    gen = GenerateConfig(**merged("generate", preset, generate_flags))
    prune = PruneConfig(**merged("prune", preset, prune_flags))
    return gen, prune, preset_name


def generate(
    prompt: Prompt,
    method: Method = "tape",
    reduction: Reduction = 0.3,
    model: Model = None,
    negative_prompt: NegativePrompt = None,
    steps: Steps = None,
    frames: Frames = None,
    height: Height = None,
    width: Width = None,
    guidance: Guidance = None,
    seed: Seed = 0,
    fps: Fps = None,
    alpha: Alpha = None,
    reselect_every: ReselectEvery = None,
    schedule: Schedule = None,
    schedule_delta: ScheduleDelta = None,
    kernels: Kernels = None,
    router: RouterDir = None,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    preset: Preset = None,
    out: OutPath = None,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Tracebacks and library logs."),
) -> None:
    """Generate a video with token pruning and report what it cost: latency, throughput, kept fraction."""
    with bad_input():
        gen, prune, preset_name = build_configs(
            dict(
                prompt=prompt, negative_prompt=negative_prompt, model=model, steps=steps, frames=frames,
                height=height, width=width, guidance=guidance, seed=seed, fps=fps, device=device, dtype=dtype,
                out=out,
            ),
            dict(
                method=method, reduction=reduction, alpha=alpha, reselect_every=reselect_every, schedule=schedule,
                schedule_delta=schedule_delta, kernels=kernels, router=router,
            ),
            preset,
        )
        from ..engine import check_writable

        out_path = out or Path(f"vidprune_{prune.method}_r{prune.reduction:g}_seed{gen.seed}.mp4")
        check_writable(out_path)

    with runtime_failure(verbose):
        from ..engine import load_pipeline

        pipe = load_pipeline(gen.model, gen.device, gen.dtype)
    with bad_input():
        from ..pruning import check_pruner

        check_pruner(prune, pipe.transformer)

    with runtime_failure(verbose):
        result = _run_with_progress(pipe, gen, prune)
        from ..engine import sidecar, write_json, write_video

        write_video(result.frames, out_path, gen.fps)
        write_json(sidecar(gen, prune, result, preset_name), out_path.with_suffix(".json"))

    timings = result.timings()
    console.print(
        key_value_table(
            f"{prune.method} at reduction {prune.reduction:g} → {out_path}",
            [
                ("total latency", f"{timings['total_s']:.2f} s"),
                ("per step", f"{timings['mean_step_s'] * 1000:.0f} ms"),
                ("transformer", f"{timings['transformer_s']:.2f} s in {timings['transformer_calls']} calls"),
                ("frames/s", f"{timings['frames_per_s']:.2f}"),
                ("tokens/s", f"{timings['tokens_per_s']:,.0f}"),
                ("tokens per forward", f"{result.tokens_per_forward:,}"),
                ("kept fraction", f"{result.kept_fraction:.3f}"),
                ("peak memory", f"{timings['peak_memory_mb']:,.0f} MB"),
            ],
        )
    )


def _run_with_progress(pipe, gen, prune):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..engine import generate as run_generation

    columns = (TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("denoising", total=gen.steps)
        return run_generation(pipe, gen, prune, on_step=lambda done, total: progress.update(task, completed=done))
