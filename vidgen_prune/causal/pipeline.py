"""The pipeline causal generation runs: a Wan pipeline whose transformer is a causal one.

Without `--model`, the embedded tiny model with its causal transformer (`tiny/causal`, trained by
`vidgen_prune.tiny.train_causal`) in place of the bidirectional one; with `--model DIR --transformer-weights FILE`,
that pipeline with a Self-Forcing / CausVid state dict loaded into its transformer.
"""

from __future__ import annotations

import os

import torch

from .checkpoint import expected_parameters, read_state_dict, to_diffusers


def transformer_config(model: str | None) -> dict:
    """The transformer config of `model` (the embedded causal one for None), read without loading weights."""
    from diffusers import WanTransformer3DModel

    from ..tiny import EMBEDDED_CAUSAL_DIR

    if model is None:
        return WanTransformer3DModel.load_config(EMBEDDED_CAUSAL_DIR)
    return WanTransformer3DModel.load_config(os.path.expanduser(model), subfolder="transformer")


def read_transformer_weights(path: str, model: str | None) -> dict[str, torch.Tensor]:
    """The checkpoint at `path` renamed for `model`'s transformer; ValueError (bad input) if it does not fit.

    Reads the checkpoint (memory-mapped) and the model's config only: no model weights are loaded yet."""
    config = transformer_config(model)
    if config.get("_class_name") != "WanTransformer3DModel":
        raise ValueError(f"--transformer-weights needs a Wan transformer, this model has {config.get('_class_name')}")
    return to_diffusers(read_state_dict(path), expected_parameters(config))


def load_causal_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32",
                         transformer_weights: dict[str, torch.Tensor] | None = None,
                         causal_transformer: str | None = None):
    """`engine.load_pipeline(model)` with its transformer made the causal one (see the module docstring);
    `causal_transformer` is a transformer folder to use instead of the embedded causal one (without `model`)."""
    from diffusers import WanTransformer3DModel

    from ..engine import DTYPES, load_pipeline
    from ..tiny import EMBEDDED_CAUSAL_DIR

    pipe = load_pipeline(model, device, dtype)
    if transformer_weights is not None:
        pipe.transformer.load_state_dict(transformer_weights, strict=True)
    elif model is None:
        folder = causal_transformer or EMBEDDED_CAUSAL_DIR
        causal = WanTransformer3DModel.from_pretrained(folder, torch_dtype=DTYPES[dtype])
        pipe.register_modules(transformer=causal.eval().to(device))
    return pipe
