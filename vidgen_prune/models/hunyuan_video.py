"""HunyuanVideo (`HunyuanVideoTransformer3DModel`, `HunyuanVideoPipeline`): text-to-video, 20 dual-stream blocks then
40 single-stream blocks, one flat list of 60 for the pruner.

Both kinds are called as `block(hidden_states, encoder_hidden_states, temb, attention_mask, rotary,
token_replace_emb, first_frame_num_tokens)` and return (video, text). A dual-stream block keeps the text in its own
stream with its own weights, joined with the video only inside attention; a single-stream block concatenates
[video; text] inside itself and shares its weights. Either way the text arrives as `encoder_hidden_states`, so a
gather of the video tokens leaves it whole: every text token is computed at every block, attends to the kept video
tokens and is attended by them, and none is ever counted as a video token. What follows the gather: the rotary
(cos, sin) tables (N, head_dim), which have no batch dimension (samples that keep different tokens run one at a
time), and the joint attention mask (B, 1, 1, N + L) on its video part.

Guidance: the published checkpoint is guidance-distilled. `--guidance` is its embedded guidance (`guidance_scale`,
fed to the transformer as an embedding; one pass per step, model card 6.0). True classifier-free guidance
(`true_cfg_scale` > 1 with a negative prompt, a second pass per step) has no generic flag, so a `--negative-prompt`
would be silently ignored and is refused instead.
"""

from __future__ import annotations

import math
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


def gather_joint_mask(mask: torch.Tensor, index: torch.Tensor, tokens: int) -> torch.Tensor:
    """The joint attention mask (B, 1, 1, N + L) of the gathered video tokens `index` (B or 1, K) followed by every
    text position: (B, 1, 1, K + L)."""
    batch, kept = mask.shape[0], index.shape[1]
    video = mask[..., :tokens].gather(-1, index[:, None, None, :].expand(batch, 1, 1, kept))  # (B, 1, 1, K)
    return torch.cat([video, mask[..., tokens:]], dim=-1)


def _layout(rotary: str) -> BlockLayout:
    return BlockLayout(
        token_args={rotary: gather_table_pair},
        joint_args={"attention_mask": gather_joint_mask},
        video_output=0,
        batch_args=("encoder_hidden_states", "temb", "attention_mask"),
    )


# block class → (its layout, the name of its rotary argument, the name of its modulated input norm)
_BLOCKS = {
    "HunyuanVideoTransformerBlock": (_layout("freqs_cis"), "freqs_cis", "norm1"),
    "HunyuanVideoSingleTransformerBlock": (_layout("image_rotary_emb"), "image_rotary_emb", "norm"),
}
# image-to-video transformers: what each image_condition_type does that a gather of the video tokens would break
_IMAGE_CONDITIONS = {
    "token_replace": "its first-frame tokens take their own modulation (token_replace_emb over first_frame_num_tokens "
                     "leading positions), which a gather of the video tokens would hand to other tokens",
    "latent_concat": "it needs the image latents its image-to-video pipeline concatenates to the noise",
}


def _check_text_to_video(condition: str | None) -> None:
    if condition is not None:
        raise ValueError(f"HunyuanVideo with image_condition_type={condition} is not supported: "
                         f"{_IMAGE_CONDITIONS.get(condition, 'an unknown image conditioning')}")


# HunyuanVideo's transformer config.json (hunyuanvideo-community/HunyuanVideo)
HUNYUAN_CONFIG = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
    guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
    rope_axes_dim=(16, 56, 56),
)
HUNYUAN_LATENT = (33, 90, 160)  # 129 frames at 720×1280 through its VAE (4× time, 8× space)
EMBEDDED_GUIDANCE = 6.0  # the pipeline's and the model card's guidance_scale


