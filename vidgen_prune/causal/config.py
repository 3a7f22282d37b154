"""`CausalConfig`: how a causal (chunk-by-chunk) generation is cut into chunks, denoised and cached.

Light on purpose (no torch import): the CLI and the preset loader build it before any model is loaded, so a bad
value is refused before weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAMPLERS = ("scheduler", "renoise")


@dataclass(frozen=True)
class CausalConfig:
    chunk_frames: int = 3  # latent frames per chunk (Self-Forcing: 3 of 21)
    chunk_steps: int = 4  # denoising steps per chunk (Self-Forcing: 4)
    kv_window: int | None = None  # latent frames the cache keeps (sink included); None = every earlier frame
    sink_frames: int = 0  # first latent frames the window never evicts
    context_timestep: float = 0.0  # timestep of the clean pass that writes a finished chunk into the cache
    # scheduler: the pipeline's own scheduler (a fresh copy per chunk, `chunk_steps` steps), for models trained
    # with the ordinary flow objective; renoise: Self-Forcing / CausVid's few-step sampler (predict the clean
    # chunk, noise it afresh to the next timestep of 1000·(1 - j/T) warped by `renoise_shift`)
    sampler: str = "scheduler"
    renoise_shift: float = 5.0  # Self-Forcing's timestep shift: 1000/750/500/250 → 1000/938/833/625
    transformer_weights: str | None = None  # Self-Forcing / CausVid state dict with the original Wan key names

    def __post_init__(self):
        if self.chunk_frames < 1:
            raise ValueError(f"--chunk-frames must be at least 1, got {self.chunk_frames}")
        if self.chunk_steps < 1:
            raise ValueError(f"--chunk-steps must be at least 1, got {self.chunk_steps}")
        if self.sink_frames < 0:
            raise ValueError(f"--sink-frames must be at least 0, got {self.sink_frames}")
        if self.kv_window is not None and self.kv_window < self.sink_frames + self.chunk_frames:
            # a window that cannot hold the sink and the chunk just written would evict that chunk at once
            raise ValueError(f"--kv-window must hold the sink frames plus one chunk ({self.sink_frames} + "
                             f"{self.chunk_frames}), got {self.kv_window}")
        if not 0.0 <= self.context_timestep < 1000.0:
            raise ValueError(f"context_timestep must be in [0, 1000), got {self.context_timestep}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.renoise_shift <= 0.0:
            raise ValueError(f"renoise_shift must be positive, got {self.renoise_shift}")
        if self.transformer_weights is not None and not Path(self.transformer_weights).expanduser().is_file():
            raise ValueError(f"--transformer-weights file not found: {self.transformer_weights}")

    def chunks(self, latent_frames: int) -> list[range]:
        """The latent frames of each chunk, in order; the last chunk is shorter when C does not divide F."""
        return [range(start, min(start + self.chunk_frames, latent_frames))
                for start in range(0, latent_frames, self.chunk_frames)]


# settings of a generation the causal sampler has no way to honour (it loads and runs its own transformer)
_UNSUPPORTED_SETUP = {"image": "--image", "offload": "--offload", "attention_backend": "--attention-backend",
                      "compile": "--compile", "lora": "--lora", "vae_tiling": "--vae-tiling"}


def check_causal_run(gen, prune, info) -> None:
    """Refuse (ValueError), before loading, what a causal generation cannot run: a model that is not one Wan
    text-to-video transformer with Wan2.1's VAE, a diffusers cache, a setup flag the sampler does not apply. `gen` a
    GenerateConfig, `prune` a PruneConfig, `info` the model's `ModelInfo`."""
    transformer = info.component_config(info.denoisers[0])
    if (info.pipeline_class != "WanPipeline" or len(info.denoisers) > 1 or transformer.get("image_dim")
            or info.pipeline_config.get("expand_timesteps") or info.component_config("vae").get("patch_size")):
        raise ValueError(f"--causal runs one Wan2.1-style text-to-video transformer (a WanPipeline with Wan2.1's VAE); "
                         f"{info.source} is a {info.pipeline_class} with {', '.join(info.denoisers)}")
    if prune.cache is not None:
        raise ValueError(f"--causal does not compose with the diffusers cache {prune.cache}: it reuses a block's "
                         "output across calls, and consecutive causal calls are different chunks")
    given = [flag for name, flag in _UNSUPPORTED_SETUP.items() if getattr(gen, name)]
    if given:
        raise ValueError(f"--causal does not take {', '.join(given)} (the chunk sampler runs its own transformer)")


def default_causal_router(prune, model: str | None):
    """`prune` with the embedded causal model's router for `--method router` when no `--router` is given (the
    embedded model is the default of `--causal`; `tiny/causal/router`, trained on its own chunks)."""
    from dataclasses import replace

    from ..tiny import EMBEDDED_CAUSAL_ROUTER_DIR

    if prune.method != "router" or prune.router is not None or model is not None:
        return prune
    return replace(prune, router=str(EMBEDDED_CAUSAL_ROUTER_DIR))
