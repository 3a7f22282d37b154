"""Model adapters, one per diffusers video-DiT family, and what a model folder says before any weight is read.

`ADAPTERS` is the registry: a new family is one adapter module added here; nothing else in the engine or the
pruners names a family. `inspect_model` reads `model_index.json` and each denoiser's `config.json` (from a folder or
the hub) so an unsupported architecture is refused before the weights load.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from .base import BlockCall, BlockLayout, ModelAdapter, ModelInfo, Profile, TokenGrid
from .cogvideox import CogVideoXAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .ltx_video import LTXVideoAdapter
from .mochi import MochiAdapter
from .skyreels_v2 import SkyReelsV2Adapter
from .wan import WanAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (
    WanAdapter(), HunyuanVideoAdapter(), CogVideoXAdapter(), LTXVideoAdapter(), SkyReelsV2Adapter(), MochiAdapter(),
)
_BY_TRANSFORMER = {name: adapter for adapter in ADAPTERS for name in adapter.transformer_classes}


def supported() -> str:
    """The supported families, for messages: `wan (WanPipeline, ...), ...`."""
    return "; ".join(f"{adapter.name} ({', '.join(adapter.pipeline_classes)})" for adapter in ADAPTERS)


def adapter_for(transformer: torch.nn.Module) -> ModelAdapter:
    name = type(transformer).__name__
    if name not in _BY_TRANSFORMER:
        raise ValueError(f"no pruning adapter for {name}; supported families: {supported()}")
    return _BY_TRANSFORMER[name]


def profiles() -> dict[str, tuple[ModelAdapter, Profile]]:
    """Every real-size profile of every family: name → (adapter, profile)."""
    return {name: (adapter, profile) for adapter in ADAPTERS for name, profile in adapter.profiles.items()}


def denoisers(pipe) -> list[torch.nn.Module]:
    """The pipeline's denoisers that are present (Wan2.2 A14B: transformer and transformer_2, either may be None)."""
    adapter = None
    for component in ("transformer", "transformer_2"):
        module = getattr(pipe, component, None)
        if module is not None:
            adapter = adapter_for(module)
            break
    if adapter is None:
        raise ValueError(f"{type(pipe).__name__} has no transformer to prune")
    refusal = adapter.refused_pipelines.get(type(pipe).__name__)
    if refusal:
        raise ValueError(f"{type(pipe).__name__} is not supported: {refusal}")
    found = [getattr(pipe, name, None) for name in adapter.denoiser_names]
    return [module for module in found if module is not None]


def describe_pipeline(pipe) -> ModelInfo:
    """The ModelInfo of a pipeline already in memory (one a user built or loaded themselves)."""
    modules = denoisers(pipe)
    adapter = adapter_for(modules[0])
    present = tuple(name for name in adapter.denoiser_names if getattr(pipe, name, None) is not None)
    components = {name: dict(getattr(pipe, name).config) for name in (*present, "vae") if getattr(pipe, name, None)}
    source = getattr(pipe.config, "_name_or_path", None) or type(pipe).__name__
    return ModelInfo(source, type(pipe).__name__, type(modules[0]).__name__, present, adapter, components,
                     _settings(dict(pipe.config)))


def _settings(index: dict) -> dict:
    """A pipeline config's own settings (boundary_ratio, expand_timesteps, ...), without its components."""
    return {name: value for name, value in index.items()
            if not name.startswith("_") and not (isinstance(value, (list, tuple)) and len(value) == 2)}


def _check_pipeline(adapter: ModelAdapter, pipeline_class: str, source: str) -> None:
    """The family runs `pipeline_class`, or a ValueError says why not (its own reason for a refused pipeline)."""
    if pipeline_class in adapter.refused_pipelines:
        raise ValueError(f"{source}: {pipeline_class} is not supported: {adapter.refused_pipelines[pipeline_class]}")
    if pipeline_class not in adapter.pipeline_classes:
        raise ValueError(f"{source}: {pipeline_class} is not supported (the {adapter.name} family runs "
                         f"{', '.join(adapter.pipeline_classes)})")


# ------------------------------------------------------------------------------------------------ before loading


