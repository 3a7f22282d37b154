"""Self-Forcing / CausVid transformer weights, saved with the original Wan key names, onto diffusers' Wan.

The original `WanModel` names (`blocks.0.self_attn.q.weight`, `blocks.0.norm3.weight`, `head.head.weight`, ...)
map one to one onto `WanTransformer3DModel`'s (`blocks.0.attn1.to_q.weight`, `blocks.0.norm2.weight`,
`proj_out.weight`, ...); the table follows diffusers' `convert_wan_transformer_to_diffusers`, including its swap
of norm2 and norm3 (the original block runs norm1, norm3, norm2). Training frameworks add prefixes
(`generator.`, `model.`, `module.`, `_orig_mod.`) and nest the weights (`{"generator_ema": {...}}`); both are
undone. A key that maps nowhere, a parameter left unset or a shape that differs is refused before anything loads.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# fullmatch patterns → diffusers names; (...) groups are copied over
_TOP_LEVEL = [
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
    (r"text_embedding\.0\.(weight|bias)", r"condition_embedder.text_embedder.linear_1.\1"),
    (r"text_embedding\.2\.(weight|bias)", r"condition_embedder.text_embedder.linear_2.\1"),
    (r"time_embedding\.0\.(weight|bias)", r"condition_embedder.time_embedder.linear_1.\1"),
    (r"time_embedding\.2\.(weight|bias)", r"condition_embedder.time_embedder.linear_2.\1"),
    (r"time_projection\.1\.(weight|bias)", r"condition_embedder.time_proj.\1"),
    (r"head\.head\.(weight|bias)", r"proj_out.\1"),
    (r"head\.modulation", r"scale_shift_table"),
]
_BLOCK = [
    (r"modulation", r"scale_shift_table"),
    (r"self_attn\.([qkv])\.(weight|bias)", r"attn1.to_\1.\2"),
    (r"self_attn\.o\.(weight|bias)", r"attn1.to_out.0.\1"),
    (r"self_attn\.norm_([qk])\.weight", r"attn1.norm_\1.weight"),
    (r"cross_attn\.([qkv])\.(weight|bias)", r"attn2.to_\1.\2"),
    (r"cross_attn\.o\.(weight|bias)", r"attn2.to_out.0.\1"),
    (r"cross_attn\.norm_([qk])\.weight", r"attn2.norm_\1.weight"),
    (r"norm3\.(weight|bias)", r"norm2.\1"),  # the cross-attention norm: norm3 in Wan, norm2 in diffusers
    (r"ffn\.0\.(weight|bias)", r"ffn.net.0.proj.\1"),
    (r"ffn\.2\.(weight|bias)", r"ffn.net.2.\1"),
]
def _block_rule(pattern: str, target: str) -> tuple[re.Pattern, str]:
    """The block-level rule under `blocks.N.`: N becomes group 1, so the rule's own groups move up by one."""
    shifted = re.sub(r"\\(\d)", lambda m: rf"\g<{int(m.group(1)) + 1}>", target)
    return re.compile(rf"blocks\.(\d+)\.{pattern}"), rf"blocks.\g<1>.{shifted}"


RULES = [(re.compile(pattern), target) for pattern, target in _TOP_LEVEL] + [_block_rule(*rule) for rule in _BLOCK]
PREFIXES = ("generator.", "model.", "module.", "_orig_mod.", "diffusion_model.", "_fsdp_wrapped_module.")
NESTED = ("generator_ema", "generator", "model", "state_dict")  # Self-Forcing's inference runs with --use_ema


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch-pickled checkpoint (memory-mapped where possible), un-nested."""
    path = Path(path).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input, reported in one line
        raise ValueError(f"--transformer-weights {path} is not a readable checkpoint ({type(error).__name__})")
    while isinstance(state, dict) and not any(isinstance(value, torch.Tensor) for value in state.values()):
        nested = next((key for key in NESTED if isinstance(state.get(key), dict)), None)
        if nested is None:
            raise ValueError(f"--transformer-weights {path}: no tensors, and none of {', '.join(NESTED)} inside")
        state = state[nested]
    if not isinstance(state, dict):
        raise ValueError(f"--transformer-weights {path} does not hold a state dict")
    return state


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove training-framework prefixes that every key carries (`generator.model.blocks.0...` → `blocks.0...`)."""
    while state:
        prefix = next((p for p in PREFIXES if all(key.startswith(p) for key in state)), None)
        if prefix is None:
            return state
        state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def to_diffusers(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Rename original-Wan keys to diffusers'; `expected` is the target's {name: shape}. Raises ValueError listing
    (a few of) the keys that map nowhere or are not expected, the parameters left missing, the shapes that differ."""
    mapped, unknown = {}, []
    for key, value in strip_prefixes(state).items():
        target = next((rule.sub(name, key) for rule, name in RULES if rule.fullmatch(key)), None)
        if target is None or target not in expected:
            unknown.append(key)
        else:
            mapped[target] = value
    missing = sorted(set(expected) - set(mapped))
    wrong = [f"{key} {tuple(value.shape)} ≠ {tuple(expected[key])}" for key, value in mapped.items()
             if value.shape != expected[key]]
    problems = [(unknown, "unknown keys"), (missing, "missing parameters"), (wrong, "shape mismatches")]
    found = [f"{len(items)} {what} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
             for items, what in problems if items]
    if found:
        raise ValueError(f"--transformer-weights does not fit this Wan transformer: {'; '.join(found)}")
    return mapped


def expected_parameters(transformer_config: dict) -> dict[str, torch.Size]:
    """{name: shape} of a `WanTransformer3DModel` with this config, without allocating its weights."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        model = WanTransformer3DModel.from_config(transformer_config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}
