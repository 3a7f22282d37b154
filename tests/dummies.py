"""Tiny random pipelines of each supported family, built like diffusers' own test dummies, for `save_pretrained`."""

from __future__ import annotations

from dataclasses import replace

import torch

from vidgen_prune.tiny.pipeline import TinyConfig, build_pipeline, build_transformer

TEST_CONFIG = replace(TinyConfig.for_tests(), num_layers=6)  # 6 blocks: with reselection every 3, 4 of them prune


def wan_two_experts(boundary_ratio: float = 0.5):
    """Wan2.2 A14B's shape: `transformer` denoises the steps with t >= boundary, `transformer_2` the rest."""
    from diffusers import WanPipeline

    tiny = build_pipeline(TEST_CONFIG, seed=0)
    torch.manual_seed(1)
    components = {**tiny.components, "transformer_2": build_transformer(TEST_CONFIG)}
    return WanPipeline(**components, boundary_ratio=boundary_ratio)
