"""CogVideoX (`CogVideoXTransformer3DModel`, `CogVideoXPipeline`): text-to-video 2B, 5B and 1.5-5B.

Blocks are called as `block(hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_kwargs)` and
return (video, text): one expert-adaLN block whose attention and FFN run over [text; video] concatenated inside the
block, while the two streams travel separately between blocks. A gather of the video tokens therefore leaves the
text whole: every text token is computed in every block, attends to the kept video tokens and is attended by them.
What follows the gather: on 5B and 1.5 the rotary (cos, sin) tables (N, head_dim) the pipeline builds, which have no
batch dimension; CFG runs both passes as one batch (B = 2) whose samples keep different tokens, so a pruned block
runs once per sample there. 2B adds absolute sin-cos positional embeddings before the first block, so nothing follows
the gather and both samples run in one call. CogVideoX-1.5 patches 2 latent frames into one token frame
(`patch_size_t`); its pipeline pads the latent frames to a multiple of 2 and drops the padding after denoising.

Input rules: frames 4k+1 (the VAE's 4× time compression); height and width multiples of 16 (VAE 8 × patch 2), on
1.5 within its rotary grid (sample_height × sample_width latent cells, 2400×2400 pixels); the text is exactly the
transformer's `max_text_seq_length` positions (226), which the 2B's joint positional table is built for and every
variant was trained with. Guidance: `--guidance` is ordinary classifier-free guidance (`guidance_scale`, CFG on
when > 1), with `--negative-prompt` as its unconditional prompt.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch

from ..metrics.flops import joint_block_flops
from .base import (
    BlockCall,
    BlockLayout,
    ModelAdapter,
    ModelInfo,
    Profile,
    TokenGrid,
    gather_table_pair,
    gather_tokens,
    rotary_query_key,
    table_rows,
)

COG_LAYOUT = BlockLayout(
    token_args={"image_rotary_emb": gather_table_pair},
    video_output=0,
    batch_args=("encoder_hidden_states", "temb"),
)

# CogVideoX transformers' config.json (THUDM/CogVideoX-2b, -5b, CogVideoX1.5-5B): the rest are the class defaults
_COG_COMMON = dict(
    attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512, text_embed_dim=4096,
    max_text_seq_length=226, patch_size=2, temporal_compression_ratio=4,
)
_COG10 = dict(_COG_COMMON, sample_width=90, sample_height=60, sample_frames=49)
COG10_LATENT = (13, 60, 90)  # 49 frames at 480×720 through its VAE (4× time, 8× space)
COG15_LATENT = (21, 96, 170)  # 81 frames at 768×1360 (the forward pads the 21 latent frames to 22, as the pipeline)


class CogVideoXAdapter(ModelAdapter):
    name = "cogvideox"
    transformer_classes = ("CogVideoXTransformer3DModel",)
    pipeline_classes = ("CogVideoXPipeline",)
    profiles = {
        "cogvideox-2b": Profile(dict(_COG10, num_attention_heads=30, num_layers=30), COG10_LATENT, 226,
                                "CogVideoXPipeline"),
        "cogvideox-5b": Profile(dict(_COG10, num_attention_heads=48, num_layers=42,
                                     use_rotary_positional_embeddings=True), COG10_LATENT, 226, "CogVideoXPipeline"),
        "cogvideox1.5-5b": Profile(dict(_COG_COMMON, num_attention_heads=48, num_layers=42, patch_size_t=2,
                                        patch_bias=False, sample_width=300, sample_height=300, sample_frames=81,
                                        use_rotary_positional_embeddings=True), COG15_LATENT, 226,
                                   "CogVideoXPipeline"),
    }
    unsupported_methods = {
        "router": "a router is trained for each model, and train-router records the teacher's transformer inputs as "
                  "Wan takes them (latents, timestep, text embedding); CogVideoX's forward also needs the rotary "
                  "tables its pipeline builds, and batches both CFG passes in one call",
    }

    # -------------------------------------------------------------------------------------------- transformer

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.transformer_blocks)

    def layout(self, block: torch.nn.Module) -> BlockLayout:
        return COG_LAYOUT

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        config = transformer.config
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        _, frames, _, height, width = hidden_states.shape  # (B, F, C, H, W) latents: frames before channels
        return TokenGrid(-(-frames // (config.patch_size_t or 1)), height // config.patch_size,
                         width // config.patch_size)

    def timestep(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return kwargs["timestep"] if "timestep" in kwargs else args[2]  # forward(hidden, text, timestep, ...)

    def text_tokens(self, args: tuple, kwargs: dict) -> int:
        return (kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]).shape[1]

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states = call.hidden_states if positions is None else gather_tokens(call.hidden_states, positions)
        norm = block.norm1  # CogVideoXLayerNormZero: the video stream's shift and scale are its first two chunks
        shift, scale = norm.linear(norm.silu(call.arguments["temb"])).chunk(6, dim=1)[:2]  # (B, D) each
        normed = norm.norm(hidden_states) * (1 + scale)[:, None, :] + shift[:, None, :]  # (B, K, D)
        rotary = call.arguments.get("image_rotary_emb")
        tables = None if rotary is None else table_rows(rotary, positions)
        return rotary_query_key(block.attn1, normed, query_index, tables)

    def block_flops(self, transformer: torch.nn.Module, layer: int, tokens: int, kept: int, text_tokens: int) -> float:
        width = self.hidden_width(transformer)  # CogVideoXBlock's FeedForward is 4× wide (no config for it)
        return joint_block_flops(tokens, dim=width, ffn_dim=4 * width, text_tokens=text_tokens, kept=kept)

    def token_geometry(self, pipe) -> tuple[int, int, int]:
        config = pipe.transformer.config
        spatial = pipe.vae_scale_factor_spatial * config.patch_size
        return pipe.vae_scale_factor_temporal, config.patch_size_t or 1, spatial

    def compute_marker(self, module: torch.nn.Module) -> torch.nn.Module | None:
        if hasattr(module, "ff"):  # a CogVideoXBlock
            return module.ff
        return super().compute_marker(module)

    # ----------------------------------------------------------------------------------------------- pipeline

    def check_inputs(self, gen, info: ModelInfo) -> None:
        if gen.image is not None:
            raise ValueError(f"--image needs an image-to-video pipeline; {info.source} is a {info.pipeline_class}")
        vae, transformer = info.component_config("vae"), info.component_config(info.denoisers[0])
        temporal = vae.get("temporal_compression_ratio", 4)
        if (gen.frames - 1) % temporal:
            raise ValueError(f"CogVideoX: --frames must be {temporal}k+1 (its VAE compresses {temporal} frames into "
                             f"one), got {gen.frames}")
        spatial = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)  # the pipeline's vae_scale_factor_spatial
        multiple = math.lcm(16, spatial * transformer.get("patch_size", 2))
        for name in ("height", "width"):
            if getattr(gen, name) % multiple:
                raise ValueError(f"CogVideoX: --{name} must be a multiple of {multiple}, got {getattr(gen, name)}")
        largest = (transformer.get("sample_height", 60) * spatial, transformer.get("sample_width", 90) * spatial)
        if transformer.get("patch_size_t") and (gen.height > largest[0] or gen.width > largest[1]):
            raise ValueError(f"CogVideoX-1.5: its rotary grid spans at most {largest[0]}x{largest[1]} pixels, got "
                             f"{gen.height}x{gen.width}")
        text = transformer.get("max_text_seq_length", 226)
        if gen.max_sequence_length != text:
            raise ValueError(f"CogVideoX: max_sequence_length must be the transformer's max_text_seq_length {text} "
                             f"(its text positions), got {gen.max_sequence_length}; use a cogvideox preset or set it "
                             "in a --preset file")

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        return dict(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, num_frames=gen.frames, height=gen.height,
            width=gen.width, num_inference_steps=gen.steps, guidance_scale=gen.guidance,
            max_sequence_length=gen.max_sequence_length,
        )

    def profile_inputs(self, transformer, profile: Profile, latent, device, dtype) -> dict:
        from diffusers import CogVideoXPipeline

        config = transformer.config
        frames, height, width = latent
        frames = -(-frames // (config.patch_size_t or 1)) * (config.patch_size_t or 1)  # padded as the pipeline pads
        inputs = dict(
            hidden_states=torch.randn(1, frames, config.in_channels, height, width, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, profile.text_tokens, config.text_embed_dim, device=device,
                                              dtype=dtype),
            return_dict=False,
        )
        if config.use_rotary_positional_embeddings:  # the tables exactly as the pipeline builds them (8× VAE)
            pipeline = SimpleNamespace(transformer=transformer, vae_scale_factor_spatial=8)
            inputs["image_rotary_emb"] = CogVideoXPipeline._prepare_rotary_positional_embeddings(
                pipeline, height * 8, width * 8, frames, device)
        return inputs

    def profile_timestep(self, t: float, device) -> torch.Tensor:
        return torch.tensor([int(t)], device=device)  # the pipeline passes its integer DDIM timesteps

    def profile_decode(self, profile: Profile, latent, device) -> Callable:
        from diffusers import AutoencoderKLCogVideoX

        vae = AutoencoderKLCogVideoX().to(device).eval()  # the default config is CogVideoX's VAE, in float32
        vae.enable_tiling()  # as the model cards run it
        latents = torch.randn(1, vae.config.latent_channels, *latent, device=device)  # 1.5: its padding dropped
        return lambda: vae.decode(latents, return_dict=False)
