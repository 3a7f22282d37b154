"""Decode latent frames to pixels as chunks arrive: the Wan VAE's own frame-by-frame decode, kept open.

`AutoencoderKLWan.decode` already runs its causal decoder one latent frame at a time with a feature cache of the
frames before; this keeps that cache between calls, so decoding a video chunk by chunk gives the frames one
decode of the whole latent would (tested), and the first chunk can be shown before the last is denoised.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d


class StreamingDecoder:
    """`decode(latents)` → uint8 frames (F, H, W, 3) for the next latent frames (1, z, f, h, w) of one video."""

    def __init__(self, vae):
        if vae.config.patch_size is not None or vae.use_tiling:
            raise ValueError("streaming decode supports the untiled Wan2.1 VAE only")
        self.vae = vae
        self.feature_cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.latent_frames_done = 0
        config = vae.config
        self.mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)  # pipelines' de-normalisation
        self.std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.vae
        latents = latents.to(vae.device, vae.dtype)  # (1, z, f, h, w), normalised as the transformer sees them
        latents = latents * self.std.to(latents) + self.mean.to(latents)
        features = vae.post_quant_conv(latents)  # a 1×1×1 convolution: frame by frame, no state
        pieces = []
        for frame in range(features.shape[2]):
            first = self.latent_frames_done == 0
            pieces.append(vae.decoder(features[:, :, frame : frame + 1], feat_cache=self.feature_cache,
                                      feat_idx=[0], first_chunk=first))  # (1, 3, 1 or 4, H, W)
            self.latent_frames_done += 1
        video = torch.cat(pieces, dim=2).clamp(-1.0, 1.0)[0]  # (3, F, H, W)
        # as VideoProcessor.postprocess_video and the engine: [-1, 1] → [0, 1] → uint8
        frames = ((video.permute(1, 2, 3, 0).float() / 2 + 0.5).clamp(0.0, 1.0) * 255).round()
        return frames.to(torch.uint8).cpu().numpy()  # (F, H, W, 3)
