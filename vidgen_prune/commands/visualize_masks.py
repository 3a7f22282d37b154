"""`vidprune visualize-masks`: where each method skipped tokens, drawn over its frames, with adjacent-frame IoU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import (
    Causal,
    ChunkFrames,
    ChunkSteps,
    Device,
    Dtype,
    Fps,
    Frames,
    Guidance,
    Height,
    JsonOutput,
    KvWindow,
    Method,
    Model,
    Preset,
    Prompt,
    Reduction,
    Restore,
    Seed,
    SinkFrames,
    Steps,
    Verbose,
    Width,
    bad_input,
    console,
    load_checked_pipeline,
    print_json,
    runtime_failure,
)
from .generate import build_configs

Layer = Annotated[int, typer.Option(help="Transformer block whose mask is drawn (0 = the first).")]
Step = Annotated[int, typer.Option(help="Denoising step whose mask is drawn (0 = the first, noisiest); --causal: "
                                         "each chunk's step.")]
Compare = Annotated[Optional[list[str]], typer.Option(help="Another method drawn beside --method; repeatable.")]
PngPath = Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG grid path; the MP4 goes beside it.")]


def visualize_masks(
    layer: Layer,
    step: Step,
    prompt: Prompt = None,
    method: Method = None,
    compare: Compare = None,
    reduction: Reduction = None,
    restore: Restore = None,
    model: Model = None,
    steps: Steps = None,
    frames: Frames = None,
    height: Height = None,
    width: Width = None,
    guidance: Guidance = None,
    seed: Seed = None,
    fps: Fps = None,
    device: Device = None,
    dtype: Dtype = None,
    preset: Preset = None,
    out: PngPath = None,
    causal: Causal = False,
    chunk_frames: ChunkFrames = None,
    chunk_steps: ChunkSteps = None,
    kv_window: KvWindow = None,
    sink_frames: SinkFrames = None,
    json_output: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Draw each method's keep/skip mask at one block and step over its decoded frames (skipped tokens red),
    side by side as an MP4 and a PNG grid, and print the adjacent-frame IoU of the skipped sets.

    With --causal: generated chunk by chunk; every chunk's mask at its own --step is drawn over its frames."""
    generate_flags = dict(
        prompt=prompt, model=model, steps=steps, frames=frames, height=height, width=width, guidance=guidance,
        seed=seed, fps=fps, device=device, dtype=dtype,
    )
    causal_flags = dict(chunk_frames=chunk_frames, chunk_steps=chunk_steps, kv_window=kv_window,
                        sink_frames=sink_frames)
    with bad_input():
        from ..pruning import MERGING

        given = [f"--{name.replace('_', '-')}" for name, value in causal_flags.items() if value is not None]
        if given and not causal:
            raise ValueError(f"{', '.join(given)} only apply with --causal")

        def prune_flags(name: str | None) -> dict:
            return dict(method=name, reduction=reduction, restore=None if name in MERGING else restore)

        def configs(name: str | None):
            """(gen, prune, causal or None) for one method."""
            if not causal:
                return (*build_configs(generate_flags, prune_flags(name), preset)[:2], None)
            from .generate_causal import build_causal_configs

            return build_causal_configs(generate_flags, prune_flags(name), causal_flags, preset)[:3]

        gen, first, causal_config = configs(method)
        methods = list(dict.fromkeys([first.method, *(compare or [])]))  # --method, else the preset's, else tape
        prunes = [first] + [configs(name)[1] for name in methods[1:]]
        named = f"vidprune_masks_{'_'.join(methods)}_layer{layer}_step{step}.png"
        png = out or (gen.out.with_suffix(".png") if gen.out else Path(named))  # a preset's generate.out names it too
        if png.suffix.lower() != ".png":
            raise ValueError(f"--out must be a .png path (the MP4 goes beside it), got {png}")
        from ..outputs import check_writable

        check_writable(png, png.with_suffix(".mp4"))

    if causal_config is None:
        pipe = load_checked_pipeline(gen, prunes, verbose)
    else:
        from .generate_causal import causal_loader, check_loaded

        with bad_input():
            load = causal_loader(causal_config, gen.model)
        with runtime_failure(verbose):
            pipe = load(gen)
        for prune in prunes:
            check_loaded(pipe, prune)
    with bad_input():
        from ..viz import check_position

        check_position(pipe, gen, layer, step, causal_config)

    with runtime_failure(verbose):
        from ..viz import TokenGeometry, mask_views, write_mask_files

        views = mask_views(pipe, gen, prunes, layer, step, causal_config)
        video = write_mask_files(views, png, TokenGeometry.of(pipe), layer, step, gen.fps)

    if json_output:
        print_json({"png": str(png), "video": str(video), "layer": layer, "step": step,
                    "methods": [view.to_dict() for view in views]})
        return
    table = Table(
        title=f"adjacent-frame IoU of skipped tokens at block {layer}, step {step} → {png}",
        caption="kept: over the whole run; IoU all: mean over every pruned block and step",
        title_justify="left", caption_justify="left",
    )
    for column in ("method", "reduction", "kept", "skipped", "IoU", "IoU all"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for view in views:
        table.add_row(view.method, f"{view.reduction:g}", f"{view.kept_fraction:.3f}", f"{view.skipped_fraction:.3f}",
                      f"{view.iou:.3f}", f"{view.iou_all_blocks:.3f}")
    console.print(table)
