"""Mochi (`MochiTransformer3DModel`, `MochiPipeline`): joint attention over the video tokens and the prompt's.

Blocks are called as `block(hidden_states, encoder_hidden_states, temb, encoder_attention_mask, image_rotary_emb)`
and return (video, text). The text stream has its own width (1536 against the video's 3072), projections and FFN; it
is never pruned: it stays in `encoder_hidden_states` and comes back as the block computed it. In the joint
attention each kept video token attends to the kept video tokens and the sample's valid (unmasked) text tokens, as
the processor does per sample. Everything else in `MochiTransformerBlock` acts per token, and `temb` is one vector
per sample; what follows a gather is the rotary (cos, sin), each (S, heads, head_dim / 2) with no batch dimension,
so when the samples of a call keep different tokens the block runs once per sample (`batch_args`).
"""

from __future__ import annotations

from typing import Callable

import torch

from .base import BlockCall, BlockLayout, ModelAdapter, ModelInfo, Profile, TokenGrid, rows_at


def _rotary_rows(pair, index: torch.Tensor):
    """The rotary (cos, sin), each (S, heads, d/2), at the tokens of one sample's index (1, K) → (K, heads, d/2)."""
    return tuple(part[index[0]] for part in pair)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's rotary on interleaved pairs; x (B, S, heads, d), cos/sin broadcastable to (B, S, heads, d/2)."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


MOCHI_LAYOUT = BlockLayout(token_args={"image_rotary_emb": _rotary_rows}, video_output=0,
                           batch_args=("encoder_hidden_states", "temb", "encoder_attention_mask"))

# genmo/mochi-1-preview transformer/config.json (diffusers' class defaults are these values)
MOCHI_10B = dict(patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48,
                 pooled_projection_dim=1536, in_channels=12, out_channels=None, qk_norm="rms_norm",
                 text_embed_dim=4096, time_embed_dim=256, activation_fn="swiglu", max_sequence_length=256)
MOCHI_LATENT = (28, 60, 106)  # 163 frames at 480×848 (Genmo's reference settings) through its VAE (6× time, 8× space)
TEMPORAL, SPATIAL = 6, 8  # MochiPipeline's fixed VAE factors


def mochi_block_flops(block, kept: int, text_tokens: int, dim: int) -> float:
    """FLOPs of one Mochi block computing `kept` video tokens beside `text_tokens` text tokens.

    One multiply-add = 2 FLOPs; D video width, D_t text width, F / F_t the two SwiGLU FFN widths:
        video Q, K, V, out on K tokens             8·K·D²
        text Q, K, V (D_t → D), out (D → D_t)      8·T·D_t·D   (the last block has no text out projection: 6·T·D_t·D)
        joint attention QKᵀ and A·V, K + T tokens  4·(K + T)²·D
        video FFN D → 2F (SwiGLU) → D              6·K·D·F
        text FFN D_t → 2F_t → D_t                  6·T·D_t·F_t (none in the last block)
    Norms, modulation and RoPE are O((K + T)·D) and left out, as in metrics.flops.
    """
    text_dim = block.attn1.add_k_proj.in_features
    joint = 4.0 * (kept + text_tokens) ** 2 * dim
    video = 8.0 * kept * dim**2 + 6.0 * kept * dim * block.ff_inner_dim
    text_projections = (6.0 if block.context_pre_only else 8.0) * text_tokens * text_dim * dim
    text_ffn = 0.0 if block.context_pre_only else 6.0 * text_tokens * text_dim * block.ff_context_inner_dim
    return joint + video + text_projections + text_ffn


