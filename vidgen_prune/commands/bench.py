"""`vidprune bench`: every method side by side, timed and judged against dense; resumes from its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    Alpha,
    AttentionBackend,
    Causal,
    ChunkFrames,
    ChunkSteps,
    Device,
    Dtype,
    Frames,
    Guidance,
    Height,
    Kernels,
    KvWindow,
    Lora,
    Model,
    Offload,
    Preset,
    ReselectEvery,
    Restore,
    RouterDir,
    Schedule,
    ScheduleDelta,
    SinkFrames,
    Steps,
    VaeTiling,
    Verbose,
    Width,
    bad_input,
    check_model,
    console,
    runtime_failure,
    warn_unknown_words,
)

Methods = Annotated[
    Optional[str],
    typer.Option(help="Comma list: pruners, caches (fbcache, pab, taylorseer) or pruner+cache; default: all pruners."),
]
Reductions = Annotated[Optional[str], typer.Option(help="Comma list of token reductions (default 0.2,0.3,0.4).")]
BenchPrompts = Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A prompt (repeatable).")]
HeldOut = Annotated[Optional[int], typer.Option(help="Use the first N held-out prompts of the embedded model.")]
Seeds = Annotated[Optional[str], typer.Option(help="Comma list of seeds (default 0,1).")]
SpecFile = Annotated[Optional[Path], typer.Option("--spec", help="YAML bench spec; flags override it.")]
Warmup = Annotated[Optional[int], typer.Option(help="Untimed runs before each method × reduction (default 1).")]
Repeats = Annotated[Optional[int], typer.Option(help="Timed runs per record; the median is kept (default 1).")]
Metrics = Annotated[
    Optional[str], typer.Option(help="Comma list of timing, fidelity, masks, adherence (default all; profile: timing).")
]
BenchOut = Annotated[Path, typer.Option("--out", "-o", help="Results folder; re-running resumes from its bench.json.")]
Profile = Annotated[
    Optional[str], typer.Option(help="Time a real-size random-weight transformer (wan2.1-1.3b, ltx-video, ...).")
]
ProfileLatent = Annotated[Optional[str], typer.Option(help="--profile latent F,H,W (default 21,60,104 = 81×480×832).")]
Compile = Annotated[Optional[bool], typer.Option("--compile", help="torch.compile each transformer block.")]
EndToEnd = Annotated[Optional[bool], typer.Option("--e2e", help="--profile: add a real-size random VAE decode.")]
FbcacheThreshold = Annotated[Optional[float], typer.Option(help="FirstBlockCache residual threshold (0.05).")]
PabSkip = Annotated[Optional[int], typer.Option(help="PyramidAttentionBroadcast: recompute every N-th call (2).")]
Shard = Annotated[
    Optional[str], typer.Option(help="I/N: run only the I-th of every N prompt × seed groups (one process's share).")
]
Merge = Annotated[
    Optional[str],
    typer.Option(help="Comma list of folders that ran shares of this bench: write the whole bench into --out."),
]
TaylorseerInterval = Annotated[Optional[int], typer.Option(help="TaylorSeer: full step every N steps (5).")]


def _split(text: str | None, kind=str, flag: str = "") -> list | None:
    if text is None:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--{flag}: {error}") from error


def _is_causal_profile(profile: str | None) -> bool:
    from ..models import profiles

    return profile in profiles() and profiles()[profile][1].causal


def bench(
    methods: Methods = None,
    reductions: Reductions = None,
    prompt: BenchPrompts = None,
    held_out: HeldOut = None,
    seeds: Seeds = None,
    spec: SpecFile = None,
    warmup: Warmup = None,
    repeats: Repeats = None,
    metrics: Metrics = None,
    out: BenchOut = Path("benchmarks/results/bench"),
    profile: Profile = None,
    profile_latent: ProfileLatent = None,
    compile: Compile = None,
    e2e: EndToEnd = None,
    shard: Shard = None,
    merge: Merge = None,
    model: Model = None,
    steps: Steps = None,
    frames: Frames = None,
    height: Height = None,
    width: Width = None,
    guidance: Guidance = None,
    device: Device = None,
    dtype: Dtype = None,
    preset: Preset = None,
    offload: Offload = None,
    attention_backend: AttentionBackend = None,
    lora: Lora = None,
    vae_tiling: VaeTiling = None,
    alpha: Alpha = None,
    reselect_every: ReselectEvery = None,
    schedule: Schedule = None,
    schedule_delta: ScheduleDelta = None,
    kernels: Kernels = None,
    restore: Restore = None,
    fbcache_threshold: FbcacheThreshold = None,
    pab_skip: PabSkip = None,
    taylorseer_interval: TaylorseerInterval = None,
    router: RouterDir = None,
    causal: Causal = False,
    chunk_frames: ChunkFrames = None,
    chunk_steps: ChunkSteps = None,
    kv_window: KvWindow = None,
    sink_frames: SinkFrames = None,
    verbose: Verbose = False,
) -> None:
    """Bench methods × reductions × prompts × seeds against dense: speed, FLOPs, fidelity, masks, adherence.

    With --causal: chunk by chunk against the dense causal video of the same seed, with per-chunk and first-chunk
    latency and the KV cache's size (default model: the embedded causal one); --profile self-forcing-1.3b is the
    real-size causal profile."""
    causal_flags = dict(chunk_frames=chunk_frames, chunk_steps=chunk_steps, kv_window=kv_window,
                        sink_frames=sink_frames)
    with bad_input():
        causal = causal or _is_causal_profile(profile)
        given = [f"--{name.replace('_', '-')}" for name, value in causal_flags.items() if value is not None]
        if given and not causal:
            raise ValueError(f"{', '.join(given)} only apply with --causal")
        from ..bench import Bench, make_spec

        bench_spec = make_spec(
            spec,
            dict(
                methods=_split(methods, flag="methods"), reductions=_split(reductions, float, "reductions"),
                prompts=prompt, held_out=held_out, seeds=_split(seeds, int, "seeds"), warmup=warmup,
                repeats=repeats, metrics=_split(metrics, flag="metrics"),
                profile=profile, profile_latent=_split(profile_latent, int, "profile-latent"), compile=compile,
                e2e=e2e, router=router, shard=_split(shard.replace("/", ","), int, "shard") if shard else None,
            ),
            dict(model=model, steps=steps, frames=frames, height=height, width=width, guidance=guidance,
                 device=device, dtype=dtype, offload=offload, attention_backend=attention_backend,
                 lora=tuple(lora) if lora else None, vae_tiling=vae_tiling),
            dict(alpha=alpha, reselect_every=reselect_every, schedule=schedule, schedule_delta=schedule_delta,
                 kernels=kernels, restore=restore, fbcache_threshold=fbcache_threshold, pab_skip=pab_skip,
                 taylorseer_interval=taylorseer_interval),
            preset,
            causal_flags if causal else None,
        )
        runner = Bench(bench_spec, out)
        if merge:
            from ..bench import merged_records
            from ..outputs import check_writable

            if shard:
                raise ValueError("--merge joins the shares of a whole bench: drop --shard")
            records = merged_records(bench_spec, [Path(folder) for folder in _split(merge, flag="merge")])
            check_writable(runner.json_path)
    if merge:
        with runtime_failure(verbose):
            runner.records = records
            _print_result(runner.finish(), out)
        return
    with bad_input():
        runner.check()
        if not bench_spec.profile:
            configs = [bench_spec.prune_config(e, r) for e in bench_spec.entries if e.spends_budget
                       for r in bench_spec.reductions]
            info = check_model(bench_spec.gen, configs)
            if bench_spec.causal:
                from ..causal.config import check_causal_run

                for config in configs or [bench_spec.prune]:
                    check_causal_run(bench_spec.gen, config, info)

    pipe = None
    if not bench_spec.profile:
        with runtime_failure(verbose):
            gen = bench_spec.gen
            if bench_spec.causal:
                from ..causal.pipeline import load_causal_pipeline

                pipe = load_causal_pipeline(gen.model, gen.device, gen.dtype)
            else:
                from ..engine import load_pipeline

                pipe = load_pipeline(gen.model, gen.device, gen.dtype, setup=gen)
        warn_unknown_words(pipe, {f"prompt {i + 1}": text for i, text in enumerate(bench_spec.prompts)})
    with bad_input():
        from ..bench import check_budgets

        check_budgets(bench_spec, pipe)

    with runtime_failure(verbose):
        result = _run_with_progress(runner, pipe)
    _print_result(result, out)


def _print_result(result, out: Path) -> None:
    from ..bench import paired_comparisons, paired_table_rows, table_rows

    device = result.records[0]["device"] if result.records else ""
    console.print(_table(f"vidprune bench → {out} ({device})", *table_rows(result.aggregates)))
    paired = paired_comparisons(result.records)
    if paired:
        console.print(_table("paired over prompt × seed: restoration vs none, each variant vs ToMe (PSNR dB)",
                             *paired_table_rows(paired)))
    if result.skipped:
        console.print(f"resumed: {result.skipped} finished records were not run again")
    console.print("files: " + ", ".join(str(path) for path in result.files.values()))


def _table(title: str, header: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for heading in header:
        table.add_column(heading, justify="left" if heading in ("method", "restore") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _run_with_progress(runner, pipe):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=None)

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=f"bench: {label}")

        runner.on_progress = update
        return runner.run(pipe)
