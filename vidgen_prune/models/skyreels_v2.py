"""SkyReels-V2 (`SkyReelsV2Transformer3DModel`): Wan2.1's architecture, text-to-video and image-to-video.

Its blocks are Wan's with a fifth argument, `block(hidden_states, encoder_hidden_states, temb, rotary_emb,
attention_mask)`: a block-causal mask (1, 1, S, S) over the video tokens when `num_frame_per_block` > 1, else None.
A gather takes the mask's rows and columns of the kept tokens. The diffusion-forcing pipelines are refused: they
give every latent frame its own timestep from a step matrix that is longer than the scheduler's steps and restarts
per chunk of a long video, so neither the denoising step nor the step count is the scheduler's.
"""

from __future__ import annotations

from typing import Callable

import torch

from .base import BlockLayout, Profile, TokenGrid
from .wan import _WAN_14B, WAN_LAYOUT, WanAdapter


def gather_square_mask(mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows and columns `index` (B, K) of a token × token mask (1 or B, 1, S, S) → (B, 1, K, K)."""
    mask = mask.expand(index.shape[0], -1, -1, -1)  # (B, 1, S, S)
    rows = mask.gather(2, index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))  # (B, 1, K, S)
    return rows.gather(3, index[:, None, None, :].expand(-1, mask.shape[1], index.shape[1], -1))  # (B, 1, K, K)


SKYREELS_LAYOUT = BlockLayout(token_args={**WAN_LAYOUT.token_args, "attention_mask": gather_square_mask})
DIFFUSION_FORCING = ("its per-frame timesteps come from a step matrix longer than the scheduler's steps that restarts "
                     "for every chunk of a long video, so the denoising step and the step count are not the "
                     "scheduler's; use SkyReelsV2Pipeline or SkyReelsV2ImageToVideoPipeline")
SKYREELS_540P_LATENT = (25, 68, 120)  # 97 frames at 544×960 (the card's example) through Wan2.1's VAE


class SkyReelsV2Adapter(WanAdapter):
    name = "skyreels-v2"
    label = "SkyReels-V2"
    transformer_classes = ("SkyReelsV2Transformer3DModel",)
    pipeline_classes = ("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline")
    image_pipeline = "SkyReelsV2ImageToVideoPipeline"
    denoiser_names = ("transformer",)
    refused_pipelines = {
        f"SkyReelsV2DiffusionForcing{kind}Pipeline": DIFFUSION_FORCING for kind in ("", "ImageToVideo", "VideoToVideo")
    }
    # SkyReels-V2-T2V-14B-540P: Wan2.1-14B's transformer config
    profiles = {"skyreels-v2": Profile(_WAN_14B, SKYREELS_540P_LATENT, 512, "SkyReelsV2Pipeline")}
    block_layout = SKYREELS_LAYOUT

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        if kwargs.get("enable_diffusion_forcing"):
            raise ValueError(f"SkyReels-V2 diffusion forcing is not supported: {DIFFUSION_FORCING}")
        return super().token_grid(transformer, args, kwargs)

    def fused_skip(self, block: torch.nn.Module) -> Callable | None:
        return None  # Wan's fused kernel path has no attention mask; the torch gather path serves every call
