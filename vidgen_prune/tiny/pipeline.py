"""Build the tiny text-to-video ``WanPipeline`` with random weights from a frozen ``TinyConfig``.

The embedded model (``vidgen_prune.tiny.EMBEDDED_MODEL_DIR``) is ``TinyConfig()`` after training;
``TinyConfig.for_tests()`` gives a much smaller random pipeline for fast tests elsewhere in the project.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResample, WanResidualBlock
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from vidgen_prune.tiny.prompts import EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, vocabulary


@dataclass(frozen=True)
class TinyConfig:
    # text encoder (UMT5); its width is also the transformer's text_dim
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 2
    # VAE: len(vae_dim_mult) - 1 spatial halvings; each True in vae_temporal_downsample halves time
    vae_base_dim: int = 16
    # decoder width (None: vae_base_dim). The shipped decoder is 4 wide, distilled from the 16-wide one the
    # transformer was trained with (``distill_decoder``); the encoder and latent space are the 16-wide VAE's.
    # At 16 the decode was 2.3 s of a 7.8 s generation on one CPU thread, at 4 it is ~0.6 s
    vae_decoder_base_dim: int | None = 4
    vae_z_dim: int = 8
    vae_dim_mult: tuple[int, ...] = (1, 2, 2)
    vae_num_res_blocks: int = 1
    vae_temporal_downsample: tuple[bool, ...] = (True, True)
    # Wan2.2-style parameter-free space-to-channel shortcuts around each down/up block: the autoencoder starts
    # near an average-pool / repeat pair (with branches zero-initialised); on this CPU the reconstruction loss
    # fell about twice as fast as with the plain Wan2.1 blocks
    vae_residual: bool = True
    # transformer: width num_heads * head_dim = 96; patch (1, 2, 2) as in Wan2.1
    num_layers: int = 8
    num_heads: int = 3
    head_dim: int = 32
    ffn_dim: int = 384
    freq_dim: int = 64
    # scheduler: flow-matching UniPC, sigmas shifted towards the noisy end by flow_shift
    flow_shift: float = 3.0
    # per-channel statistics of the trained VAE's latents; None until measured (train.py fills them in)
    latents_mean: tuple[float, ...] | None = field(default=None)
    latents_std: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.vae_temporal_downsample) != len(self.vae_dim_mult) - 1:
            raise ValueError("vae_temporal_downsample needs one entry per spatial downsampling")
        for stats in (self.latents_mean, self.latents_std):
            if stats is not None and len(stats) != self.vae_z_dim:
                raise ValueError("latent statistics need one value per latent channel")

    @classmethod
    def for_tests(cls) -> TinyConfig:
        """4 blocks of width 32: a 2-step, 5-frame 32x32 generation takes well under a second."""
        return cls(text_dim=16, text_layers=1, vae_base_dim=8, vae_decoder_base_dim=None, vae_z_dim=4, num_layers=4,
                   num_heads=2, head_dim=16, ffn_dim=64, freq_dim=32)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae_dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.vae_temporal_downsample)

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer() -> PreTrainedTokenizerFast:
    word_level = Tokenizer(models.WordLevel(vocabulary(), unk_token=UNK_TOKEN))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
    )


def build_text_encoder(config: TinyConfig) -> UMT5EncoderModel:
    umt5 = UMT5Config(
        vocab_size=len(vocabulary()),
        d_model=config.text_dim,
        d_kv=config.text_dim // config.text_heads,
        d_ff=config.text_dim * 2,
        num_layers=config.text_layers,
        num_heads=config.text_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(umt5).eval()


def build_vae(config: TinyConfig) -> AutoencoderKLWan:
    vae = AutoencoderKLWan(
        base_dim=config.vae_base_dim,
        decoder_base_dim=config.vae_decoder_base_dim,
        z_dim=config.vae_z_dim,
        dim_mult=list(config.vae_dim_mult),
        num_res_blocks=config.vae_num_res_blocks,
        temperal_downsample=list(config.vae_temporal_downsample),
        is_residual=config.vae_residual,
        latents_mean=list(config.latents_mean or [0.0] * config.vae_z_dim),
        latents_std=list(config.latents_std or [1.0] * config.vae_z_dim),
        scale_factor_temporal=config.temporal_factor,
        scale_factor_spatial=config.spatial_factor,
    ).eval()
    if config.vae_residual:
        zero_residual_branches(vae)
    return vae


def zero_residual_branches(vae: torch.nn.Module) -> None:
    """Zero the last layer of every residual branch in ``vae`` (a VAE or one of its halves), so the untrained
    network is its shortcut path.

    Encoder and decoder then start as conv_in -> average-pool / repeat shortcuts -> head, which already carries
    colour and layout; on CPU this got reconstruction going within the few hundred steps we can afford, where the
    default initialisation was still returning muddy colours after 700 (L1 + MSE 0.17).
    """
    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            layers = [module.conv2]
        elif isinstance(module, WanAttentionBlock):
            layers = [module.proj]
        elif isinstance(module, WanResample) and module.mode != "none":
            layers = [module.resample[-1]] + ([module.time_conv] if module.mode == "downsample3d" else [])
        else:
            continue
        for layer in layers:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)


def build_transformer(config: TinyConfig) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.vae_z_dim,
        out_channels=config.vae_z_dim,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
    ).eval()


def build_scheduler(config: TinyConfig) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=config.flow_shift
    )


def build_pipeline(config: TinyConfig, seed: int) -> WanPipeline:
    """A complete ``WanPipeline`` with every module randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(config),
        vae=build_vae(config),
        transformer=build_transformer(config),
        scheduler=build_scheduler(config),
    )
