"""`vidprune generate --causal`: one prompt → one MP4 streamed chunk by chunk (+ JSON sidecar with chunk timings)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import typer

from .common import bad_input, console, key_value_table, print_json, runtime_failure


def build_causal_configs(generate_flags: dict, causal_flags: dict, preset_name: str | None):
    """GenerateConfig, dense PruneConfig, CausalConfig and the preset's name; raises ValueError on bad input.

    `--steps` counts a bidirectional generation's steps; a causal one's are per chunk (`--chunk-steps`), which the
    sidecar's generate.steps then records."""
    from ..causal.config import CausalConfig
    from ..presets import default_preset, load_preset, merged
    from .generate import build_configs

    preset_name = preset_name or default_preset(generate_flags.get("model"), causal=True)
    preset = load_preset(preset_name) if preset_name else None
    causal = CausalConfig(**merged("causal", preset, causal_flags))
    gen, prune, _ = build_configs(generate_flags, dict(method="dense", reduction=0.0), preset_name)
    return replace(gen, steps=causal.chunk_steps), prune, causal, preset_name


def _refuse_what_causal_cannot_do_yet(ctx: typer.Context, generate_flags: dict, prune_flags: dict, prompts) -> None:
    # typer carries its own click: compare the parameter source by name (DEFAULT = not on the command line)
    given = {name for name in ("method", "reduction") if ctx.get_parameter_source(name).name != "DEFAULT"}
    if (prune_flags["method"] != "dense" and "method" in given) or (prune_flags["reduction"] and "reduction" in given):
        raise ValueError("pruning inside causal chunks is not available yet: run --causal without --method/--reduction")
    if generate_flags["steps"] is not None:
        raise ValueError("--causal denoises each chunk separately: give --chunk-steps instead of --steps")
    if prompts is not None:
        raise ValueError("--causal takes one --prompt (batch mode with --prompts comes later)")
    if generate_flags["prompt"] is None:
        raise ValueError("give --prompt TEXT")


def generate_causal(ctx: typer.Context, generate_flags: dict, prune_flags: dict, causal_flags: dict,
                    preset: str | None, prompts: Path | None, json_output: bool, verbose: bool) -> None:
    with bad_input():
        _refuse_what_causal_cannot_do_yet(ctx, generate_flags, prune_flags, prompts)
        gen, prune, causal, preset_name = build_causal_configs(generate_flags, causal_flags, preset)
        from ..outputs import check_writable

        out_path = gen.out or Path(f"vidprune_causal_seed{gen.seed}.mp4")
        check_writable(out_path)
        weights = None
        if causal.transformer_weights:
            from ..causal.pipeline import read_transformer_weights

            weights = read_transformer_weights(causal.transformer_weights, gen.model)

    with runtime_failure(verbose):
        from ..causal.pipeline import load_causal_pipeline
        from ..causal.sampler import generate_causal as run_causal
        from ..engine import sidecar
        from ..outputs import Mp4Encoder, atomic_files, write_json_to

        pipe = load_causal_pipeline(gen.model, gen.device, gen.dtype, weights)
        # streamed: each chunk's frames are encoded as soon as they are decoded; the MP4 and its sidecar reach their
        # paths together, once both are complete
        with atomic_files(out_path, out_path.with_suffix(".json")) as (video_partial, sidecar_partial):
            with Mp4Encoder(video_partial, gen.fps) as video, _chunk_progress() as progress:
                task = progress.add_task("chunks", total=None)

                def on_frames(chunk: int, frames) -> None:
                    video.append(frames)
                    progress.update(task, completed=chunk + 1)

                result = run_causal(pipe, gen, causal, on_frames=on_frames)
            record = sidecar(gen, prune, result, preset_name)
            record["model"] = gen.model or "embedded:tiny-wan-causal"
            record["causal"] = {**asdict(causal), "chunks": len(result.chunk_frames),
                                "chunk_latent_frames": result.chunk_frames}
            write_json_to(record, sidecar_partial)

    timings = result.timings()
    if json_output:
        print_json({"video": str(out_path), "sidecar": str(out_path.with_suffix(".json")), "causal": record["causal"],
                    "timings": timings})
        return
    console.print(key_value_table(
        f"causal, {len(result.chunk_frames)} chunks of {causal.chunk_frames} latent frames → {out_path}",
        [
            ("total latency", f"{timings['total_s']:.2f} s"),
            ("first chunk", f"{timings['first_chunk_s']:.2f} s"),
            ("per chunk", ", ".join(f"{s:.2f}" for s in timings["chunk_s"]) + " s"),
            ("transformer", f"{timings['transformer_s']:.2f} s in {timings['transformer_calls']} calls"),
            ("frames/s", f"{timings['frames_per_s']:.2f}"),
            ("KV cache (peak)", f"{timings['kv_cache_peak_mb']:,.1f} MB"),
            ("peak memory", f"{timings['peak_memory_mb']:,.0f} MB"),
        ],
    ))


def _chunk_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("chunks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)
