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


# ---------------------------------------------------------------------------------------------------------------
# Other families: components shaped like diffusers' own pipeline tests (tests/pipelines/<family>), 6 blocks each
# ---------------------------------------------------------------------------------------------------------------

BLOCKS = TEST_CONFIG.num_layers
IMAGE_DIM = 16  # width of the tiny CLIP vision encoder (Wan2.1 I2V's image_dim)


def _t5_encoder(width: int):
    """A one-layer T5 encoder over the tiny tokenizer's vocabulary (LTX-Video's and Mochi's text encoder kind)."""
    from transformers import T5Config, T5EncoderModel

    from vidgen_prune.tiny.prompts import vocabulary

    config = T5Config(vocab_size=len(vocabulary()), d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=1,
                      num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      dropout_rate=0.0)
    return T5EncoderModel(config).eval()


def _clip_image_encoder():
    """CLIP vision tower and processor at 32 px with 8 px patches: 17 image tokens of width IMAGE_DIM."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=IMAGE_DIM, projection_dim=IMAGE_DIM, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, intermediate_size=32, patch_size=8)
    return CLIPVisionModel(config).eval(), CLIPImageProcessor(crop_size=32, size=32)


def _wan_parts() -> dict:
    """The tiny Wan pipeline's tokenizer, UMT5 text encoder, VAE (4× time, 4× space) and UniPC scheduler."""
    tiny = build_pipeline(TEST_CONFIG, seed=0)
    return {name: getattr(tiny, name) for name in ("tokenizer", "text_encoder", "vae", "scheduler")}


def _wan_shape(**overrides) -> dict:
    config = TEST_CONFIG
    return dict(patch_size=(1, 2, 2), num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
                in_channels=config.vae_z_dim, out_channels=config.vae_z_dim, text_dim=config.text_dim,
                freq_dim=config.freq_dim, ffn_dim=config.ffn_dim, num_layers=BLOCKS) | overrides


def ltx_video():
    """LTXPipeline: T5 text encoder, LTX VAE (4× time and space at this size), packed-token transformer."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel as Transformer

    from vidgen_prune.tiny.pipeline import build_tokenizer

    torch.manual_seed(0)
    transformer = Transformer(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                              cross_attention_dim=16, num_layers=BLOCKS, caption_channels=16).eval()
    scaling = (True, True, False, False)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling, patch_size=1, patch_size_t=1,
    ).eval()
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5_encoder(16),
                       tokenizer=build_tokenizer(), transformer=transformer)


def skyreels_v2():
    """SkyReelsV2Pipeline on the tiny Wan parts with a SkyReels-V2 transformer of the same shape."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel

    parts = _wan_parts()
    torch.manual_seed(2)
    return SkyReelsV2Pipeline(**parts, transformer=SkyReelsV2Transformer3DModel(**_wan_shape()).eval())


def wan_i2v():
    """Wan2.1 I2V: WanImageToVideoPipeline with a CLIP image encoder."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    return _image_to_video(WanImageToVideoPipeline, WanTransformer3DModel, seed=3)


def wan_ti2v():
    """Wan2.2 TI2V-5B's layout: a WanPipeline with `expand_timesteps` (per-token timesteps), which also animates an
    image through WanImageToVideoPipeline on the same components."""
    from diffusers import WanPipeline, WanTransformer3DModel

    parts = _wan_parts()
    torch.manual_seed(4)
    return WanPipeline(**parts, transformer=WanTransformer3DModel(**_wan_shape()).eval(), expand_timesteps=True)


def skyreels_v2_i2v():
    """SkyReelsV2ImageToVideoPipeline: Wan2.1 I2V's layout."""
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel

    return _image_to_video(SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel, seed=5)


def _image_to_video(pipeline_class, transformer_class, seed: int):
    """Wan2.1 I2V's layout on the tiny Wan parts: a CLIP image encoder, and a transformer that takes noise + the
    image's latent and mask (2·z + 4 channels) and the image tokens through its own K/V projections."""
    parts = _wan_parts()
    torch.manual_seed(seed)
    width = TEST_CONFIG.num_heads * TEST_CONFIG.head_dim
    transformer = transformer_class(**_wan_shape(in_channels=2 * TEST_CONFIG.vae_z_dim + 4, image_dim=IMAGE_DIM,
                                                 added_kv_proj_dim=width)).eval()
    image_encoder, image_processor = _clip_image_encoder()
    return pipeline_class(**parts, transformer=transformer, image_encoder=image_encoder,
                          image_processor=image_processor)


def mochi():
    """MochiPipeline: T5 text encoder, Mochi VAE (6× time, 8× space), joint-attention transformer (text width 16)."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    from vidgen_prune.tiny.pipeline import build_tokenizer

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=BLOCKS,
                                          pooled_projection_dim=16, in_channels=12, text_embed_dim=32,
                                          time_embed_dim=4, max_sequence_length=16).eval()
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1)).eval()
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5_encoder(32),
                         tokenizer=build_tokenizer(), transformer=transformer)


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
    return CogVideoXPipeline(tokenizer=_word_tokenizer(), text_encoder=_t5_encoder(16), vae=vae,
                             transformer=transformer, scheduler=DDIMScheduler())