class MochiAdapter(ModelAdapter):
    name = "mochi"
    transformer_classes = ("MochiTransformer3DModel",)
    pipeline_classes = ("MochiPipeline",)
    preset = "mochi"  # every Mochi checkpoint: 256 text positions, 6k+1 frames, sizes in 16s
    profiles = {"mochi": Profile(MOCHI_10B, MOCHI_LATENT, 256, "MochiPipeline")}

    blocks_attribute, block_layout = "transformer_blocks", MOCHI_LAYOUT

    # -------------------------------------------------------------------------------------------- transformer

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        patch = transformer.config.patch_size
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        _, _, frames, height, width = hidden_states.shape  # (B, C, F, H, W) latents
        return TokenGrid(frames, height // patch, width // patch)

    def text_tokens(self, args: tuple, kwargs: dict) -> int:
        """The valid (unmasked) text positions, the mean over the call's samples: only they enter the attention."""
        mask = kwargs.get("encoder_attention_mask")
        if mask is None or mask.device.type == "meta":  # no values on the meta device: the padded length
            return super().text_tokens(args, kwargs)
        return round(float(mask.sum(dim=1).float().mean()))

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = (part.unsqueeze(0) for part in call.arguments["image_rotary_emb"])  # (1, S, heads, d/2) each
        hidden_states, cos, sin = rows_at(positions, call.hidden_states, cos, sin)  # (B, K, D), (B or 1, K, ...)
        normed = block.norm1(hidden_states, call.arguments["temb"])[0]  # (B, K, D)
        attn = block.attn1
        query_tokens, cos_q, sin_q = rows_at(query_index, normed, cos, sin)  # (B, Sq, D), rotary at the queries
        query = attn.norm_q(attn.to_q(query_tokens).unflatten(2, (attn.heads, -1)))  # (B, Sq, heads, d)
        key = attn.norm_k(attn.to_k(normed).unflatten(2, (attn.heads, -1)))  # (B, K, heads, d)
        query, key = _apply_rotary(query, cos_q, sin_q), _apply_rotary(key, cos, sin)
        return query.transpose(1, 2), key.transpose(1, 2)  # (B, heads, Sq, d), (B, heads, K, d)

    def block_flops(self, transformer: torch.nn.Module, layer: int, tokens: int, kept: int, text_tokens: int) -> float:
        block = transformer.transformer_blocks[layer]
        return mochi_block_flops(block, kept, text_tokens, self.hidden_width(transformer))

    def token_geometry(self, pipe) -> tuple[int, int, int]:
        return pipe.vae_temporal_scale_factor, 1, pipe.vae_spatial_scale_factor * pipe.transformer.config.patch_size

    # ----------------------------------------------------------------------------------------------- pipeline

    def check_inputs(self, gen, info: ModelInfo) -> None:
        self.check_image(gen, info)
        if (gen.frames - 1) % TEMPORAL:
            raise ValueError(f"Mochi: --frames must be {TEMPORAL}k+1 (its VAE compresses {TEMPORAL} frames into one), "
                             f"got {gen.frames}")
        multiple = SPATIAL * info.component_config(info.denoisers[0]).get("patch_size", 2)
        for name in ("height", "width"):
            if getattr(gen, name) % multiple:
                raise ValueError(f"Mochi: --{name} must be a multiple of {multiple} (VAE {SPATIAL} × patch "
                                 f"{multiple // SPATIAL}), got {getattr(gen, name)}")

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        return dict(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, num_frames=gen.frames, height=gen.height,
            width=gen.width, num_inference_steps=gen.steps, guidance_scale=gen.guidance,
            max_sequence_length=gen.max_sequence_length,
        )

    def prepare_profile(self, transformer: torch.nn.Module, device) -> None:
        if device.type != "meta":
            return
        # MochiRoPE builds its tables under torch.autocast, which has no meta device type: a stand-in gives the shapes
        transformer.rope = _ShapesOnlyRoPE()
        # the processor picks each sample's valid text tokens with torch.nonzero, which has no meta kernel; this flag
        # makes it assume every entry is nonzero, which is what the profile's all-ones mask holds
        import torch.fx.experimental._config as fx_config

        fx_config.meta_nonzero_assume_all_nonzero = True

    def profile_inputs(self, transformer, profile: Profile, latent, device, dtype) -> dict:
        config = transformer.config
        return dict(
            hidden_states=torch.randn(1, config.in_channels, *latent, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, profile.text_tokens, config.text_embed_dim, device=device,
                                              dtype=dtype),
            encoder_attention_mask=torch.ones(1, profile.text_tokens, device=device, dtype=torch.bool),
            return_dict=False,
        )

    def profile_decode(self, profile: Profile, latent, device) -> Callable:
        from diffusers import AutoencoderKLMochi

        vae = AutoencoderKLMochi().to(device).eval()  # the default config is mochi-1-preview's VAE, in float32
        latents = torch.randn(1, vae.config.latent_channels, *latent, device=device)
        return lambda: vae.decode(latents, return_dict=False)



class _ShapesOnlyRoPE(torch.nn.Module):
    """MochiRoPE's (cos, sin) tables, each (S, heads, d/2), as shapes only (for the meta device)."""

    def forward(self, pos_frequencies, num_frames, height, width, device=None, dtype=None):
        shape = (num_frames * height * width, *pos_frequencies.shape[1:])
        return torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype)
