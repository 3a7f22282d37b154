"""Wan2.1 / Wan2.2 (`WanTransformer3DModel`): text-to-video, image-to-video, TI2V-5B and the two-expert A14B.

Blocks are called as `block(hidden_states, encoder_hidden_states, temb, rotary_emb)`. Everything in
`WanTransformerBlock` except `attn1` acts per token, so gather → block → scatter is exact for a full index; what
must follow a gather is the rotary (cos, sin), each (1, S, 1, head_dim), and for Wan2.2 TI2V the per-token
modulation `temb` (B, S, 6, D). Image-to-video Wan carries its image tokens inside `encoder_hidden_states` (cross-
attention), so the video tokens look the same to the pruner. Wan2.2 A14B has two denoisers, `transformer` for
the high-noise steps and `transformer_2` after `boundary_ratio`; both are pruned under one controller.
"""

from __future__ import annotations

import math
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
    apply_rotary_pairs,
    gather_pair,
    gather_tokens,
)


def _gather_temb(temb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Wan2.2 TI2V's per-token modulation (B, S, 6, D) follows the gather; the shared (B, 6, D) one does not."""
    return gather_tokens(temb, index) if temb.dim() == 4 else temb


WAN_LAYOUT = BlockLayout(token_args={"temb": _gather_temb, "rotary_emb": gather_pair})

# Wan2.1 T2V transformers (config.json of the Wan-AI diffusers checkpoints; see shared/tools/probe_skip.py)
_WAN21_COMMON = dict(
    patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
WAN21_LATENT = (21, 60, 104)  # 81 frames at 480×832 through Wan2.1's VAE (4× time, 8× space)


class WanAdapter(ModelAdapter):
    name = "wan"
    transformer_classes = ("WanTransformer3DModel",)
    pipeline_classes = ("WanPipeline", "WanImageToVideoPipeline")
    denoiser_names = ("transformer", "transformer_2")
    profiles = {
        "wan2.1-1.3b": Profile(dict(_WAN21_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
                               WAN21_LATENT, 512),
        "wan2.1-14b": Profile(dict(_WAN21_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
                              WAN21_LATENT, 512),
    }

    # -------------------------------------------------------------------------------------------- transformer

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.blocks)

    def layout(self, block: torch.nn.Module) -> BlockLayout:
        return WAN_LAYOUT

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        p_t, p_h, p_w = transformer.config.patch_size
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        _, _, frames, height, width = hidden_states.shape  # (B, C, F, H, W) latents
        return TokenGrid(frames // p_t, height // p_h, width // p_w)

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, temb = call.hidden_states, call.arguments["temb"]
        cos, sin = call.arguments["rotary_emb"]
        if positions is not None:
            hidden_states, temb = gather_tokens(hidden_states, positions), _gather_temb(temb, positions)
            cos, sin = gather_tokens(cos, positions), gather_tokens(sin, positions)
        if temb.dim() == 4:
            shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float())[:, :, :2].unbind(2)  # (B, K, D)
        else:
            shift, scale = (block.scale_shift_table + temb.float())[:, :2].chunk(2, dim=1)  # (B, 1, D) each
        normed = (block.norm1(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)  # (B, K, D)
        attn = block.attn1
        query_tokens = normed if query_index is None else gather_tokens(normed, query_index)  # (B, Sq, D)
        if query_index is not None:
            cos_q, sin_q = gather_tokens(cos, query_index), gather_tokens(sin, query_index)
        else:
            cos_q, sin_q = cos, sin
        if getattr(attn, "fused_projections", False):  # fused qkv weights: split the projection instead
            dim = attn.to_qkv.out_features // 3
            query = torch.nn.functional.linear(query_tokens, attn.to_qkv.weight[:dim], attn.to_qkv.bias[:dim])
            key = torch.nn.functional.linear(normed, attn.to_qkv.weight[dim : 2 * dim], attn.to_qkv.bias[dim : 2 * dim])
        else:
            query, key = attn.to_q(query_tokens), attn.to_k(normed)  # (B, Sq, D), (B, K, D)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # (B, Sq, heads, d)
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))  # (B, K, heads, d)
        query, key = apply_rotary_pairs(query, cos_q, sin_q), apply_rotary_pairs(key, cos, sin)
        return query.transpose(1, 2), key.transpose(1, 2)  # (B, heads, Sq, d), (B, heads, K, d)

    def block_flops(self, transformer: torch.nn.Module, layer: int, tokens: int, kept: int, text_tokens: int) -> float:
        config = transformer.config
        return block_flops(tokens, dim=self.hidden_width(transformer), ffn_dim=config.ffn_dim,
                           text_tokens=text_tokens, kept=kept)

    def token_geometry(self, pipe) -> tuple[int, int, int]:
        p_t, p_h, p_w = pipe.transformer.config.patch_size
        if p_h != p_w:
            raise ValueError(f"square patches expected, got {p_h}x{p_w}")
        return pipe.vae_scale_factor_temporal, p_t, pipe.vae_scale_factor_spatial * p_h

    def fused_skip(self, block: torch.nn.Module) -> Callable | None:
        from .wan_fused import fused_skip_forward

        def forward(hidden_states: torch.Tensor, index: torch.Tensor, call: BlockCall) -> torch.Tensor:
            args = call.arguments
            return fused_skip_forward(block, hidden_states, index, args["encoder_hidden_states"], args["temb"],
                                      args["rotary_emb"], backend="triton")

        return forward

    # ----------------------------------------------------------------------------------------------- pipeline

    def check_inputs(self, gen, info: ModelInfo) -> None:
        image_to_video = info.pipeline_class == "WanImageToVideoPipeline"
        if image_to_video and gen.image is None:
            raise ValueError(f"{info.source} is an image-to-video Wan pipeline: give --image PATH (the first frame)")
        if not image_to_video and gen.image is not None:
            raise ValueError(f"--image needs an image-to-video pipeline; {info.source} is a {info.pipeline_class}")
        temporal = info.component_config("vae").get("scale_factor_temporal", 4)
        if (gen.frames - 1) % temporal:
            raise ValueError(f"Wan: --frames must be {temporal}k+1 (its VAE compresses {temporal} frames into one), "
                             f"got {gen.frames}")
        # the pipeline asks for multiples of 16; a latent cell must also fill whole patches (TI2V-5B: 16 × 2 = 32)
        multiple = math.lcm(16, info.component_config("vae").get("scale_factor_spatial", 8) * self._patch(info)[1])
        for name in ("height", "width"):
            if getattr(gen, name) % multiple:
                raise ValueError(f"Wan: --{name} must be a multiple of {multiple}, got {getattr(gen, name)}")

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        kwargs = dict(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, num_frames=gen.frames, height=gen.height,
            width=gen.width, num_inference_steps=gen.steps, guidance_scale=gen.guidance,
            max_sequence_length=gen.max_sequence_length,
        )
        if info.pipeline_class == "WanImageToVideoPipeline":
            kwargs["image"] = load_image(gen.image)
        return kwargs

    def profile_inputs(self, transformer, profile: Profile, latent, device, dtype) -> dict:
        config = transformer.config
        return dict(
            hidden_states=torch.randn(1, config.in_channels, *latent, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, profile.text_tokens, config.text_dim, device=device, dtype=dtype),
            return_dict=False,
        )

    def profile_decode(self, profile: Profile, latent, device) -> Callable:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan().to(device).eval()  # the default config is Wan2.1's VAE, run in float32
        latents = torch.randn(1, vae.config.z_dim, *latent, device=device)
        return lambda: vae.decode(latents, return_dict=False)

    @staticmethod
    def _patch(info: ModelInfo) -> tuple[int, int, int]:
        return tuple(info.component_config(info.denoisers[0]).get("patch_size", (1, 2, 2)))


def load_image(path):
    """The conditioning image as RGB (PIL), as diffusers' image-to-video pipelines take it."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
