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


def _word_tokenizer(padding_side: str = "right"):
    """The embedded model's word-level tokenizer, padding on `padding_side` (an init argument, so it is saved)."""
    from transformers import PreTrainedTokenizerFast

    from vidgen_prune.tiny.pipeline import build_tokenizer

    words = build_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=words.backend_tokenizer, padding_side=padding_side,
                                   **words.special_tokens_map)


def hunyuan_video(num_layers: int = 2, num_single_layers: int = 4, image_condition_type: str | None = None):
    """HunyuanVideoPipeline as diffusers' own fast tests build it (2 heads × 16, a 4-block VAE with 8× space and 4×
    time), with 2 dual-stream + 4 single-stream blocks, patch 2 as the real model, and offline word-level tokenizers.
    The Llama tokenizer pads on the left: the pipeline crops the first 95 positions (the real template's length in
    Llama tokens), and this tokenizer's shorter template would otherwise leave only padding after the crop."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from vidgen_prune.tiny.prompts import vocabulary

    vocab = len(vocabulary())
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
        image_condition_type=image_condition_type,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    torch.manual_seed(0)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        pad_token_id=0, bos_token_id=1, eos_token_id=1,
    ))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=8, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,  # 2: pooled at argmax(ids), any vocab
    ))
    return HunyuanVideoPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=text_encoder.eval(), tokenizer=_word_tokenizer("left"), text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=_word_tokenizer(),
    )


def cogvideox(version: str = "5b", num_layers: int = 6):
    """CogVideoXPipeline as diffusers' own fast tests build it (2 heads × 16, a 4-block VAE with 8× space and 4×
    time, DDIM), offline: a word-level tokenizer and a random 1-layer T5 encoder. `version`: "2b" (sin-cos positional
    embeddings), "5b" (rotary) or "1.5" (rotary, 2 latent frames per token frame, patch without bias)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel, DDIMScheduler
    from transformers import T5Config, T5EncoderModel

    from vidgen_prune.tiny.prompts import vocabulary

    variant = {
        "2b": {},
        "5b": dict(use_rotary_positional_embeddings=True),
        "1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False),
    }[version]
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=num_layers, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, **variant,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(vocabulary()), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    ))
    return CogVideoXPipeline(tokenizer=_word_tokenizer(), text_encoder=text_encoder.eval(), vae=vae,
                             transformer=transformer, scheduler=DDIMScheduler())
