"""LTX-Video (`LTXVideoTransformer3DModel`): text-to-video `LTXPipeline` and image-to-video `LTXImageToVideoPipeline`.

The transformer takes tokens already packed by the pipeline, (B, F·H·W, C) frame-major with a 1×1×1 patch, so the
token grid is the forward's own `num_frames`, `height`, `width` arguments. Blocks are called as
`block(hidden_states, encoder_hidden_states, temb, image_rotary_emb, encoder_attention_mask)`; everything in
`LTXVideoTransformerBlock` but `attn1` acts per token, so what follows a gather is the rotary (cos, sin), each
(B, S, D) over the whole width, and `temb` (B, 1, 6·D), which the image-to-video pipeline makes per token
(B, S, 6·D): the first frame's tokens hold the clean image at t = 0. The highest timestep of a call is the step's.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..metrics.flops import block_flops
from .base import (
    BlockCall,
    BlockLayout,
    ModelAdapter,
    ModelInfo,
    Profile,
    TokenGrid,
    gather_pair,
    gather_tokens,
    rows_at,
)

FFN_MULT = 4  # diffusers' FeedForward default: D → 4·D → D


def _gather_temb(temb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The per-token modulation (B, S, 6·D) of image-to-video follows the gather; the shared (B, 1, 6·D) does not."""
    return gather_tokens(temb, index) if temb.shape[1] > 1 else temb


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LTX's rotary over the whole width, on interleaved pairs; x (B, S, D), cos/sin (B, S, D)."""
    real, imag = x.unflatten(2, (-1, 2)).unbind(-1)  # (B, S, D/2) each
    rotated = torch.stack([-imag, real], dim=-1).flatten(2)  # (B, S, D)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


LTX_LAYOUT = BlockLayout(token_args={"temb": _gather_temb, "image_rotary_emb": gather_pair})

# Lightricks/LTX-Video 0.9.x (2B) transformer/config.json; diffusers' class defaults are these values
LTX_2B = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=64,
    cross_attention_dim=2048, num_layers=28, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, attention_bias=True, attention_out_bias=True,
)
LTX_LATENT = (21, 15, 22)  # 161 frames at 480×704 (the model card's example) through LTX's VAE (8× time, 32× space)
DEFAULT_FRAME_RATE = 25  # LTXPipeline's default; the rotary's time axis is scaled by 8 / frame_rate


