"""The embedded tiny text-to-video model: a real diffusers ``WanPipeline`` trained on procedural videos.

Load it exactly like a downloaded checkpoint: ``WanPipeline.from_pretrained(EMBEDDED_MODEL_DIR)``.
"""

from __future__ import annotations

from pathlib import Path

from vidgen_prune.presets import EMBEDDED_PRESET, load_preset

EMBEDDED_MODEL_DIR: Path = Path(__file__).resolve().parent / "weights"
# the causal variant's transformer alone (vidgen_prune.tiny.train_causal); text encoder and VAE are the model's above
EMBEDDED_CAUSAL_DIR: Path = Path(__file__).resolve().parent / "causal"
# the router trained on the causal model's own chunk trajectories (`vidprune train-router --causal`)
EMBEDDED_CAUSAL_ROUTER_DIR: Path = EMBEDDED_CAUSAL_DIR / "router"

# What the embedded model was trained for, read from its preset (the one place these numbers live): 17 frames at
# 128x128 -> latent 5x32x32 -> 1280 video tokens per transformer forward with patch (1, 2, 2).
GENERATION_DEFAULTS: dict = load_preset(EMBEDDED_PRESET)["generate"]
