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
    rows_at,
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
_WAN_1_3B = dict(_WAN21_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30)
_WAN_14B = dict(_WAN21_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40)
WAN21_LATENT = (21, 60, 104)  # 81 frames at 480×832 through Wan2.1's VAE (4× time, 8× space)
WAN22_A14B_LATENT = (21, 90, 160)  # 81 frames at 720×1280 (the A14B card's default), Wan2.1's VAE
WAN22_TI2V_LATENT = (31, 44, 80)  # 121 frames at 704×1280 through Wan2.2's VAE (4× time, 16× space)
# Wan2.1 I2V's image context: CLIP ViT-H/14 at 224 px, 16×16 patches + the class token, before the 512 text tokens
IMAGE_TOKENS = 257
TEXT_POSITIONS = 512  # Wan's attention splits image from text context at this count (diffusers hard-codes it)
# Wan2.2's VAE (vae/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers; the latent statistics do not change the cost)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                 temperal_downsample=[False, True, True], is_residual=True)


class WanAdapter(ModelAdapter):
    name = "wan"
    label = "Wan"  # the family in messages
    transformer_classes = ("WanTransformer3DModel",)
    pipeline_classes = ("WanPipeline", "WanImageToVideoPipeline")
    image_pipeline = "WanImageToVideoPipeline"  # the class that takes `--image`
    denoiser_names = ("transformer", "transformer_2")
    blocks_attribute, block_layout = "blocks", WAN_LAYOUT
    profiles = {
        "wan2.1-1.3b": Profile(_WAN_1_3B, WAN21_LATENT, 512),
        # Self-Forcing: a causal Wan2.1-T2V-1.3B, 21 latent frames in 7 chunks of 3 × 1,560 tokens, 4 steps per chunk
        # (presets/self-forcing-1.3b.yaml), every earlier chunk cached (18 frames before the last chunk)
        "self-forcing-1.3b": Profile(_WAN_1_3B, WAN21_LATENT, 512, "WanPipeline", causal=True),
        "wan2.1-14b": Profile(_WAN_14B, WAN21_LATENT, 512),
        # Wan2.2-T2V-A14B: two experts of Wan2.1-14B's shape (the bound of one is the bound of both)
        "wan2.2-a14b": Profile(_WAN_14B, WAN22_A14B_LATENT, 512, "WanPipeline"),
        # Wan2.2-TI2V-5B: 24 heads × 128, 30 blocks, 48 latent channels (Wan2.2's VAE)
        "wan2.2-ti2v-5b": Profile(dict(_WAN21_COMMON, num_attention_heads=24, ffn_dim=14336, num_layers=30,
                                       in_channels=48, out_channels=48), WAN22_TI2V_LATENT, 512, "WanPipeline"),
        # Wan2.1-I2V-14B-480P: 36 input channels (noise + the image's latent and mask), CLIP image context
        "wan2.1-i2v-14b": Profile(dict(_WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
                                  WAN21_LATENT, 512, "WanImageToVideoPipeline"),
    }

    # -------------------------------------------------------------------------------------------- transformer

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        p_t, p_h, p_w = transformer.config.patch_size
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        _, _, frames, height, width = hidden_states.shape  # (B, C, F, H, W) latents
        return TokenGrid(frames // p_t, height // p_h, width // p_w)

    def text_tokens(self, args: tuple, kwargs: dict) -> int:
        """Text positions plus Wan2.1 I2V's image tokens: both are keys of the blocks' cross-attention."""
        image = kwargs.get("encoder_hidden_states_image")
        return super().text_tokens(args, kwargs) + (image.shape[1] if isinstance(image, torch.Tensor) else 0)

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, (cos, sin) = self.self_attention_input(block, call, positions)  # (B, K, D)
        attn = block.attn1
        query_tokens, cos_q, sin_q = rows_at(query_index, normed, cos, sin)  # (B, Sq, D), rotary at the queries
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

    def self_attention_input(self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None = None):
        hidden_states, cos, sin = rows_at(positions, call.hidden_states, *call.arguments["rotary_emb"])
        temb = call.arguments["temb"] if positions is None else _gather_temb(call.arguments["temb"], positions)
        if temb.dim() == 4:
            shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float())[:, :, :2].unbind(2)  # (B, K, D)
        else:
            shift, scale = (block.scale_shift_table + temb.float())[:, :2].chunk(2, dim=1)  # (B, 1, D) each
        normed = (block.norm1(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)  # (B, K, D)
        return normed, (cos, sin)

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
        self.check_image(gen, info)
        if (gen.image is not None and info.component_config(info.denoisers[0]).get("added_kv_proj_dim")
                and gen.max_sequence_length != TEXT_POSITIONS):
            raise ValueError(f"{self.label} I2V: max_sequence_length must be {TEXT_POSITIONS} (its cross-attention "
                             f"takes the image tokens as all but the last {TEXT_POSITIONS} context tokens), got "
                             f"{gen.max_sequence_length}")
        temporal = info.component_config("vae").get("scale_factor_temporal", 4)
        if (gen.frames - 1) % temporal:
            raise ValueError(f"{self.label}: --frames must be {temporal}k+1 (its VAE compresses {temporal} frames "
                             f"into one), got {gen.frames}")
        # the pipeline asks for multiples of 16; a latent cell must also fill whole patches (TI2V-5B: 16 × 2 = 32)
        multiple = math.lcm(16, info.component_config("vae").get("scale_factor_spatial", 8) * self._patch(info)[1])
        for name in ("height", "width"):
            if getattr(gen, name) % multiple:
                raise ValueError(f"{self.label}: --{name} must be a multiple of {multiple}, got {getattr(gen, name)}")

    def animates_image(self, info: ModelInfo) -> bool:
        """Wan2.2 TI2V-5B (`expand_timesteps`) takes an image although its model_index.json names WanPipeline."""
        return bool(info.pipeline_config.get("expand_timesteps"))

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        kwargs = dict(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, num_frames=gen.frames, height=gen.height,
            width=gen.width, num_inference_steps=gen.steps, guidance_scale=gen.guidance,
            max_sequence_length=gen.max_sequence_length,
        )
        if info.pipeline_class == self.image_pipeline:
            kwargs["image"] = load_image(gen.image)
        return kwargs

    def sibling_config(self, pipe) -> dict:
        return dict(boundary_ratio=pipe.config.boundary_ratio, expand_timesteps=True)

    def profile_inputs(self, transformer, profile: Profile, latent, device, dtype) -> dict:
        config = transformer.config
        inputs = dict(
            hidden_states=torch.randn(1, config.in_channels, *latent, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, profile.text_tokens, config.text_dim, device=device, dtype=dtype),
            return_dict=False,
        )
        if config.image_dim:  # Wan2.1 I2V: the CLIP image encoder's penultimate hidden states
            inputs["encoder_hidden_states_image"] = torch.randn(1, IMAGE_TOKENS, config.image_dim, device=device,
                                                                dtype=dtype)
        return inputs

    def profile_decode(self, profile: Profile, latent, device) -> Callable:
        from diffusers import AutoencoderKLWan

        # Wan2.2 TI2V's own VAE for its 48 latent channels, else the default config (Wan2.1's); run in float32
        vae_config = WAN22_VAE if profile.config["in_channels"] == WAN22_VAE["z_dim"] else {}
        vae = AutoencoderKLWan(**vae_config).to(device).eval()
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
