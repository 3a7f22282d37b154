"""The bench runner: quality runs on a real pipeline and profile runs on a real-size random-weight transformer."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..compose import compile_blocks
from ..config import GenerateConfig, PruneConfig
from ..models import profiles
from .records import (
    BENCH_JSON_NAN,
    RUN_FIELDS,
    BenchResult,
    adherence,
    aggregate,
    bench_header,
    device_name,
    mask_iou,
    saved_records,
)
from .report import write_outputs
from .spec import BenchSpec, RunKey


class Bench:
    """Runs a BenchSpec into `out_dir` (bench.json after every record, then runs.csv, summary.csv/.md, a PNG)."""

    def __init__(self, spec: BenchSpec, out_dir: Path, on_progress: Callable[[int, int, str], None] | None = None):
        self.spec, self.out_dir, self.on_progress = spec, Path(out_dir), on_progress
        self.json_path = self.out_dir / "bench.json"
        self.records: dict[str, dict] = {}
        self._warmed: set[str] = set()

    def check(self) -> None:
        """Refuse, before any compute: an unwritable folder, or a JSON from a bench with other settings."""
        from ..outputs import check_writable

        check_writable(self.json_path)
        if self.json_path.exists():
            self.records = saved_records(self.json_path, self.spec, "use another --out")

    def run(self, pipe=None) -> BenchResult:
        """Run every record missing from the JSON. `pipe`: the loaded pipeline (quality mode) or None (profile)."""
        keys = self.spec.runs()
        todo = [key for key in keys if key.id not in self.records]
        skipped = len(keys) - len(todo)
        self._done, self._total = 0, len(todo)
        if self.spec.profile:
            self._run_profile(todo)
        else:
            self._run_quality(pipe, todo)
        return self.finish(skipped)

    def finish(self, skipped: int = 0) -> BenchResult:
        ordered = [self.records[key.id] for key in self.spec.runs() if key.id in self.records]
        result = BenchResult(ordered, aggregate(ordered, self.spec), skipped=skipped)
        result.files = write_outputs(result, self.spec, self.out_dir)
        return result

    # ------------------------------------------------------------------------------------------- quality mode

    def _run_quality(self, pipe, todo: list[RunKey]) -> None:
        from ..models import adapter_for, denoisers

        if self.spec.compile:
            for transformer in denoisers(pipe):
                compile_blocks(adapter_for(transformer).blocks(transformer))
        groups: dict[tuple[str, int], list[RunKey]] = {}
        for key in todo:
            groups.setdefault((key.prompt, key.seed), []).append(key)
        for (prompt, seed), keys in groups.items():
            gen = replace(self.spec.gen, prompt=prompt, seed=seed)
            dense_key = RunKey("dense", None, prompt, seed)
            dense_record, reference = self._generate(pipe, gen, dense_key, reference=None)
            if dense_key in keys:  # on resume the dense video is regenerated as the reference, not recorded
                self._save(dense_key, dense_record)
            for key in keys:
                if key != dense_key:
                    self._save(key, self._generate(pipe, gen, key, reference)[0])

    def _generation(self, pipe, gen: GenerateConfig, prune: PruneConfig, record_masks: bool = False):
        """One generation: the pipeline's call (engine.generate), or chunk by chunk for a causal bench."""
        if self.spec.causal is None:
            from ..engine import generate

            return generate(pipe, gen, prune, record_masks=record_masks)
        from ..causal.sampler import generate_causal

        return generate_causal(pipe, gen, self.spec.causal, prune, record_masks=record_masks)

    def _generate(self, pipe, gen: GenerateConfig, key: RunKey, reference):
        from ..metrics import video_fidelity

        prune = self.spec.prune_config(key.entry, key.reduction or 0.0)
        if self._first_time(key):
            for _ in range(self.spec.warmup):
                self._generation(pipe, gen, prune)
        wants_masks = "masks" in self.spec.metrics
        # masks (kept tokens per block call, for FLOPs and IoU) are recorded in the first timed run: on the CPU the
        # copies cost microseconds; every repeat after it runs without them
        results = [self._generation(pipe, gen, prune, record_masks=(i == 0)) for i in range(self.spec.repeats)]
        first = results[0]
        layers = len(_blocks(pipe.transformer))
        record = self._base_record(key, prune, gen.device)
        total = statistics.median(r.total_s for r in results)
        transformer_s = statistics.median(r.transformer_s for r in results)
        causal = self.spec.causal is not None
        record.update(
            mode="causal" if causal else "quality", total_s=total, transformer_s=transformer_s,
            # a step: both CFG passes; causal: one call (one chunk at one step, both CFG passes in its batch)
            transformer_step_ms=1000 * transformer_s / (first.transformer_calls if causal else gen.steps),
            frames_per_s=len(first.frames) / total,
            tokens_per_s=first.tokens_per_s * first.transformer_s / transformer_s,
            timing_runs_s=[r.total_s for r in results],
            tokens_per_forward=first.tokens_per_forward, transformer_calls=first.transformer_calls,
            kept_fraction=first.kept_fraction, block_fraction=first.block_calls / (first.transformer_calls * layers),
            cache_compute_fraction=first.cache_compute_fraction,
            tflops=first.flops / 1e12, flop_bound_speedup=first.flop_bound_speedup,
            peak_memory_mb=max(r.peak_memory_mb for r in results), **first.kernels,
        )
        if key.method != "dense" and reference is not None and "fidelity" in self.spec.metrics:
            record.update(video_fidelity(reference, first.frames))
        if causal:
            from ..causal.bench import chunk_fields, video_mask_iou

            record.update(chunk_fields(results))
        if wants_masks:
            record["mask_iou"] = video_mask_iou(first) if causal else mask_iou(first.masks, first.grid)
        if "adherence" in self.spec.metrics:
            record.update(adherence(first.frames, gen.prompt))
        return record, first.frames

    # ------------------------------------------------------------------------------------------- profile mode

    def _run_profile(self, todo: list[RunKey]) -> None:
        import torch

        from ..engine import DTYPES

        spec, gen = self.spec, self.spec.gen
        device, dtype = torch.device(gen.device), DTYPES[gen.dtype]
        torch.manual_seed(spec.seeds[0])
        adapter, profile = profiles()[spec.profile]
        transformer = build_profile_transformer(spec.profile, device, dtype)
        if spec.compile:
            compile_blocks(adapter.blocks(transformer))
        inputs = adapter.profile_inputs(transformer, profile, spec.latent, device, dtype)
        decode_s = time_vae_decode(adapter.profile_decode(profile, spec.latent, device), spec) if spec.e2e else None
        profile_one = self._profile_causal if spec.causal else self._profile_one
        for key in todo:
            record = profile_one(transformer, inputs, key)
            record["decode_s"] = decode_s
            if decode_s is not None:
                record["total_s"] += decode_s
            self._save(key, record)

    def _profile_one(self, transformer, inputs: dict, key: RunKey) -> dict:
        import torch
        from diffusers.hooks import HookRegistry

        from ..engine import _peak_memory_mb, pruned

        spec, gen = self.spec, self.spec.gen
        steps = gen.steps
        prune = spec.prune_config(key.entry, key.reduction or 0.0)
        timesteps = torch.linspace(999, 1, steps).tolist()
        device = next(transformer.parameters()).device
        shapes_only = device.type == "meta"  # shapes and FLOPs, no arithmetic: nothing to time
        adapter = profiles()[spec.profile][0]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad(), pruned(transformer, prune, steps) as controller:

            def sequence() -> list[float]:
                controller.begin(steps)
                # a cache's state (residuals, Taylor factors) belongs to one sequence of steps
                HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks()
                times = []
                for step, t in enumerate(timesteps):
                    timestep = adapter.profile_timestep(t, device)
                    controller.set_step(step)  # no timestep values to count on the meta device
                    with transformer.cache_context("cond"):
                        times.append(_timed(lambda: transformer(timestep=timestep, **inputs), device))
                return times

            for _ in range(0 if shapes_only else spec.warmup):
                sequence()
            runs = [sequence() for _ in range(1 if shapes_only else spec.repeats)]
            log, calls = controller.log, controller.log.forwards
            compute_fraction = controller.cache.compute_fraction if controller.cache else None
            tokens = controller.grid.num_tokens
        layers = len(adapter.blocks(transformer))
        block_calls = log.total // tokens
        per_forward = statistics.median(t for run in runs for t in run)
        total = statistics.median(sum(run) for run in runs)
        record = self._base_record(key, prune, gen.device)
        record.update(
            mode=f"profile:{spec.profile}", tokens_per_forward=tokens, transformer_calls=calls,
            kept_fraction=log.kept_fraction, block_fraction=block_calls / (calls * layers),
            cache_compute_fraction=compute_fraction, tflops=log.flops / 1e12,
            flop_bound_speedup=log.dense_flops / log.flops, **controller.kernel_report(),
        )
        if not shapes_only:
            record.update(
                total_s=total, transformer_s=total, transformer_step_ms=1000 * per_forward,
                tokens_per_s=tokens / per_forward, timing_runs_s=[sum(run) for run in runs],
                peak_memory_mb=_peak_memory_mb(device),
            )
        return record

    def _profile_causal(self, transformer, inputs: dict, key: RunKey) -> dict:
        """One causal profile record: the profile's video generated chunk by chunk (causal.bench.profile_chunks)."""
        import torch

        from ..causal.bench import profile_chunks
        from ..engine import _peak_memory_mb, pruned

        spec, causal = self.spec, self.spec.causal
        prune = spec.prune_config(key.entry, key.reduction or 0.0)
        device = next(transformer.parameters()).device
        shapes_only = device.type == "meta"  # shapes and FLOPs, no arithmetic: nothing to time

        def timed(fn) -> float:
            return _timed(fn, device)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with pruned(transformer, prune, causal.chunk_steps) as controller:
            for _ in range(0 if shapes_only else spec.warmup):
                profile_chunks(transformer, inputs, controller, causal, timed)
            runs = [profile_chunks(transformer, inputs, controller, causal, timed)
                    for _ in range(1 if shapes_only else spec.repeats)]
            log, kernels = controller.log, controller.kernel_report()
        first = runs[0]
        layers = len(profiles()[spec.profile][0].blocks(transformer))
        record = self._base_record(key, prune, spec.gen.device)
        record.update(
            mode=f"profile:{spec.profile}", tokens_per_forward=first["tokens_per_call"],
            transformer_calls=first["calls"], kept_fraction=log.kept_fraction,
            block_fraction=first["block_calls"] / (first["calls"] * layers),
            tflops=log.flops / 1e12, flop_bound_speedup=log.dense_flops / log.flops,
            kv_cache_mb=first["kv_cache_bytes"] / 2**20, **kernels,
        )
        if not shapes_only:
            total = statistics.median(sum(run["chunk_s"]) for run in runs)
            record.update(
                total_s=total, transformer_s=total, transformer_step_ms=1000 * total / first["calls"],
                tokens_per_s=first["tokens"] / total, timing_runs_s=[sum(run["chunk_s"]) for run in runs],
                chunk_s=statistics.median(float(statistics.fmean(run["chunk_s"])) for run in runs),
                first_chunk_s=statistics.median(run["chunk_s"][0] for run in runs),
                peak_memory_mb=_peak_memory_mb(device),
            )
        return record

    # --------------------------------------------------------------------------------------------- bookkeeping

    def _first_time(self, key: RunKey) -> bool:
        config_id = f"{key.method}|{key.reduction}"
        first = config_id not in self._warmed
        self._warmed.add(config_id)
        return first

    def _base_record(self, key: RunKey, prune: PruneConfig, device: str) -> dict:
        record = dict.fromkeys(RUN_FIELDS)
        record.update(method=key.method, pruner=prune.method, restore=prune.restore, cache=prune.cache,
                      reduction=key.reduction,
                      prompt=key.prompt or None, seed=key.seed, device=device_name(device))
        return record

    def _save(self, key: RunKey, record: dict) -> None:
        from ..outputs import write_json

        self.records[key.id] = record
        ordered = [self.records[k.id] for k in self.spec.runs() if k.id in self.records]
        write_json(bench_header(self.spec) | {"records": ordered}, self.json_path, allow_nan=BENCH_JSON_NAN)
        self._done += 1
        if self.on_progress:
            self.on_progress(self._done, self._total, key.method if key.reduction is None else
                             f"{key.method} r={key.reduction:g}")


