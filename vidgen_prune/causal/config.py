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