def inspect_model(model: str | None) -> ModelInfo:
    """What `model` (a folder, a hub id, or None for the embedded model) is, from its JSON files alone.

    Raises ValueError (one line) for anything that would fail later: not a diffusers pipeline, JSON that does not
    parse, an unsupported pipeline or transformer, a missing denoiser, weight files missing or truncated.
    """
    from ..tiny import EMBEDDED_MODEL_DIR

    source = str(EMBEDDED_MODEL_DIR) if model is None else os.path.expanduser(model)
    folder = Path(source) if Path(source).is_dir() else None
    read = (lambda name: _read_local_json(folder, name)) if folder else (lambda name: _read_hub_json(source, name))
    index = read("model_index.json")
    pipeline_class = index.get("_class_name")
    entries = {name: value for name, value in index.items() if isinstance(value, list) and len(value) == 2}
    transformer_class = next((value[1] for name, value in entries.items() if name.startswith("transformer") and
                              value[1]), None)
    if transformer_class is None:
        raise ValueError(f"{source}: {pipeline_class} has no transformer to prune; supported families: {supported()}")
    adapter = _BY_TRANSFORMER.get(transformer_class)
    if adapter is None:
        raise ValueError(f"{source}: {pipeline_class} with {transformer_class} is not supported; supported families: "
                         f"{supported()}")
    _check_pipeline(adapter, pipeline_class, source)
    present = tuple(name for name in adapter.denoiser_names if name in entries and entries[name][1])
    components = {}
    for name in present:
        config = read(f"{name}/config.json")
        if config.get("_class_name") != entries[name][1]:
            raise ValueError(f"{source}: {name}/config.json is a {config.get('_class_name')}, model_index.json says "
                             f"{entries[name][1]}")
        components[name] = config
    if "vae" in entries:
        components["vae"] = read("vae/config.json")
    if folder:
        for name, (library, _) in entries.items():
            if library in ("diffusers", "transformers") and (folder / name / "config.json").is_file():
                _check_weights(folder / name)
    return ModelInfo(source, pipeline_class, transformer_class, present, adapter, components, _settings(index))


def _read_local_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        what = "not a diffusers pipeline folder" if name == "model_index.json" else "incomplete model folder"
        raise ValueError(f"{folder}: {what} (no {name})")
    return _parse_json(path.read_bytes(), f"{folder}/{name}")


_HUB_ERRORS = {  # huggingface_hub's exception → what it means for --model
    "GatedRepoError": "the repository is gated: log in with `hf auth login` and accept its licence",
    "RepositoryNotFoundError": "no such repository on the hub (or it is private)",
    "RevisionNotFoundError": "no such revision on the hub",
    "EntryNotFoundError": "the repository has no such file: not a diffusers pipeline",
    "LocalEntryNotFoundError": "the hub cannot be reached and the file is not in the local cache",
}


def _read_hub_json(repo: str, name: str) -> dict:
    """A JSON file of a hub repository (the local cache first), with the hub client's own log lines kept quiet."""
    import logging

    from huggingface_hub import hf_hub_download

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would make the refusal several lines
    try:
        path = hf_hub_download(repo, name)
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, gated: all mean "cannot use this id"
        reason = _HUB_ERRORS.get(type(error).__name__, f"{type(error).__name__}: {' '.join(str(error).split())[:120]}")
        raise ValueError(f"--model {repo}: not a local folder, and its {name} could not be had from the hub "
                         f"({reason})") from None
    finally:
        hub_logger.setLevel(level)
    return _parse_json(Path(path).read_bytes(), f"{repo}/{name}")


def _parse_json(data: bytes, where: str) -> dict:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is not valid JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not a JSON object")
    return value


def _check_weights(component: Path) -> None:
    """A component folder holds weights, and each safetensors file is as long as its header says (a truncated
    download or copy fails here, before loading; only the header is read)."""
    files = [p for p in component.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
    if not files:
        raise ValueError(f"{component}: no weight files (*.safetensors)")
    for path in files:
        if path.suffix != ".safetensors":
            continue
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = handle.read(length) if 0 < length <= size - 8 else b""
        try:
            tensors = json.loads(header)
            end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError):
            raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
        if size != 8 + length + end:
            raise ValueError(f"{path}: truncated or corrupt ({size} bytes, its header describes {8 + length + end})")


__all__ = [
    "ADAPTERS", "BlockCall", "BlockLayout", "CogVideoXAdapter", "HunyuanVideoAdapter", "ModelAdapter", "ModelInfo",
    "Profile", "TokenGrid", "WanAdapter",
    "adapter_for", "denoisers", "describe_pipeline", "inspect_model", "profiles", "supported",
]
