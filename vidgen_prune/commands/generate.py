"""`vidprune generate`: one prompt → one MP4 (+ JSON sidecar), generated with the chosen pruning method."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import (
    EXIT_RUNTIME,
    Alpha,
    AttentionBackend,
    Causal,
    ChunkFrames,
    ChunkSteps,
    CompileBlocks,
    Device,
    Dtype,
    Fps,
    Frames,
    Guidance,
    Height,
    ImagePath,
    JsonOutput,
    Kernels,
    KvWindow,
    Lora,
    Method,
    Model,
    NegativePrompt,
    Offload,
    OptionalPrompt,
    OutDir,
    OutPath,
    Preset,
    PromptsFile,
    Reduction,
    ReselectEvery,
    Restore,
    RouterDir,
    Schedule,
    ScheduleDelta,
    Seed,
    SinkFrames,
    Steps,
    TransformerWeights,
    VaeTiling,
    Verbose,
    Width,
    bad_input,
    console,
    key_value_table,
    load_checked_pipeline,
    print_json,
    runtime_failure,
    warn_unknown_words,
)

# what generate and visualize-masks prune with when neither a flag nor the preset says (PruneConfig's own default
# is dense, which library callers rely on)
COMMAND_PRUNE_DEFAULTS = {"method": "tape", "reduction": 0.3}


def build_configs(generate_flags: dict, prune_flags: dict, preset_name: str | None, causal: bool = False):
    """GenerateConfig and PruneConfig from dataclass defaults < the command's defaults < preset < flags (None = not
    given); raises ValueError on bad input, including kernels that cannot run on the device. `causal`: the default
    preset is the model's causal one."""
    from ..config import GenerateConfig, PruneConfig, check_kernels
    from ..presets import default_preset, load_preset, merged

    preset_name = preset_name or default_preset(generate_flags.get("model"), causal)
    preset = load_preset(preset_name) if preset_name else None
    gen = GenerateConfig(**merged("generate", preset, generate_flags))
    prune = PruneConfig(**merged("prune", preset, prune_flags, defaults=COMMAND_PRUNE_DEFAULTS))
    check_kernels(prune, gen.device)
    return gen, prune, preset_name


