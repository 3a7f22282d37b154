"""What a bench runs: method entries, the spec (its axes, generation and profile settings), run keys, and the
checks made before anything loads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..causal.config import CausalConfig
from ..config import GenerateConfig, PruneConfig, check_seed
from ..models import profiles
from ..pruning import MERGING, METHODS
from ..pruning.caches import CACHES

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
        from ..pruning.restore import RESTORES

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
        from ..causal.config import default_causal_router

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

    from ..config import check_field_types
    from ..presets import checked_section

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
    from ..config import check_kernels
    from ..presets import default_preset, load_preset, merged, preset_names
    from ..tiny.prompts import HELD_OUT_PROMPTS

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
    from ..models import ModelInfo, denoisers
    from ..pruning import check_method, check_pruner, make_pruner

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


