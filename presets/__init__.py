"""YAML presets: per-model generation and pruning defaults, between dataclass defaults and command-line flags."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import yaml

from ..causal.config import CausalConfig
from ..config import GenerateConfig, PruneConfig, check_field_types, config_keys

EMBEDDED_PRESET = "tiny-wan"
EMBEDDED_CAUSAL_PRESET = "tiny-wan-causal"
# substrings of a model id or folder name (lower case) → its preset (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers,
# hunyuanvideo-community/HunyuanVideo, THUDM/CogVideoX-5b, THUDM/CogVideoX1.5-5B)
MODEL_PRESETS = {
    "wan2.1-t2v-1.3b": "wan2.1-1.3b", "wan2.1-t2v-14b": "wan2.1-14b", "wan2.1-i2v-14b-480p": "wan2.1-i2v-14b",
    "wan2.2-t2v-a14b": "wan2.2-a14b", "wan2.2-ti2v-5b": "wan2.2-ti2v-5b", "ltx-video": "ltx-video",
    "skyreels-v2-t2v-14b-540p": "skyreels-v2", "mochi-1": "mochi", "hunyuanvideo": "hunyuanvideo",
    "cogvideox-2b": "cogvideox-2b", "cogvideox-5b": "cogvideox-5b", "cogvideox1.5-5b": "cogvideox1.5-5b",
}
# the same for --causal: Self-Forcing is a causal Wan2.1-T2V-1.3B
CAUSAL_MODEL_PRESETS = {"wan2.1-t2v-1.3b": "self-forcing-1.3b"}
SECTIONS = {"generate": GenerateConfig, "prune": PruneConfig, "causal": CausalConfig}


def preset_names() -> list[str]:
    folder = resources.files("vidgen_prune.presets")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def default_preset(model: str | None, causal: bool = False) -> str | None:
    """The embedded model's preset, the preset a known model id names, or for a local folder of another name its
    family's (`ModelAdapter.preset`: LTX-Video's text length and frame rule differ from the generic defaults); None
    for an unknown model. `causal`: the presets of causal (chunk-by-chunk) generation."""
    if model is None:
        return EMBEDDED_CAUSAL_PRESET if causal else EMBEDDED_PRESET
    presets = CAUSAL_MODEL_PRESETS if causal else MODEL_PRESETS
    named = next((preset for key, preset in presets.items() if key in model.lower()), None)
    if named or causal or not Path(model).expanduser().is_dir():
        return named
    return _family_preset(str(Path(model).expanduser().resolve()))


@functools.lru_cache(maxsize=8)  # a batch builds every line's configs: read the folder's JSON once
def _family_preset(folder: str) -> str | None:
    from ..models import inspect_model

    try:
        return inspect_model(folder).adapter.preset or None
    except ValueError:  # refused later, with its own message, by the same inspection
        return None


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
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"preset {name_or_path}: unknown section {sorted(unknown)[0]!r} (expected "
                         f"{', '.join(SECTIONS)})")
    return {section: checked_section(data, section, f"preset {name_or_path}") for section in SECTIONS}


def checked_section(data: dict, section: str, where: str) -> dict:
    """`data[section]` (generate or prune; absent or null = {}) with every key known and every value of its
    field's type, else ValueError naming `where`, the section and the key. Presets and bench specs share it."""
    values = {} if data.get(section) is None else data[section]
    if not isinstance(values, dict):
        raise ValueError(f"{where}: {section} must be a mapping of {SECTIONS[section].__name__} keys, got "
                         f"{values!r}")
    unknown = set(values) - config_keys(SECTIONS[section])
    if unknown:
        raise ValueError(f"{where}: unknown {section} keys {', '.join(sorted(unknown))}")
    check_field_types(SECTIONS[section], values, f"{where}: {section}.")
    return dict(values)


def merged(section: str, preset: dict[str, dict] | None, overrides: dict, defaults: dict | None = None) -> dict:
    """`defaults` (a command's own, below any preset) < preset values < the flags a user actually gave (None = not
    given)."""
    values = dict(defaults or {})
    values.update(preset[section] if preset else {})
    values.update({key: value for key, value in overrides.items() if value is not None})
    if "evit_layers" in values:
        values["evit_layers"] = tuple(values["evit_layers"])
    return values