def generate(
    prompt: OptionalPrompt = None,
    method: Method = None,
    reduction: Reduction = None,
    model: Model = None,
    negative_prompt: NegativePrompt = None,
    steps: Steps = None,
    frames: Frames = None,
    height: Height = None,
    width: Width = None,
    guidance: Guidance = None,
    seed: Seed = None,
    fps: Fps = None,
    alpha: Alpha = None,
    reselect_every: ReselectEvery = None,
    schedule: Schedule = None,
    schedule_delta: ScheduleDelta = None,
    kernels: Kernels = None,
    restore: Restore = None,
    router: RouterDir = None,
    device: Device = None,
    dtype: Dtype = None,
    preset: Preset = None,
    out: OutPath = None,
    image: ImagePath = None,
    offload: Offload = None,
    attention_backend: AttentionBackend = None,
    compile: CompileBlocks = None,
    lora: Lora = None,
    vae_tiling: VaeTiling = None,
    prompts: PromptsFile = None,
    out_dir: OutDir = None,
    causal: Causal = False,
    chunk_frames: ChunkFrames = None,
    chunk_steps: ChunkSteps = None,
    kv_window: KvWindow = None,
    sink_frames: SinkFrames = None,
    transformer_weights: TransformerWeights = None,
    json_output: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Generate a video with token pruning and report what it cost: latency, throughput, kept fraction.

    With --prompts FILE: every prompt into --out-dir, resumable; under torchrun the ranks share the items.
    With --causal: chunk by chunk against a rolling KV cache, each chunk appended to the MP4 as it is decoded."""
    generate_flags = dict(
        prompt=prompt, negative_prompt=negative_prompt, model=model, steps=steps, frames=frames, height=height,
        width=width, guidance=guidance, seed=seed, fps=fps, device=device, dtype=dtype, out=out, image=image,
        offload=offload, attention_backend=attention_backend, compile=compile, lora=tuple(lora) if lora else None,
        vae_tiling=vae_tiling,
    )
    prune_flags = dict(
        method=method, reduction=reduction, alpha=alpha, reselect_every=reselect_every, schedule=schedule,
        schedule_delta=schedule_delta, kernels=kernels, router=router, restore=restore,
    )
    causal_flags = dict(chunk_frames=chunk_frames, chunk_steps=chunk_steps, kv_window=kv_window,
                        sink_frames=sink_frames, transformer_weights=transformer_weights)
    if causal:
        from .generate_causal import generate_causal

        generate_causal(generate_flags, prune_flags, causal_flags, preset, prompts, out_dir, json_output, verbose)
        return
    with bad_input():
        given = [f"--{name.replace('_', '-')}" for name, value in causal_flags.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --causal")
        is_batch = _is_batch(prompt, prompts, out, out_dir)
    if is_batch:
        infos = {}  # model → what its JSON files say, read once

        def item_configs(item_generate_flags: dict, item_prune_flags: dict):
            from ..models import inspect_model
            from .common import check_model

            gen, prune, preset_name = build_configs(
                generate_flags | item_generate_flags, prune_flags | item_prune_flags, preset
            )
            if gen.model not in infos:
                infos[gen.model] = inspect_model(gen.model)
            check_model(gen, [prune], infos[gen.model])
            return gen, prune, preset_name

        def load(gen):
            from ..engine import load_pipeline

            return load_pipeline(gen.model, gen.device, gen.dtype, setup=gen)

        _generate_batch(prompts, out_dir, item_configs, load, json_output, verbose)
        return
    with bad_input():
        gen, prune, preset_name = build_configs(generate_flags, prune_flags, preset)
        from ..outputs import check_writable

        out_path = gen.out or Path(f"vidprune_{prune.method}_r{prune.reduction:g}_seed{gen.seed}.mp4")
        check_writable(out_path, out_path.with_suffix(".json"))

    pipe = load_checked_pipeline(gen, [prune], verbose)
    with runtime_failure(verbose):
        result = _run_with_progress(pipe, gen, prune)
        from ..engine import sidecar
        from ..outputs import write_video_with_sidecar

        write_video_with_sidecar(result.frames, out_path, gen.fps, sidecar(gen, prune, result, preset_name))

    timings = result.timings()
    if json_output:
        print_json(
            {"video": str(out_path), "sidecar": str(out_path.with_suffix(".json")), "method": prune.method,
             "reduction": prune.reduction, "kept_fraction": result.kept_fraction,
             "tokens_per_forward": result.tokens_per_forward, "timings": timings}
        )
        return
    console.print(
        key_value_table(
            f"{_run_title(prune)} → {out_path}",
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


def _is_batch(prompt: str | None, prompts: Path | None, out: Path | None, out_dir: Path | None) -> bool:
    """--prompts FILE (a batch) or --prompt TEXT (one video); raises ValueError for flags that do not go together."""
    from ..batch import World

    if prompts is None:  # one video; its prompt is the flag's or the preset's (GenerateConfig refuses neither)
        if out_dir is not None:
            raise ValueError("--out-dir goes with --prompts; for one --prompt use --out")
        if World.from_env().size > 1:
            raise ValueError("under torchrun give --prompts FILE so that the ranks share the items")
        return False
    if prompt is not None:
        raise ValueError("--prompt and --prompts are mutually exclusive")
    if out is not None:
        raise ValueError("--out is for one --prompt; --prompts writes into --out-dir")
    if out_dir is None:
        raise ValueError("--prompts needs --out-dir")
    return True


def _generate_batch(prompts: Path, out_dir: Path, item_configs, load, json_output: bool, verbose: bool) -> None:
    """Batch mode. `item_configs(generate_flags, prune_flags)` builds and checks one line's configs (a tuple that
    `BatchItem` takes after index and line: gen, prune, preset, and for --causal the CausalConfig); `load(gen)` loads
    the pipeline once for every item."""
    from dataclasses import replace

    from ..batch import Manifest, OutDirLock, World, check_items, read_prompt_file, run_batch
    from ..models import denoisers
    from ..outputs import check_writable
    from ..pruning import check_pruner

    with bad_input():
        world = World.from_env()

        def configs_on_this_rank(item_generate_flags: dict, item_prune_flags: dict):
            gen, *rest = item_configs(item_generate_flags, item_prune_flags)
            if gen.out is not None:
                raise ValueError("the preset's generate.out is for one --prompt; --prompts writes into --out-dir")
            return replace(gen, device=world.device(gen.device)), *rest

        items = read_prompt_file(prompts, configs_on_this_rank)
        manifest = Manifest(out_dir)
        check_writable(manifest.part(world.rank))
        manifest.check_same_run(items)
        lock = OutDirLock(out_dir, world)
        if out_dir.is_dir():  # a live run can only be in a folder that exists: refuse it before loading
            lock.acquire()
    with lock:
        with runtime_failure(verbose):
            pipe = load(items[0].gen)
        with bad_input():
            check_items(items, lambda item: [check_pruner(item.prune, transformer) for transformer in denoisers(pipe)])
            lock.acquire()  # creates a new folder only now that nothing can refuse the run
        if not lock.locked:
            console.print(f"[yellow]warning:[/yellow] the filesystem of {escape(str(out_dir))} cannot lock files: "
                          "another run on this --out-dir would not be detected", highlight=False, soft_wrap=True)
        warn_unknown_words(pipe, {f"line {item.line}": item.gen.prompt for item in items})
        with runtime_failure(verbose):
            summary = run_batch(pipe, items, out_dir, world, on_item=_item_reporter(world, verbose))

    if json_output:
        print_json(summary.to_dict())
    else:
        rank = f" (rank {world.rank} of {world.size})" if world.size > 1 else ""
        console.print(
            key_value_table(
                f"batch → {out_dir}{rank}",
                [
                    ("items in the file", f"{summary.items}"),
                    ("finished before", f"{summary.finished_before}"),
                    ("generated now", f"{len(summary.generated)} of {summary.assigned}"),
                    ("failed", f"{len(summary.failed)}"),
                ],
            )
        )
    if summary.failed:
        raise typer.Exit(EXIT_RUNTIME)


def _item_reporter(world, verbose: bool):
    """A line per finished item with --verbose; a failed item always gets one (its traceback with --verbose)."""
    from rich.markup import escape
    from rich.traceback import Traceback

    where = f"rank {world.rank}/{world.size} " if world.size > 1 else ""

    def report(item, record, error):
        if error is None:
            if verbose:
                console.print(f"{where}{item.name}: {record['total_s']:.1f} s, kept {record['kept_fraction']:.3f}")
            return
        message = escape(" ".join(f"{type(error).__name__}: {error}".split()))
        console.print(f"[red]failed:[/red] {where}{item.name}: {message}", highlight=False, soft_wrap=True)
        if verbose:
            console.print(Traceback.from_exception(type(error), error, error.__traceback__))

    return report


def _run_with_progress(pipe, gen, prune):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..engine import generate as run_generation

    columns = (TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("denoising", total=gen.steps)
        return run_generation(pipe, gen, prune, on_step=lambda done, total: progress.update(task, completed=done))


def _run_title(prune) -> str:
    """The printed table's title: "dense", or the method, its reduction and (when on) its restoration."""
    if prune.method == "dense":
        return "dense"
    restore = f", restore {prune.restore}" if prune.restore != "none" else ""
    return f"{prune.method} at reduction {prune.reduction:g}{restore}"
