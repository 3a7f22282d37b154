"""Frozen run configurations: the CLI and YAML presets build them, the engine consumes them.

Every check a user's input can fail lives in `__post_init__`, so bad input is refused with one clear
message before any model is loaded or any step is computed.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

MAX_REDUCTION = 0.95
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes a signed 64-bit seed; 2**70 failed after loading the model


@dataclass(frozen=True)
class PruneConfig:
    method: str = "dense"
    reduction: float = 0.0  # mean fraction of token·block computations skipped per generation
    alpha: float = 0.5  # TAPE smoothing weight (Eq. 2): smaller trusts the previous frame more
    reselect_every: int = 10  # TAPE: a dense, rescoring block every R blocks (paper: 10 of 60)
    schedule: str = "highlow"  # TAPE timestep budget: highlow | constant | lowhigh
    schedule_delta: float = 0.1  # HighLow runs from r+δ down to r−δ (paper: 30 % → 10 % for 20 %)
    schedule_stages: int = 5  # rate levels over the steps (paper: a new level every 10 of 50 steps)
    evit_layers: tuple[float, ...] = (1 / 6, 1 / 2, 5 / 6)  # EViT stages as depth fractions (paper: 10/30/50 of 60)
    score_queries: int = 256  # sampled queries for attention-received scores on long sequences
    kernels: str = "auto"  # auto | triton | torch
    cache: str | None = None  # diffusers cache wrapped around the (pruned) blocks: fbcache | pab | taylorseer
    fbcache_threshold: float = 0.05  # FirstBlockCache: reuse the tail when block 0's residual changes less (diffusers)
    pab_skip: int = 2  # PyramidAttentionBroadcast: recompute self-attention every N-th call for t in (100, 800)
    taylorseer_interval: int = 5  # TaylorSeer: a full forward every N steps after 3 dense ones, predicted between
    router: str | None = None  # `--method router`: folder written by train-router; None = the embedded model's
    restore: str = "none"  # skipped tokens' update: none | similar (best-matching kept token) | neighbours (3×3×3)

    def __post_init__(self):
        from .pruning import METHODS
        from .pruning.schedule import SCHEDULES

        check_finite(self)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0.0 <= self.reduction < MAX_REDUCTION:
            raise ValueError(f"--reduction must be in [0, {MAX_REDUCTION}), got {self.reduction}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in (0, 1], got {self.alpha}")
        if self.reselect_every < 1:
            raise ValueError(f"--reselect-every must be at least 1, got {self.reselect_every}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not 0.0 <= self.schedule_delta < MAX_REDUCTION:
            raise ValueError(f"--schedule-delta must be in [0, {MAX_REDUCTION}), got {self.schedule_delta}")
        if self.schedule_stages < 1 or self.score_queries < 1:
            raise ValueError("schedule_stages and score_queries must be positive")
        if not self.evit_layers or any(not 0.0 < f < 1.0 for f in self.evit_layers):
            raise ValueError(f"evit_layers are depth fractions in (0, 1), got {self.evit_layers}")
        if self.kernels not in ("auto", "triton", "torch"):
            raise ValueError(f"--kernels must be auto, triton or torch, got {self.kernels!r}")
        from .pruning import MERGING
        from .pruning.restore import RESTORES

        if self.restore not in RESTORES:
            raise ValueError(f"unknown --restore {self.restore!r}; choose from {', '.join(RESTORES)}")
        if self.restore != "none" and self.method in MERGING:
            raise ValueError(f"--restore is for methods that skip tokens; {self.method} merges them, and every merged "
                             "token already receives its group's update")
        if self.router is not None:
            if self.method != "router":
                raise ValueError(f"--router needs --method router (got --method {self.method})")
            if not Path(self.router).expanduser().is_dir():
                raise ValueError(f"--router folder not found: {self.router}")
        self._check_cache()

    def _check_cache(self) -> None:
        from .pruning.caches import CACHES

        if self.cache is not None and self.cache not in CACHES:
            raise ValueError(f"unknown cache {self.cache!r}; choose from {', '.join(CACHES)}")
        if self.cache == "pab" and self.method != "dense":
            # PAB replays an attention module's output from an earlier step row for row; under token pruning the
            # rows are a different token set (and count) at every step, so the replayed rows belong to other tokens
            raise ValueError("--cache pab cannot be composed with token pruning (it replays attention rows of other "
                             "tokens); use fbcache or taylorseer")
        if not self.fbcache_threshold > 0.0:
            raise ValueError(f"--fbcache-threshold must be positive, got {self.fbcache_threshold}")
        if self.pab_skip < 2 or self.taylorseer_interval < 2:
            raise ValueError("--pab-skip and --taylorseer-interval must be at least 2 (1 would never reuse anything)")


@dataclass(frozen=True)
class GenerateConfig:
    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None  # folder or hub id of a diffusers pipeline; None = the embedded tiny model
    steps: int = 20
    frames: int = 17  # each family has its rule (Wan: 4k+1), checked by its adapter before loading
    height: int = 128  # likewise a multiple of the family's VAE × patch size (Wan: 16)
    width: int = 128
    guidance: float = 5.0
    # text positions per prompt (zero-padded): 512 for real Wan checkpoints, what the model was trained with
    max_sequence_length: int = 512
    seed: int = 0
    fps: int = 8
    device: str = "auto"  # auto: cuda when this machine has it, else cpu
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 elsewhere (the VAE always runs float32)
    out: Path | None = None  # MP4 path; a JSON sidecar is written beside it
    image: Path | None = None  # image-to-video pipelines: the conditioning (first) frame
    # diffusers features the pipeline runs with (vidgen_prune.compose): set up once, when it is loaded
    offload: str | None = None  # model | group | sequential (diffusers' CPU offload mechanisms)
    attention_backend: str | None = None  # diffusers' attention dispatcher: native, flash, flash_3, sage, ...
    compile: bool = False  # regional torch.compile of every block
    lora: tuple[str, ...] = ()  # LoRA files or folders, each PATH or PATH:SCALE, loaded with the pipeline's loader
    vae_tiling: bool = False  # decode large frames tile by tile (and one video at a time)

    def __post_init__(self):
        check_finite(self)
        if not self.prompt.strip():
            raise ValueError("give --prompt TEXT, or --prompts FILE with --out-dir (the prompt is empty)")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.frames < 1:
            raise ValueError(f"--frames must be at least 1, got {self.frames}")
        for name in ("height", "width"):
            if getattr(self, name) < 16:
                raise ValueError(f"--{name} must be at least 16, got {getattr(self, name)}")
        if self.guidance < 0.0:
            raise ValueError(f"--guidance must be >= 0 (at most 1 turns classifier-free guidance off), got "
                             f"{self.guidance}")
        check_seed(self.seed)
        if self.fps < 1:
            raise ValueError(f"--fps must be at least 1, got {self.fps}")
        if self.max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be at least 1, got {self.max_sequence_length}")
        if self.device == "auto":
            object.__setattr__(self, "device", "cuda" if _cuda_available() else "cpu")
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", "bfloat16" if self.device.startswith("cuda") else "float32")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_device(self.device)
        object.__setattr__(self, "lora", tuple(self.lora))  # a preset or JSON gives a list
        from .compose import check_setup

        check_setup(self)
        if self.model is not None and _looks_like_path(self.model) and not Path(self.model).is_dir():
            raise ValueError(f"--model folder not found: {self.model}")
        if self.image is not None:
            object.__setattr__(self, "image", Path(self.image))  # a preset or JSON gives a string
            _check_image(self.image)
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))  # a preset or JSON gives a string
            if self.out.suffix.lower() != ".mp4":
                raise ValueError(f"--out must be an .mp4 path (its .json sidecar goes beside it), got {self.out}")


DTYPES = ("float32", "bfloat16", "float16")


def _looks_like_path(model: str) -> bool:
    """A hub id is `owner/name`; anything else with a path shape, or that exists, is a local folder."""
    return Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") != 1


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ValueError(f"--image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"--image {path} is not a readable image ({type(error).__name__})") from None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_finite(config) -> None:
    """Refuse NaN and ±inf in any float field of a config: NaN fails every comparison, so a range check written as
    `if value <= 0: refuse` lets it through (`--guidance nan` ran with guidance silently off and wrote NaN into the
    sidecar, which is not JSON)."""
    for f in fields(config):
        value = getattr(config, f.name)
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{flag} must be in [0, 2**63), got {seed}")


def check_device(device: str) -> None:
    """A device string torch parses and this machine has, checked before any weights load."""
    if device == "cpu":
        return  # the default: no torch import for it
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, xpu, ...)") from None
    if parsed.type in ("cpu", "meta"):  # meta: shapes only (bench --profile's FLOP bound without weights)
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for, but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    backend = getattr(torch, parsed.type, None)  # torch.mps, torch.xpu, ...; meta or xla have no usable one here
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"--device {device}: no {parsed.type} device is available on this machine")


def check_kernels(prune: PruneConfig, device: str) -> None:
    """`--kernels triton` only where Triton can run on `device` (CUDA, or the interpreter with TRITON_INTERPRET=1),
    refused before loading rather than at the first pruned block; `auto` falls back to torch by itself."""
    if prune.kernels != "triton":
        return
    from .kernels import resolve_backend

    try:
        resolve_backend("triton", device)
    except RuntimeError as error:
        raise ValueError(f"--kernels triton: {error}") from None


# ---------------------------------------------------------------------------------------------- value types


def check_field_types(cls, values: dict, where: str = "") -> None:
    """Refuse (ValueError) a value whose type does not fit its field of the dataclass `cls`; `where` prefixes the
    key in the message ("preset p.yaml: generate."). One checker for presets, bench specs and prompt-file lines:
    a YAML `steps: "abc"` would otherwise crash with a TypeError deep in a run, or never be noticed."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        expected = _type_problem(hints[key], value)
        if expected:
            hint = ""
            if isinstance(value, str) and "e" in value.lower() and _is_number(value):
                hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
            raise ValueError(f"{where}{key} must be {expected}, got {json.dumps(value, default=str)}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _type_problem(annotation, value) -> str | None:
    """None when `value` fits `annotation` (str, int, float, bool, Path, X | None, tuple[X, ...], tuple[X, Y]);
    else what was expected, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        problem = _type_problem(inner, value)
        return problem and f"{problem} or null"
    if origin is tuple:
        each = args[0]
        length = None if args[-1] is Ellipsis else len(args)
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            return f"a list of {length or ''}{' ' if length else ''}{_plural(each)}"
        return next((f"a list of {_plural(each)}" for item in value if _type_problem(each, item)), None)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        Path: lambda v: isinstance(v, (str, Path)),
    }[annotation](value)
    return None if ok else {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                            Path: "a path"}[annotation]


def _plural(annotation) -> str:
    return {int: "integers", float: "numbers", str: "strings"}[annotation]


def config_keys(cls) -> set[str]:
    return {f.name for f in fields(cls)}
