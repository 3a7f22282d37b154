"""One run's record, the aggregates over prompts and seeds, and the records saved in (or merged from) bench.json."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .spec import BenchSpec, RunKey

RUN_FIELDS = (
    "method", "pruner", "restore", "cache", "reduction", "prompt", "seed", "mode", "device",
    "total_s", "transformer_s", "transformer_step_ms", "decode_s", "frames_per_s", "tokens_per_s", "timing_runs_s",
    "tokens_per_forward", "transformer_calls", "kept_fraction", "block_fraction", "cache_compute_fraction",
    "tflops", "flop_bound_speedup", "peak_memory_mb",
    "psnr", "ssim", "tde", "warp_ratio", "flicker", "mask_iou",
    "adherence", "adherence_colour", "adherence_shape", "adherence_motion", "adherence_background",
    "adherence_count", "kernel_path", "fused_error", "score_kernel_path", "score_error",
    "chunk_s", "first_chunk_s", "kv_cache_mb",  # causal: mean per-chunk latency, first chunk, peak KV cache
)
# warp_ratio is inf for a perfectly still dense video and flicker NaN with no static pixel (metrics/temporal.py):
# bench.json keeps them as Python's json writes them (Infinity, NaN), which its resume reads back
BENCH_JSON_NAN = True
MEAN_FIELDS = (
    "kept_fraction", "block_fraction", "cache_compute_fraction", "flop_bound_speedup", "total_s", "transformer_s",
    "transformer_step_ms", "tokens_per_s", "tflops", "peak_memory_mb",
    "psnr", "ssim", "tde", "warp_ratio", "flicker", "mask_iou", "adherence",
    "frames_per_s", "chunk_s", "first_chunk_s", "kv_cache_mb",
)
AGGREGATE_FIELDS = ("method", "pruner", "cache", "reduction", "runs", "speedup", "transformer_speedup",
                    "chunk_speedup") + MEAN_FIELDS


def mask_iou(masks: list, grid) -> float | None:
    """Adjacent-latent-frame IoU of the skipped sites, over every recorded block call (None: nothing pruned)."""
    import numpy as np

    from ..metrics import adjacent_frame_iou

    if not masks or grid.frames < 2:
        return None
    stack = []
    for *_, positions in masks:
        keep = np.zeros((positions.shape[0], grid.num_tokens), dtype=bool)  # (B, N)
        np.put_along_axis(keep, positions.numpy(), True, axis=1)
        stack.append(keep.reshape(-1, grid.frames, grid.height, grid.width))  # (B, F, H, W)
    return adjacent_frame_iou(np.concatenate(stack))


def adherence(frames, prompt: str) -> dict:
    """The tiny world's checker on `frames`: per attribute and the mean; empty for a prompt outside its grammar."""
    from ..tiny.checker import score_video
    from ..tiny.prompts import parse_caption

    try:
        parse_caption(prompt)
    except ValueError:
        return {}
    scores = score_video(frames, prompt)
    return {"adherence": sum(scores.values()) / len(scores), **{f"adherence_{k}": float(v) for k, v in scores.items()}}


def aggregate(records: list[dict], spec: BenchSpec) -> list[dict]:
    """One row per method × reduction in spec order: means over its runs, speedups against dense on the same
    prompts and seeds (ratio of mean times)."""
    by_key: dict[tuple, list[dict]] = {}
    for record in records:
        by_key.setdefault((record["method"], record["reduction"]), []).append(record)
    dense = {(r["prompt"], r["seed"]): r for r in by_key.get(("dense", None), [])}
    rows = []
    for key in dict.fromkeys((k.method, k.reduction) for k in spec.runs()):
        runs = by_key.get(key, [])
        if not runs:
            continue
        paired = [(dense[(r["prompt"], r["seed"])], r) for r in runs if (r["prompt"], r["seed"]) in dense]
        row = {"method": key[0], "pruner": runs[0]["pruner"], "cache": runs[0]["cache"], "reduction": key[1],
               "runs": len(runs), "speedup": _mean_ratio(paired, "total_s"),
               "transformer_speedup": _mean_ratio(paired, "transformer_s"), "chunk_speedup": _mean_ratio(paired,
                                                                                                          "chunk_s")}
        for name in MEAN_FIELDS:
            values = [r[name] for r in runs if r.get(name) is not None]
            row[name] = statistics.fmean(values) if values else None
        rows.append(row)
    return rows


def _mean_ratio(paired: list[tuple[dict, dict]], name: str) -> float | None:
    if not paired or any(record[name] is None for pair in paired for record in pair):  # meta: nothing timed
        return None
    return statistics.fmean(d[name] for d, _ in paired) / statistics.fmean(r[name] for _, r in paired)


def saved_records(path: Path, spec: BenchSpec, remedy: str) -> dict[str, dict]:
    """The records of the bench.json at `path` by run id; ValueError (ending with `remedy`) when it is unreadable or
    holds a bench with other settings than `spec`."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if saved.get("fingerprint") != spec.fingerprint():
        raise ValueError(f"{path} holds a bench with other settings; {remedy}")
    return {RunKey(r["method"], r["reduction"], r["prompt"] or "", r["seed"]).id: r for r in saved.get("records", [])}


def merged_records(spec: BenchSpec, folders: list[Path]) -> dict[str, dict]:
    """The records of bench `spec` from folders that each ran part of it (`--shard`, or any split of its prompts and
    seeds), by run id. Every run of `spec` must be in exactly one folder, each folder's bench of the same settings;
    ValueError otherwise. `Bench(spec, out)` with these records then writes the whole bench (`Bench.finish`)."""
    records: dict[str, dict] = {}
    for folder in folders:
        path = Path(folder) / "bench.json"
        if not path.is_file():
            raise ValueError(f"--merge: {folder} holds no bench.json")
        for run_id, record in saved_records(path, spec, "merge the folders of benches of this spec").items():
            if run_id in records:
                raise ValueError(f"--merge: run {run_id!r} is in more than one folder")
            records[run_id] = record
    wanted = [key.id for key in spec.runs()]
    missing, foreign = [key for key in wanted if key not in records], sorted(set(records) - set(wanted))
    if missing:
        raise ValueError(f"--merge: the folders lack {len(missing)} of the spec's {len(wanted)} runs (first: "
                         f"{missing[0]!r}); resume the bench that stopped")
    if foreign:
        raise ValueError(f"--merge: the folders hold {len(foreign)} runs the spec does not list (first: "
                         f"{foreign[0]!r})")
    return records


@dataclass
class BenchResult:
    records: list[dict]
    aggregates: list[dict]
    files: dict[str, Path] = field(default_factory=dict)
    skipped: int = 0  # records found finished in the JSON and not run again

def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"

def bench_header(spec: BenchSpec) -> dict:
    import diffusers
    import torch

    from .. import __version__

    return {
        "fingerprint": spec.fingerprint(),
        "spec": {
            "methods": list(spec.methods), "reductions": list(spec.reductions), "prompts": list(spec.prompts),
            "seeds": list(spec.seeds), "warmup": spec.warmup, "repeats": spec.repeats, "metrics": list(spec.metrics),
            "profile": spec.profile, "profile_latent": list(spec.latent) if spec.profile else None,
            "compile": spec.compile, "shard": list(spec.shard) if spec.shard else None,
            "e2e": spec.e2e, "generate": asdict(spec.gen), "prune": asdict(spec.prune),
            "causal": asdict(spec.causal) if spec.causal else None, "router": spec.router,
        },
        "device": device_name(spec.gen.device),
        "versions": {"vidprune": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
    }