class HunyuanVideoAdapter(ModelAdapter):
    name = "hunyuanvideo"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    pipeline_classes = ("HunyuanVideoPipeline",)
    profiles = {"hunyuanvideo": Profile(HUNYUAN_CONFIG, HUNYUAN_LATENT, 256, "HunyuanVideoPipeline")}
    unsupported_methods = {
        "router": "a router is trained for each model, and train-router records the teacher's transformer inputs as "
                  "Wan takes them (latents, timestep, text embedding); HunyuanVideo's forward also needs the text "
                  "mask, the pooled CLIP projection and the guidance embedding",
    }

    # -------------------------------------------------------------------------------------------- transformer

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        _check_text_to_video(transformer.config.image_condition_type)
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def num_blocks(self, info: ModelInfo) -> int:
        config = info.component_config(info.denoisers[0])
        return config.get("num_layers", 20) + config.get("num_single_layers", 40)

    def layout(self, block: torch.nn.Module) -> BlockLayout:
        return _BLOCKS[type(block).__name__][0]

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        config = transformer.config
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        _, _, frames, height, width = hidden_states.shape  # (B, C, F, H, W) latents
        return TokenGrid(frames // config.patch_size_t, height // config.patch_size, width // config.patch_size)

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, rotary, norm = _BLOCKS[type(block).__name__]
        hidden_states = call.hidden_states if positions is None else gather_tokens(call.hidden_states, positions)
        # dual-stream: AdaLayerNormZero; single-stream: AdaLayerNormZeroSingle; both per token, modulated per sample
        normed = getattr(block, norm)(hidden_states, emb=call.arguments["temb"])[0]  # (B, K, D)
        return rotary_query_key(block.attn, normed, query_index, table_rows(call.arguments[rotary], positions))

    def block_flops(self, transformer: torch.nn.Module, layer: int, tokens: int, kept: int, text_tokens: int) -> float:
        width = self.hidden_width(transformer)
        return joint_block_flops(tokens, dim=width, ffn_dim=int(width * transformer.config.mlp_ratio),
                                 text_tokens=text_tokens, kept=kept)

    def token_geometry(self, pipe) -> tuple[int, int, int]:
        config = pipe.transformer.config
        return pipe.vae_scale_factor_temporal, config.patch_size_t, pipe.vae_scale_factor_spatial * config.patch_size

    def compute_marker(self, module: torch.nn.Module) -> torch.nn.Module | None:
        if hasattr(module, "proj_mlp"):  # a single-stream block: its MLP branch
            return module.proj_mlp
        if hasattr(module, "ff"):  # a dual-stream block
            return module.ff
        if hasattr(module, "to_q") and getattr(module, "to_out", None) is None:  # single-stream attention: no out
            return module.to_q
        return super().compute_marker(module)

    # ----------------------------------------------------------------------------------------------- pipeline

    def check_inputs(self, gen, info: ModelInfo) -> None:
        _check_text_to_video(info.component_config(info.denoisers[0]).get("image_condition_type"))
        if gen.image is not None:
            raise ValueError(f"--image needs an image-to-video pipeline; {info.source} is a {info.pipeline_class}")
        if gen.negative_prompt.strip():
            raise ValueError("HunyuanVideo is guidance-distilled: --guidance sets its embedded guidance (one pass per "
                             "step); true CFG with a negative prompt has no flag, so --negative-prompt would be "
                             "ignored")
        vae = info.component_config("vae")
        temporal = vae.get("temporal_compression_ratio", 4)
        if (gen.frames - 1) % temporal:
            raise ValueError(f"HunyuanVideo: --frames must be {temporal}k+1 (its VAE compresses {temporal} frames into "
                             f"one), got {gen.frames}")
        transformer = info.component_config(info.denoisers[0])
        # the pipeline asks for multiples of 16; a latent cell must also fill whole patches
        multiple = math.lcm(16, vae.get("spatial_compression_ratio", 8) * transformer.get("patch_size", 2))
        for name in ("height", "width"):
            if getattr(gen, name) % multiple:
                raise ValueError(f"HunyuanVideo: --{name} must be a multiple of {multiple}, got {getattr(gen, name)}")

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        return dict(
            prompt=gen.prompt, num_frames=gen.frames, height=gen.height, width=gen.width,
            num_inference_steps=gen.steps, guidance_scale=gen.guidance, true_cfg_scale=1.0,
            max_sequence_length=gen.max_sequence_length,
        )

    def profile_inputs(self, transformer, profile: Profile, latent, device, dtype) -> dict:
        config = transformer.config
        return dict(
            hidden_states=torch.randn(1, config.in_channels, *latent, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, profile.text_tokens, config.text_embed_dim, device=device,
                                              dtype=dtype),
            encoder_attention_mask=torch.ones(1, profile.text_tokens, device=device, dtype=dtype),
            pooled_projections=torch.randn(1, config.pooled_projection_dim, device=device, dtype=dtype),
            guidance=torch.full((1,), EMBEDDED_GUIDANCE * 1000.0, device=device, dtype=dtype),  # as the pipeline
            return_dict=False,
        )

    def profile_decode(self, profile: Profile, latent, device) -> Callable:
        from diffusers import AutoencoderKLHunyuanVideo

        vae = AutoencoderKLHunyuanVideo().to(device).eval()  # the default config is HunyuanVideo's VAE, in float32
        vae.enable_tiling()  # as the model card runs it: 129 frames at 720p do not decode in one piece
        latents = torch.randn(1, vae.config.latent_channels, *latent, device=device)
        return lambda: vae.decode(latents, return_dict=False)