class LTXVideoAdapter(ModelAdapter):
    name = "ltx-video"
    transformer_classes = ("LTXVideoTransformer3DModel",)
    pipeline_classes = ("LTXPipeline", "LTXImageToVideoPipeline")
    image_pipeline = "LTXImageToVideoPipeline"
    preset = "ltx-video"  # every LTX-Video checkpoint: 128 text positions, 8k+1 frames, sizes in 32s
    refused_pipelines = {
        name: "it appends conditioning latents to the video tokens and places them by video_coords, so its tokens "
              "are not one frame-major grid; use LTXPipeline or LTXImageToVideoPipeline"
        for name in ("LTXConditionPipeline", "LTXI2VLongMultiPromptPipeline")
    }
    profiles = {"ltx-video": Profile(LTX_2B, LTX_LATENT, 128, "LTXPipeline")}

    blocks_attribute, block_layout = "transformer_blocks", LTX_LAYOUT

    # -------------------------------------------------------------------------------------------- transformer

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        if kwargs.get("video_coords") is not None:
            raise ValueError("LTX-Video: a forward placed by video_coords (LTXConditionPipeline) has no token grid")
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, S, C) packed
        grid = TokenGrid(kwargs["num_frames"], kwargs["height"], kwargs["width"])
        if grid.num_tokens != hidden_states.shape[1]:
            raise ValueError(f"LTX-Video: {hidden_states.shape[1]} tokens do not form the {grid.frames}×{grid.height}"
                             f"×{grid.width} grid the forward names")
        return grid

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, cos, sin = rows_at(positions, call.hidden_states, *call.arguments["image_rotary_emb"])
        temb = call.arguments["temb"] if positions is None else _gather_temb(call.arguments["temb"], positions)
        batch, tokens = temb.shape[:2]
        ada = block.scale_shift_table[None, None] + temb.reshape(batch, tokens, 6, -1)  # (B, 1 or K, 6, D)
        shift, scale = ada[:, :, 0], ada[:, :, 1]  # (B, 1 or K, D) each
        normed = block.norm1(hidden_states) * (1 + scale) + shift  # (B, K, D)
        attn = block.attn1
        query_tokens, cos_q, sin_q = rows_at(query_index, normed, cos, sin)  # (B, Sq, D), rotary at the queries
        query = _apply_rotary(attn.norm_q(attn.to_q(query_tokens)), cos_q, sin_q)  # (B, Sq, D)
        key = _apply_rotary(attn.norm_k(attn.to_k(normed)), cos, sin)  # (B, K, D)
        query, key = query.unflatten(2, (attn.heads, -1)), key.unflatten(2, (attn.heads, -1))  # (B, ·, heads, d)
        return query.transpose(1, 2), key.transpose(1, 2)  # (B, heads, Sq, d), (B, heads, K, d)

    def block_flops(self, transformer: torch.nn.Module, layer: int, tokens: int, kept: int, text_tokens: int) -> float:
        # Wan's block shape: self-attention, cross-attention to the (already projected) caption, a 4·D FFN
        dim = self.hidden_width(transformer)
        return block_flops(tokens, dim=dim, ffn_dim=FFN_MULT * dim, text_tokens=text_tokens, kept=kept)

    def token_geometry(self, pipe) -> tuple[int, int, int]:
        config = pipe.transformer.config
        return (pipe.vae_temporal_compression_ratio, config.patch_size_t,
                pipe.vae_spatial_compression_ratio * config.patch_size)

    # ----------------------------------------------------------------------------------------------- pipeline

    def animates_image(self, info: ModelInfo) -> bool:
        return True  # every LTX-Video checkpoint runs both pipelines (its card loads one repo into either)

    def check_inputs(self, gen, info: ModelInfo) -> None:
        self.check_image(gen, info)
        temporal, spatial = _vae_factors(info.component_config("vae"))
        if (gen.frames - 1) % temporal:
            raise ValueError(f"LTX-Video: --frames must be {temporal}k+1 (its VAE compresses {temporal} frames into "
                             f"one), got {gen.frames}")
        for name in ("height", "width"):
            if getattr(gen, name) % spatial:
                raise ValueError(f"LTX-Video: --{name} must be a multiple of {spatial} (its VAE's spatial factor), "
                                 f"got {getattr(gen, name)}")

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        from .wan import load_image

        kwargs = dict(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, num_frames=gen.frames, height=gen.height,
            width=gen.width, num_inference_steps=gen.steps, guidance_scale=gen.guidance,
            max_sequence_length=gen.max_sequence_length, frame_rate=gen.fps,
        )
        if info.pipeline_class == self.image_pipeline:
            kwargs["image"] = load_image(gen.image)
        return kwargs

    def profile_inputs(self, transformer, profile: Profile, latent, device, dtype) -> dict:
        config = transformer.config
        frames, height, width = latent
        text = profile.text_tokens
        return dict(
            hidden_states=torch.randn(1, frames * height * width, config.in_channels, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, text, config.caption_channels, device=device, dtype=dtype),
            encoder_attention_mask=torch.ones(1, text, device=device, dtype=dtype),
            num_frames=frames, height=height, width=width,
            rope_interpolation_scale=(8 / DEFAULT_FRAME_RATE, 32, 32),  # as LTXPipeline passes it
            return_dict=False,
        )

    def profile_decode(self, profile: Profile, latent, device) -> Callable:
        from diffusers import AutoencoderKLLTXVideo

        vae = AutoencoderKLLTXVideo().to(device).eval()  # the default config is LTX-Video 0.9.0's VAE, in float32
        latents = torch.randn(1, vae.config.latent_channels, *latent, device=device)
        return lambda: vae.decode(latents, return_dict=False)


def _vae_factors(vae: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of an LTX VAE config.json, as AutoencoderKLLTXVideo derives them."""
    scalings = sum(vae.get("spatio_temporal_scaling", (True, True, True, False)))
    temporal = vae.get("temporal_compression_ratio") or vae.get("patch_size_t", 1) * 2**scalings
    spatial = vae.get("spatial_compression_ratio") or vae.get("patch_size", 4) * 2**scalings
    return temporal, spatial
