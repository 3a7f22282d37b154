"""The bench: methods × reductions × prompts × seeds, timed and judged against dense, resumable from its JSON.

Two modes.
- Quality (default): full pipeline generations on a real model (the embedded tiny one unless `model` says
  otherwise). For each prompt and seed the dense video is generated first; every other run is judged against
  it (fidelity, temporal coherence), its keep masks give the adjacent-frame IoU and its kept tokens per block
  call the analytic FLOPs; prompt adherence comes from the tiny world's checker where the prompt is in its
  grammar. Runs of one prompt and seed follow each other, so a slowly changing machine load hits all methods.
- Profile (`profile="wan2.1-1.3b"`): a real-size `WanTransformer3DModel` with random weights, random latents
  and text, transformer forwards only (one per step, no CFG), optionally with a real-size random VAE decode
  (`e2e`). Random weights make timing honest and quality meaningless, so quality metrics are refused.

A method entry is a pruner (`tape`), a diffusers cache (`fbcache`) or both (`tape+fbcache`); a cache alone
spends no token budget and has one row per bench, not one per reduction. Nothing here prints.
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .causal.config import CausalConfig
from .compose import compile_blocks
from .config import GenerateConfig, PruneConfig, check_seed
from .models import profiles
from .pruning import MERGING, METHODS
from .pruning.caches import CACHES

# ----------------------------------------------------------------------------------------------------- spec

DEFAULT_METHODS = ("dense", "evit", "tome", "stavit", "tape", "tape-s", "tape-r", "tape-t")
METRIC_GROUPS = ("timing", "fidelity", "masks", "adherence")
QUALITY_METRICS = ("fidelity", "masks", "adherence")
PROFILE_STEPS = 10  # forwards per profiled sequence unless --steps: 5 HighLow levels of 2 steps
SPEC_KEYS = (
    "methods", "reductions", "prompts", "held_out", "seeds", "warmup", "repeats", "metrics", "profile",
    "profile_latent", "compile", "e2e", "router", "generate", "prune",
)


@dataclass(frozen=True)
class MethodEntry:
    """One bench column: a pruning method (with a restoration: `tape@similar`), a diffusers cache, or a pruner
    composed with a cache (`tape+taylorseer`, `tape@neighbours+taylorseer`)."""

    pruner: str
    cache: str | None = None
    restore: str | None = None  # None: the spec's prune.restore

    @property
    def name(self) -> str:
        pruner = self.pruner if self.restore is None else f"{self.pruner}@{self.restore}"
        if self.cache is None:
            return pruner
        return self.cache if self.pruner == "dense" else f"{pruner}+{self.cache}"

    @property
    def spends_budget(self) -> bool:
        return self.pruner != "dense"

    @classmethod
    def parse(cls, text: str) -> MethodEntry:
        from .pruning.restore import RESTORES

        parts = [part.strip() for part in text.split("+")]
        if len(parts) == 1 and parts[0] in CACHES:
            return cls("dense", parts[0])
        pruner, _, restore = parts[0].partition("@")
        if (len(parts) > 2 or pruner not in METHODS or (len(parts) == 2 and parts[1] not in CACHES)
                or (restore and restore not in RESTORES)):
            raise ValueError(
                f"unknown bench method {text!r}: use a pruner ({', '.join(METHODS)}), optionally @restore "
                f"({', '.join(RESTORES)}), a cache ({', '.join(CACHES)}) or pruner+cache"
            )
        return cls(pruner, parts[1] if len(parts) == 2 else None, restore or None)


@dataclass(frozen=True)
class BenchSpec:
    gen: GenerateConfig  # steps, frames, size, model, device, dtype; its prompt/seed are replaced per run
    prune: PruneConfig  # shared method settings (alpha, reselect_every, thresholds, kernels); method/cache replaced
    methods: tuple[str, ...] = DEFAULT_METHODS
    reductions: tuple[float, ...] = (0.2, 0.3, 0.4)
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1)
    warmup: int = 1  # untimed generations before the first timed run of each method × reduction
    repeats: int = 1  # timed generations per record; the record keeps their median
    metrics: tuple[str, ...] = METRIC_GROUPS
    profile: str | None = None
    profile_latent: tuple[int, int, int] | None = None  # None: the profile's own (its model card's default video)
    compile: bool = False  # torch.compile each transformer block's own forward (regional)
    e2e: bool = False  # profile: add a real-size random-weight VAE decode
    causal: CausalConfig | None = None  # chunk by chunk against a KV cache (--causal; a causal profile's own)
    router: str | None = None  # the router folder of the `router` entries; None: the model's shipped one
    shard: tuple[int, int] | None = None  # (i, n): only the i-th of every n prompt × seed groups (1-based), for
    # splitting one bench over processes; `merge_folders` joins their folders into the whole bench

    def __post_init__(self):
        entries = [MethodEntry.parse(method) for method in self.methods]
        if not entries:
            raise ValueError("--methods must name at least one method")
        if len({entry.name for entry in entries}) != len(entries):
            raise ValueError(f"--methods lists a method twice: {', '.join(self.methods)}")
        if any(entry.spends_budget for entry in entries) and not self.reductions:
            raise ValueError("--reductions must list at least one reduction for the pruning methods")
        if any(not 0.0 < r < 0.95 for r in self.reductions) or len(set(self.reductions)) != len(self.reductions):
            raise ValueError(f"--reductions must be distinct values in (0, 0.95), got {self.reductions}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and at least one, got {self.seeds}")
        for seed in self.seeds:
            check_seed(seed, "--seeds")
        if self.shard is not None and (len(self.shard) != 2 or not 1 <= self.shard[0] <= self.shard[1]):
            raise ValueError(f"--shard is I/N with 1 <= I <= N, got {'/'.join(map(str, self.shard))}")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"--warmup must be >= 0 and --repeats >= 1, got {self.warmup} and {self.repeats}")
        unknown = set(self.metrics) - set(METRIC_GROUPS)
        if unknown or "timing" not in self.metrics:
            raise ValueError(f"--metrics is a list of {', '.join(METRIC_GROUPS)} that includes timing, got "
                             f"{', '.join(self.metrics)}")
        if self.compile and any(entry.cache for entry in entries):
            # the caches hook modules inside the compiled block forward and are put on and taken off per run; dynamo
            # does not guard module hooks (skip_nnmodule_hook_guards), so a compiled graph would ignore or keep them
            raise ValueError("--compile cannot be combined with a cache method (fbcache, pab, taylorseer)")
        for entry in entries:  # each method's own settings check (e.g. pab cannot compose with a pruner)
            for reduction in self.reductions if entry.spends_budget else (0.0,):
                self.prune_config(entry, reduction)
        self._check_causal(entries)
        if self.router is not None and not any(entry.pruner == "router" for entry in entries):
            raise ValueError("--router is the folder of the router method: add router to --methods")
        if self.profile is None:
            if self.gen.device == "meta":
                raise ValueError("--device meta (the FLOP bound without weights) needs --profile")
            if self.e2e:
                raise ValueError("--e2e belongs to --profile (a quality bench always decodes)")
            if not self.prompts:
                raise ValueError("a quality bench needs at least one prompt")
            if self.shard is not None and self.shard[1] > len(self.prompts) * len(self.seeds):
                raise ValueError(f"--shard {self.shard[0]}/{self.shard[1]}: the bench has only "
                                 f"{len(self.prompts) * len(self.seeds)} prompt × seed groups to share out")
            return
        if self.shard is not None:
            raise ValueError("--shard shares out a quality bench's prompts and seeds; a --profile bench has none")
        if self.profile not in profiles():
            raise ValueError(f"unknown --profile {self.profile!r}; choose from {', '.join(profiles())}")
        if self.gen.device == "meta" and (self.compile or self.e2e):
            raise ValueError("--device meta computes shapes and FLOPs only: drop --compile and --e2e")
        asked = sorted(set(self.metrics) & set(QUALITY_METRICS))
        if asked:
            raise ValueError(f"--profile times random-weight transformers, so quality metrics ({', '.join(asked)}) "
                             "would be meaningless: use --metrics timing, or drop --profile")
        if self.prompts:
            raise ValueError("--profile uses random text embeddings: drop --prompt/--prompts")
        if self.profile_latent is not None and (len(self.profile_latent) != 3 or min(self.profile_latent) < 1):
            raise ValueError(f"--profile-latent is F,H,W (three positive integers), got {self.profile_latent}")

    def _check_causal(self, entries: list[MethodEntry]) -> None:
        causal_profile = self.profile is not None and self.profile in profiles() and profiles()[self.profile][1].causal
        if self.profile is not None and (self.causal is not None) != causal_profile:
            raise ValueError(f"--profile {self.profile} is {'' if causal_profile else 'not '}a causal profile: "
                             f"{'it runs chunk by chunk' if causal_profile else 'drop --causal, or take a causal one'}")
        if self.causal is None:
            return
        if any(entry.cache for entry in entries):
            raise ValueError("--causal does not compose with the cache methods (fbcache, pab, taylorseer): they reuse "
                             "a block's output across calls, and consecutive causal calls are different chunks")
        if self.compile or self.e2e:
            raise ValueError("--causal does not take --compile or --e2e")

    @property
    def latent(self) -> tuple[int, int, int]:
        """The profiled latent (frames, height, width): the spec's, or the profile's own."""
        return tuple(self.profile_latent or profiles()[self.profile][1].latent)

    @property
    def entries(self) -> list[MethodEntry]:
        return [MethodEntry.parse(method) for method in self.methods]

    def prune_config(self, entry: MethodEntry, reduction: float) -> PruneConfig:
        restore = entry.restore or (self.prune.restore if entry.pruner not in MERGING else "none")
        router = self.router if entry.pruner == "router" else None
        config = replace(self.prune, method=entry.pruner, reduction=reduction, cache=entry.cache, restore=restore,
                         router=router)
        if self.causal is None:
            return config
        from .causal.config import default_causal_router

        return default_causal_router(config, None if self.profile else self.gen.model)

    def runs(self) -> list[RunKey]:
        """Every record of the bench in run order: per prompt and seed, dense first, then each method × reduction."""
        groups = [("", seed) for seed in self.seeds[:1]] if self.profile else [
            (prompt, seed) for prompt in self.prompts for seed in self.seeds
        ]
        if self.shard is not None:
            groups = groups[self.shard[0] - 1 :: self.shard[1]]
        keys = []
        for prompt, seed in groups:
            keys.append(RunKey("dense", None, prompt, seed))
            for entry in self.entries:
                if entry.name == "dense":
                    continue
                for reduction in self.reductions if entry.spends_budget else (None,):
                    keys.append(RunKey(entry.name, reduction, prompt, seed))
        return keys

    def fingerprint(self) -> str:
        """What makes two benches' records comparable: everything but the lists of runs (and the shard) and the
        repeat counts."""
        settings = {
            "gen": {k: v for k, v in asdict(self.gen).items() if k not in ("prompt", "seed", "out", "fps")},
            "prune": {k: v for k, v in asdict(self.prune).items() if k not in ("method", "reduction", "cache")},
            "metrics": sorted(self.metrics), "profile": self.profile,
            "profile_latent": list(self.profile_latent or ()),
            "compile": self.compile, "e2e": self.e2e,
        }
        # what earlier benches never had stays out when unset, so that their bench.json still resumes
        settings |= {"router": self.router} if self.router else {}
        settings |= {"causal": asdict(self.causal)} if self.causal else {}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunKey:
    method: str
    reduction: float | None  # None: dense or a cache alone (no token budget)
    prompt: str
    seed: int

    @property
    def id(self) -> str:
        reduction = "-" if self.reduction is None else f"{self.reduction:g}"
        return f"{self.method}|{reduction}|{self.seed}|{self.prompt}"

    @property
    def entry(self) -> MethodEntry:
        return MethodEntry.parse(self.method)


def read_spec_file(path: Path) -> dict:
    """The YAML bench spec as a dict of BenchSpec-like keys (see `SPEC_KEYS`), each of its field's type; unknown
    keys and wrong types are errors naming the file and the key."""
    import yaml

    from .config import check_field_types
    from .presets import checked_section

    if not path.is_file():
        raise ValueError(f"--spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--spec {path} is not a readable YAML file ({type(error).__name__})") from error
    if not isinstance(data, dict):
        raise ValueError(f"--spec {path} must be a mapping of {', '.join(SPEC_KEYS)}")
    unknown = set(data) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"--spec {path}: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(SPEC_KEYS)})")
    checked = {key: value for key, value in data.items() if key not in ("generate", "prune")}
    check_field_types(BenchSpec, {k: v for k, v in checked.items() if k != "held_out"}, f"--spec {path}: ")
    held_out = checked.get("held_out", 1)
    if not isinstance(held_out, int) or isinstance(held_out, bool):
        raise ValueError(f"--spec {path}: held_out must be an integer, got {held_out!r}")
    for section in ("generate", "prune"):
        checked[section] = checked_section(data, section, f"--spec {path}")
    return checked


def make_spec(spec_file: Path | None, lists: dict, generate_flags: dict, prune_flags: dict, preset: str | None,
              causal_flags: dict | None = None):
    """A BenchSpec from defaults < preset < YAML spec < flags (None = not given); raises ValueError on bad input.

    `lists` holds the bench's own keys (methods, reductions, prompts, held_out, seeds, warmup, repeats, metrics,
    profile, profile_latent, compile, e2e). The preset is the profile's (wan2.1-1.3b) in profile mode, else the
    model's. A preset's (or the spec's) prompt, seed, method, reduction and cache are the bench's prompts, seeds,
    methods and reductions unless those lists are given. Without prompts, a quality bench of the embedded model takes
    the first 8 held-out prompts. `causal_flags` (chunk_frames, chunk_steps, kv_window, sink_frames; {} for the
    preset's): a causal bench (`--causal`), with the model's causal preset; a causal profile is one by itself.
    """
    from .config import check_kernels
    from .presets import default_preset, load_preset, merged, preset_names
    from .tiny.prompts import HELD_OUT_PROMPTS

    data = read_spec_file(spec_file) if spec_file else {}
    values = {key: data[key] for key in SPEC_KEYS if key in data and key not in ("generate", "prune", "held_out")}
    values |= {key: value for key, value in _given(lists).items() if key != "held_out"}
    held_out = lists["held_out"] if lists.get("held_out") is not None else data.get("held_out")
    if held_out is not None:
        if not 1 <= held_out <= len(HELD_OUT_PROMPTS):
            raise ValueError(f"--held-out must be in [1, {len(HELD_OUT_PROMPTS)}], got {held_out}")
        values["prompts"] = HELD_OUT_PROMPTS[:held_out]
    profile = values.get("profile")
    if profile and "metrics" not in values:
        values["metrics"] = ("timing",)
    generate_values = {**data.get("generate", {}), **_given(generate_flags)}
    causal = causal_flags is not None or bool(profile in profiles() and profiles()[profile][1].causal)
    if causal and "steps" in generate_values:
        raise ValueError("--causal denoises each chunk separately: give --chunk-steps instead of --steps")
    preset = preset or (profile if profile in preset_names() else default_preset(generate_values.get("model"),
                                                                                   causal))
    preset_values = load_preset(preset) if preset else None
    if causal:
        values["causal"] = CausalConfig(**merged("causal", preset_values, causal_flags or {}))
        generate_values["steps"] = values["causal"].chunk_steps  # a causal run's steps are per chunk
    gen_values = merged("generate", preset_values, generate_values)
    if "out" in gen_values:
        raise ValueError("generate.out names one video; a bench writes its results into --out")
    prune_values = merged("prune", preset_values, {**data.get("prune", {}), **_given(prune_flags)})
    values = _axes_from_settings(values, gen_values, prune_values, quality=not profile)
    if profile:  # the profile's own latent and step count, not the preset's 50-step 81-frame generation
        gen_values = {k: v for k, v in gen_values.items() if k not in ("steps", "frames", "height", "width")}
        gen_values["steps"] = generate_values.get("steps", PROFILE_STEPS)
    if not profile and "prompts" not in values and gen_values.get("model") is None:
        values["prompts"] = HELD_OUT_PROMPTS[:8]
    prompts = tuple(values.get("prompts", ()))
    gen = GenerateConfig(**{**gen_values, "prompt": prompts[0] if prompts else "profile"})
    prune = PruneConfig(**prune_values)
    check_kernels(prune, gen.device)
    for key in ("methods", "reductions", "seeds", "metrics", "profile_latent", "shard"):
        if key in values:
            values[key] = tuple(values[key])
    return BenchSpec(gen=gen, prune=prune, **{**values, "prompts": prompts})


def _axes_from_settings(values: dict, gen_values: dict, prune_values: dict, quality: bool) -> dict:
    """A bench replaces each run's prompt, seed, method, reduction and cache; a preset or spec that sets one of them
    names that axis (one value) unless the axis' list is given, so no key it sets is silently dropped."""
    axes = dict(values)
    if quality and "prompt" in gen_values and "prompts" not in axes:
        axes["prompts"] = (gen_values["prompt"],)
    if "seed" in gen_values and "seeds" not in axes:
        axes["seeds"] = (gen_values["seed"],)
    if ("method" in prune_values or "cache" in prune_values) and "methods" not in axes:
        axes["methods"] = (MethodEntry(prune_values.get("method", "dense"), prune_values.get("cache")).name,)
    if "reduction" in prune_values and "reductions" not in axes:
        axes["reductions"] = (prune_values["reduction"],)
    return axes


def _given(flags: dict) -> dict:
    """The flags a user actually gave (None = not given), so that they override the spec file and nothing else."""
    return {key: value for key, value in flags.items() if value is not None}


def check_budgets(spec: BenchSpec, pipe) -> None:
    """Refuse (ValueError), before any compute, a method × reduction the model's depth cannot reach, or a router
    made for another model."""
    from .models import ModelInfo, denoisers
    from .pruning import check_method, check_pruner, make_pruner

    for entry in spec.entries:
        for reduction in spec.reductions if entry.spends_budget else (0.0,):
            config = spec.prune_config(entry, reduction)
            if spec.profile:  # the random-weight transformer is built later: only its depth is known here
                adapter, profile = profiles()[spec.profile]
                info = ModelInfo(spec.profile, profile.pipeline_class, adapter.transformer_classes[0],
                                 ("transformer",), adapter, {"transformer": profile.config})
                check_method(config.method, adapter)
                make_pruner(config).check_budget(adapter.num_blocks(info))
            else:
                for transformer in denoisers(pipe):
                    check_pruner(config, transformer)


# ----------------------------------------------------------------------------------------------- record fields

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

    from .metrics import adjacent_frame_iou

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
    from .tiny.checker import score_video
    from .tiny.prompts import parse_caption

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


# ----------------------------------------------------------------------------------------------------- runner


@dataclass
class BenchResult:
    records: list[dict]
    aggregates: list[dict]
    files: dict[str, Path] = field(default_factory=dict)
    skipped: int = 0  # records found finished in the JSON and not run again


class Bench:
    """Runs a BenchSpec into `out_dir` (bench.json after every record, then runs.csv, summary.csv/.md, a PNG)."""

    def __init__(self, spec: BenchSpec, out_dir: Path, on_progress: Callable[[int, int, str], None] | None = None):
        self.spec, self.out_dir, self.on_progress = spec, Path(out_dir), on_progress
        self.json_path = self.out_dir / "bench.json"
        self.records: dict[str, dict] = {}
        self._warmed: set[str] = set()

    def check(self) -> None:
        """Refuse, before any compute: an unwritable folder, or a JSON from a bench with other settings."""
        from .outputs import check_writable

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
        from .models import adapter_for, denoisers

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
            from .engine import generate

            return generate(pipe, gen, prune, record_masks=record_masks)
        from .causal.sampler import generate_causal

        return generate_causal(pipe, gen, self.spec.causal, prune, record_masks=record_masks)

    def _generate(self, pipe, gen: GenerateConfig, key: RunKey, reference):
        from .metrics import video_fidelity

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
            from .causal.bench import chunk_fields, video_mask_iou

            record.update(chunk_fields(results))
        if wants_masks:
            record["mask_iou"] = video_mask_iou(first) if causal else mask_iou(first.masks, first.grid)
        if "adherence" in self.spec.metrics:
            record.update(adherence(first.frames, gen.prompt))
        return record, first.frames

    # ------------------------------------------------------------------------------------------- profile mode

    def _run_profile(self, todo: list[RunKey]) -> None:
        import torch

        from .engine import DTYPES

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

        from .engine import _peak_memory_mb, pruned

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

        from .causal.bench import profile_chunks
        from .engine import _peak_memory_mb, pruned

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
        from .outputs import write_json

        self.records[key.id] = record
        ordered = [self.records[k.id] for k in self.spec.runs() if k.id in self.records]
        write_json(bench_header(self.spec) | {"records": ordered}, self.json_path, allow_nan=BENCH_JSON_NAN)
        self._done += 1
        if self.on_progress:
            self.on_progress(self._done, self._total, key.method if key.reduction is None else
                             f"{key.method} r={key.reduction:g}")


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


def _blocks(transformer):
    from .models import adapter_for

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


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def bench_header(spec: BenchSpec) -> dict:
    import diffusers
    import torch

    from . import __version__

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


# ----------------------------------------------------------------------------------------------------- output

TABLE_COLUMNS = (  # (field, short title: the table must fit a terminal)
    ("method", "method"), ("reduction", "r"), ("runs", "runs"), ("kept_fraction", "kept"),
    ("flop_bound_speedup", "FLOP×"), ("speedup", "speedup"), ("transformer_speedup", "tf×"),
    ("transformer_step_ms", "tf ms/step"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("tde", "TDE"),
    ("warp_ratio", "warp"), ("flicker", "flicker"), ("mask_iou", "IoU"), ("adherence", "adher."),
    ("cache_compute_fraction", "cache"), ("chunk_s", "chunk s"), ("first_chunk_s", "1st chunk s"),
    ("kv_cache_mb", "KV MB"),
)
_FORMATS = {"kept_fraction": ".3f", "flop_bound_speedup": ".2f", "speedup": ".2f", "transformer_speedup": ".2f",
            "transformer_step_ms": ".1f", "psnr": ".2f", "ssim": ".4f", "tde": ".4f", "warp_ratio": ".3f",
            "flicker": ".4f", "mask_iou": ".3f", "adherence": ".3f", "cache_compute_fraction": ".3f", "chunk_s": ".3f",
            "first_chunk_s": ".3f", "kv_cache_mb": ",.1f"}


def table_rows(aggregates: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the summary table (columns with no value in any row are left out)."""
    columns = [(name, title) for name, title in TABLE_COLUMNS if any(row.get(name) is not None for row in aggregates)]

    def cell(row: dict, name: str) -> str:
        value = row.get(name)
        if value is None:
            return "—"
        if name == "reduction":
            return f"{value:g}"
        return format(value, _FORMATS[name]) if name in _FORMATS else str(value)

    return [title for _, title in columns], [[cell(row, name) for name, _ in columns] for row in aggregates]


# ------------------------------------------------------------------------------------------- paired comparisons

PAIRED_FIELDS = ("method", "reduction", "restore", "pairs", "psnr", "delta_none", "wins_none", "delta_tome",
                 "wins_tome", "tde", "warp_ratio", "mask_iou")
PAIRED_COLUMNS = (("method", "method"), ("reduction", "r"), ("restore", "restore"), ("pairs", "pairs"),
                  ("psnr", "PSNR"), ("delta_none", "Δ vs none"), ("wins_none", "wins"), ("delta_tome", "Δ vs ToMe"),
                  ("wins_tome", "wins"), ("tde", "TDE"), ("warp_ratio", "warp"), ("mask_iou", "IoU"))
PAIRED_BASELINE = "tome"  # merging: every token gets an update, the bar restoration has to reach


def paired_comparisons(records: list[dict]) -> list[dict]:
    """Restoration against none, and every token-skipping variant against ToMe, paired over prompt × seed.

    One row per skip pruner × reduction × restoration (cache-free quality runs), for the pruners and reductions the
    bench ran with two or more restorations or beside ToMe: the mean PSNR; the mean PSNR difference to the same pruner
    without restoration (`delta_none`) and to ToMe at that reduction (`delta_tome`), each over the pairs both ran, with
    `wins_*` = the pairs where this variant has the higher PSNR; and the means of TDE, warp ratio and mask IoU. Empty
    when the bench has no such pair.
    """
    from .pruning.restore import RESTORES

    by_variant: dict[tuple, dict[tuple, dict]] = {}
    for record in records:
        if record["cache"] is None and record["pruner"] != "dense" and record.get("psnr") is not None:
            variant = (record["pruner"], record["reduction"], record["restore"])
            by_variant.setdefault(variant, {})[(record["prompt"], record["seed"])] = record
    rows = []
    for pruner, reduction in dict.fromkeys((p, r) for p, r, _ in by_variant if p not in MERGING):
        restores = [restore for restore in RESTORES if (pruner, reduction, restore) in by_variant]
        baseline = by_variant.get((PAIRED_BASELINE, reduction, "none"))
        if len(restores) < 2 and baseline is None:
            continue
        plain = by_variant.get((pruner, reduction, "none"))
        for restore in restores:
            runs = by_variant[(pruner, reduction, restore)]
            row = {"method": pruner, "reduction": reduction, "restore": restore, "pairs": len(runs),
                   **{name: _mean_of(runs.values(), name) for name in ("psnr", "tde", "warp_ratio", "mask_iou")}}
            for suffix, other in (("none", plain if restore != "none" else None), ("tome", baseline)):
                row[f"delta_{suffix}"], row[f"wins_{suffix}"] = _paired_psnr(runs, other)
            rows.append(row)
    return rows


def best_against_baseline(rows: list[dict]) -> list[dict]:
    """Per reduction, the paired row with the highest mean PSNR and how it fares against ToMe."""
    best: dict[float, dict] = {}
    for row in rows:
        if row["reduction"] not in best or row["psnr"] > best[row["reduction"]]["psnr"]:
            best[row["reduction"]] = row
    return list(best.values())


def _paired_psnr(runs: dict[tuple, dict], other: dict[tuple, dict] | None) -> tuple[float | None, str | None]:
    """Mean PSNR difference runs − other over the prompt × seed pairs both hold, and 'wins/pairs'."""
    shared = [pair for pair in runs if other is not None and pair in other]
    if not shared:
        return None, None
    deltas = [runs[pair]["psnr"] - other[pair]["psnr"] for pair in shared]
    return statistics.fmean(deltas), f"{sum(delta > 0 for delta in deltas)}/{len(deltas)}"


def _mean_of(records, name: str) -> float | None:
    values = [record[name] for record in records if record.get(name) is not None]
    return statistics.fmean(values) if values else None


def paired_table_rows(rows: list[dict], columns: tuple[tuple[str, str], ...] = PAIRED_COLUMNS):
    """Header and formatted cells of the paired-comparison table (`columns`: (field, title) pairs)."""
    formats = {"psnr": ".2f", "delta_none": "+.2f", "delta_tome": "+.2f", "tde": ".4f", "warp_ratio": ".3f",
               "mask_iou": ".3f", "reduction": "g"}

    def cell(row: dict, name: str) -> str:
        value = row.get(name)
        return "—" if value is None else format(value, formats[name]) if name in formats else str(value)

    return [title for _, title in columns], [[cell(row, name) for name, _ in columns] for row in rows]


def paired_markdown(rows: list[dict]) -> str:
    """paired.md: the paired table, then per reduction the best variant against ToMe."""
    best_columns = tuple(column for column in PAIRED_COLUMNS
                         if column[0] in ("method", "reduction", "restore", "pairs", "psnr", "delta_tome", "wins_tome"))
    return "\n".join([
        _markdown_table(*paired_table_rows(rows)), "", "Best variant per reduction against ToMe:", "",
        _markdown_table(*paired_table_rows(best_against_baseline(rows), best_columns)),
    ]) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def write_outputs(result: BenchResult, spec: BenchSpec, out_dir: Path) -> dict[str, Path]:
    """bench.json (records + aggregates + paired), runs.csv, summary.csv, summary.md, speedup_vs_fidelity.png and,
    when the bench has restoration or ToMe pairs, paired.csv and paired.md, as one group: all of them reach the
    folder or none does (bench.json last, as it is what a resume reads)."""
    from .outputs import atomic_files, write_json_to, writing

    paired = paired_comparisons(result.records)
    names = ["runs.csv", "summary.csv", "summary.md"] + (["speedup_vs_fidelity.png"] if result.aggregates else [])
    names += ["paired.csv", "paired.md"] if paired else []
    files = {name: out_dir / name for name in [*names, "bench.json"]}
    with atomic_files(*files.values()) as partials:
        partial = dict(zip(files, partials))
        _write_csv(partial["runs.csv"], RUN_FIELDS, result.records)
        _write_csv(partial["summary.csv"], AGGREGATE_FIELDS, result.aggregates)
        with writing(partial["summary.md"]):
            partial["summary.md"].write_text(_markdown_table(*table_rows(result.aggregates)) + "\n")
        if paired:
            _write_csv(partial["paired.csv"], PAIRED_FIELDS, paired)
            with writing(partial["paired.md"]):
                partial["paired.md"].write_text(paired_markdown(paired))
        if result.aggregates:
            plot(result.aggregates, partial["speedup_vs_fidelity.png"], profile=spec.profile is not None)
        extra = {"paired": paired} if paired else {}
        write_json_to(bench_header(spec) | {"records": result.records, "aggregates": result.aggregates} | extra,
                      partial["bench.json"], allow_nan=BENCH_JSON_NAN)
    return {("plot" if name.endswith(".png") else name): path for name, path in files.items()}


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    from .outputs import writing

    with writing(path), path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def plot(aggregates: list[dict], path: Path, profile: bool) -> None:
    """Speedup against fidelity (PSNR, SSIM) per method, a line through its reductions; profile: speedup and the
    FLOP bound against the reduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .outputs import writing

    panels = (("flop_bound_speedup", "FLOP-bound speedup ×"),) if profile else (("psnr", "PSNR vs dense (dB)"),
                                                                               ("ssim", "SSIM vs dense"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    methods = list(dict.fromkeys(row["method"] for row in aggregates if row["method"] != "dense"))
    for axis, (name, label) in zip(axes[0], panels):
        for method in methods:
            rows = [r for r in aggregates
                    if r["method"] == method and r.get(name) is not None and (profile or r["speedup"])]
            if not rows:
                continue
            x = [r["reduction"] or 0.0 for r in rows] if profile else [r["speedup"] for r in rows]
            y = [r[name] for r in rows]
            axis.plot(x, y, marker="o", label=method)
            if profile and all(r["speedup"] for r in rows):  # the meta device times nothing
                axis.plot(x, [r["speedup"] for r in rows], marker="x", linestyle="--", label=f"{method} measured")
        axis.set_xlabel("token reduction r" if profile else "speedup vs dense (total latency) ×")
        axis.set_ylabel("speedup ×" if profile else label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    try:
        with writing(path):
            figure.savefig(path, format="png", dpi=120)
    finally:
        plt.close(figure)