def _blocks(transformer):
    from ..models import adapter_for

    return adapter_for(transformer).blocks(transformer)


def _timed(fn, device) -> float:
    """Seconds one call of `fn` takes: CUDA events on a GPU, the wall clock elsewhere."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def build_profile_transformer(profile: str, device, dtype):
    """The real-size transformer of `profile` with random weights (no download), in `dtype` except the modules
    diffusers keeps in float32 when loading a checkpoint in low precision (rope, time embedder, norms, ...)."""
    import diffusers
    import torch

    adapter, spec = profiles()[profile]
    torch.backends.cuda.matmul.allow_tf32 = True
    with torch.device(device):  # built in place: a 13B model never passes through host memory (meta: no memory)
        transformer = getattr(diffusers, adapter.transformer_classes[0])(**spec.config).eval()
    keep_float32 = set(transformer._keep_in_fp32_modules or ())
    for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
        if keep_float32.isdisjoint(name.split(".")) and tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)
    adapter.prepare_profile(transformer, torch.device(device))
    return transformer


def time_vae_decode(decode: Callable, spec: BenchSpec) -> float:
    """Median seconds of `decode()` (a real-size random-weight VAE decode, see ModelAdapter.profile_decode)."""
    import torch

    device = torch.device(spec.gen.device)
    with torch.no_grad():
        for _ in range(spec.warmup):
            decode()
        return statistics.median(_timed(decode, device) for _ in range(spec.repeats))

