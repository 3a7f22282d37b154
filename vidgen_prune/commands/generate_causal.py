"""`vidprune generate --causal`: one prompt → one MP4 streamed chunk by chunk (+ JSON sidecar with chunk timings),
or with --prompts FILE every prompt into --out-dir (batch mode, resumable)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import bad_input, check_model, console, key_value_table, print_json, runtime_failure, warn_unknown_words


def build_causal_configs(generate_flags: dict, prune_flags: dict, causal_flags: dict, preset_name: str | None):
    """GenerateConfig, PruneConfig, CausalConfig and the preset's name; raises ValueError on bad input, including
    what causal generation cannot run (`causal.config.check_causal_run`) and a budget out of reach.

    `--steps` counts a bidirectional generation's steps; a causal one's are per chunk (`--chunk-steps`), which the
    sidecar's generate.steps then records. Pruning defaults as for `generate` (tape at 0.3); `--method router` on the
    embedded model takes the router trained for its causal transformer."""
    from ..causal.config import CausalConfig, check_causal_run, default_causal_router
    from ..presets import default_preset, load_preset, merged
    from .generate import build_configs

    if generate_flags.get("steps") is not None:
        raise ValueError("--causal denoises each chunk separately: give --chunk-steps instead of --steps")
    preset_name = preset_name or default_preset(generate_flags.get("model"), causal=True)
    preset = load_preset(preset_name) if preset_name else None
    causal = CausalConfig(**merged("causal", preset, causal_flags))
    gen, prune, _ = build_configs(generate_flags, prune_flags, preset_name, causal=True)
    gen, prune = replace(gen, steps=causal.chunk_steps), default_causal_router(prune, gen.model)
    check_causal_run(gen, prune, check_model(gen, [prune]))
    return gen, prune, causal, preset_name


def causal_loader(causal, model: str | None):
    """A `load(gen)` for the causal pipeline; a `--transformer-weights` file is read (and refused when it does not
    fit the model) now, before anything loads."""
    weights = None
    if causal.transformer_weights:
        from ..causal.pipeline import read_transformer_weights

        weights = read_transformer_weights(causal.transformer_weights, model)

    def load(gen):
        from ..causal.pipeline import load_causal_pipeline

        return load_causal_pipeline(gen.model, gen.device, gen.dtype, weights)

    return load


def generate_causal(generate_flags: dict, prune_flags: dict, causal_flags: dict, preset: str | None,
                    prompts: Path | None, out_dir: Path | None, json_output: bool, verbose: bool) -> None:
    from .generate import _generate_batch, _is_batch

    with bad_input():
        is_batch = _is_batch(generate_flags["prompt"], prompts, generate_flags["out"], out_dir)
    if is_batch:
        with bad_input():
            _, _, causal, _ = build_causal_configs(generate_flags | {"prompt": "-"}, prune_flags, causal_flags, preset)
            load = causal_loader(causal, generate_flags.get("model"))

        def item_configs(item_generate_flags: dict, item_prune_flags: dict):
            gen, prune, causal, preset_name = build_causal_configs(
                generate_flags | item_generate_flags, prune_flags | item_prune_flags, causal_flags, preset)
            return gen, prune, preset_name, causal  # BatchItem's order

        _generate_batch(prompts, out_dir, item_configs, load, json_output, verbose)
        return

    with bad_input():
        if generate_flags["prompt"] is None:
            raise ValueError("give --prompt TEXT")
        gen, prune, causal, preset_name = build_causal_configs(generate_flags, prune_flags, causal_flags, preset)
        from ..outputs import check_writable

        out_path = gen.out or Path(f"vidprune_causal_{prune.method}_r{prune.reduction:g}_seed{gen.seed}.mp4")
        check_writable(out_path, out_path.with_suffix(".json"))
        load = causal_loader(causal, gen.model)

    with runtime_failure(verbose):
        pipe = load(gen)
    check_loaded(pipe, prune)
    warn_unknown_words(pipe, {"prompt": gen.prompt, "negative prompt": gen.negative_prompt})
    with runtime_failure(verbose):
        from ..causal.video import write_causal_video

        with _chunk_progress() as progress:
            task = progress.add_task("chunks", total=None)
            result, record = write_causal_video(pipe, gen, prune, causal, out_path, preset_name,
                                                on_chunk=lambda done: progress.update(task, completed=done))

    timings = result.timings()
    if json_output:
        print_json({"video": str(out_path), "sidecar": str(out_path.with_suffix(".json")), "method": prune.method,
                    "reduction": prune.reduction, "kept_fraction": result.kept_fraction, "causal": record["causal"],
                    "timings": timings})
        return
    console.print(key_value_table(
        f"causal, {len(result.chunk_frames)} chunks of {causal.chunk_frames} latent frames, {prune.method} at "
        f"reduction {prune.reduction:g} → {out_path}",
        [
            ("total latency", f"{timings['total_s']:.2f} s"),
            ("first chunk", f"{timings['first_chunk_s']:.2f} s"),
            ("per chunk", ", ".join(f"{s:.2f}" for s in timings["chunk_s"]) + " s"),
            ("transformer", f"{timings['transformer_s']:.2f} s in {timings['transformer_calls']} calls"),
            ("frames/s", f"{timings['frames_per_s']:.2f}"),
            ("kept fraction", f"{result.kept_fraction:.3f}"),
            ("FLOP bound", f"{result.flop_bound_speedup:.2f}×"),
            ("KV cache (peak)", f"{timings['kv_cache_peak_mb']:,.1f} MB"),
            ("peak memory", f"{timings['peak_memory_mb']:,.0f} MB"),
        ],
    ))


def check_loaded(pipe, prune) -> None:
    """What only the loaded transformer can tell (a router trained for another model): exit 2."""
    with bad_input():
        from ..pruning import check_pruner

        check_pruner(prune, pipe.transformer)


def _chunk_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("chunks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)
