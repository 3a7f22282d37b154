"""A causal generation streamed into an MP4 with its JSON sidecar: what `generate --causal` and its batch mode write.

Each chunk's frames are encoded as soon as they are decoded; the MP4 and its sidecar reach their paths together,
once both are complete (`outputs.atomic_files`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..config import GenerateConfig, PruneConfig
from .config import CausalConfig
from .sampler import CausalResult, generate_causal

EMBEDDED_NAME = "embedded:tiny-wan-causal"


def write_causal_video(pipe, gen: GenerateConfig, prune: PruneConfig, causal: CausalConfig, out: Path,
                       preset: str | None, extra: dict | None = None,
                       on_chunk: Callable[[int], None] | None = None) -> tuple[CausalResult, dict]:
    """Generate `gen` chunk by chunk into `out` (+ `out`.json, with `extra` merged into it); returns the result and
    the sidecar. `on_chunk(chunks done)` after each chunk is encoded."""
    from ..engine import sidecar
    from ..outputs import Mp4Encoder, atomic_files, write_json_to

    with atomic_files(out, out.with_suffix(".json")) as (video_partial, sidecar_partial):
        with Mp4Encoder(video_partial, gen.fps) as video:

            def on_frames(chunk: int, frames) -> None:
                video.append(frames)
                if on_chunk:
                    on_chunk(chunk + 1)

            result = generate_causal(pipe, gen, causal, prune, on_frames=on_frames)
        record = sidecar(gen, prune, result, preset) | (extra or {})
        record["model"] = gen.model or EMBEDDED_NAME
        record["causal"] = causal_record(causal, result)
        write_json_to(record, sidecar_partial)
    return result, record


def causal_record(causal: CausalConfig, result: CausalResult) -> dict:
    """The causal settings and how the video was cut, for a sidecar or a bench record."""
    return {**asdict(causal), "chunks": len(result.chunk_frames), "chunk_latent_frames": result.chunk_frames}
