"""YAML presets: per-model generation and pruning defaults, between dataclass defaults and command-line flags."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from ..causal.config import CausalConfig
from ..config import GenerateConfig, PruneConfig, config_keys

EMBEDDED_PRESET = "tiny-wan"
EMBEDDED_CAUSAL_PRESET = "tiny-wan-causal"
# substrings of a model id or folder name → its preset (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)
MODEL_PRESETS = {"wan2.1-t2v-1.3b": "wan2.1-1.3b", "wan2.1-t2v-14b": "wan2.1-14b"}
# the same for --causal: Self-Forcing is a causal Wan2.1-T2V-1.3B
CAUSAL_MODEL_PRESETS = {"wan2.1-t2v-1.3b": "self-forcing-1.3b"}
SECTIONS = {"generate": GenerateConfig, "prune": PruneConfig, "causal": CausalConfig}


def preset_names() -> list[str]:
    folder = resources.files("vidgen_prune.presets")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def default_preset(model: str | None, causal: bool = False) -> str | None:
    """The embedded model's preset, or the preset a known model id names; None for an unknown model."""
    if model is None:
        return EMBEDDED_CAUSAL_PRESET if causal else EMBEDDED_PRESET
    presets = CAUSAL_MODEL_PRESETS if causal else MODEL_PRESETS
    return next((preset for key, preset in presets.items() if key in model.lower()), None)


def load_preset(name_or_path: str) -> dict[str, dict]:
    """Read a preset by name (see `preset_names`) or path; unknown sections or keys are errors, not ignored."""
    path = Path(name_or_path)
    if name_or_path in preset_names():
        text = resources.files("vidgen_prune.presets").joinpath(f"{name_or_path}.yaml").read_text()
    elif path.is_file():
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"cannot read preset {name_or_path}: {error.strerror}") from error
    else:
        raise ValueError(f"preset not found: {name_or_path} (built-in: {', '.join(preset_names())})")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"preset {name_or_path} is not valid YAML{where}") from error
    if not isinstance(data, dict):
        raise ValueError(f"preset {name_or_path} must be a mapping with sections {', '.join(SECTIONS)}")
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ValueError(f"preset {name_or_path}: unknown section {section!r} (expected {', '.join(SECTIONS)})")
        unknown = set(values) - config_keys(SECTIONS[section])
        if unknown:
            raise ValueError(f"preset {name_or_path}: unknown {section} keys {', '.join(sorted(unknown))}")
    return {section: dict(data.get(section, {})) for section in SECTIONS}


def merged(section: str, preset: dict[str, dict] | None, overrides: dict) -> dict:
    """Preset values overridden by the flags a user actually gave (None = not given)."""
    values = dict(preset[section]) if preset else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    if "evit_layers" in values:
        values["evit_layers"] = tuple(values["evit_layers"])
    return values
