"""Where a pruner skipped tokens: its keep mask drawn over the decoded frames, method beside method.

A mask comes from `generate(..., record_masks=True)` at one block (layer) of one denoising step, in the step's
first transformer call (CFG's conditional pass). Each latent token is mapped back to the pixels it came from:
token (f, h, w) covers pixel rows h·s..(h+1)·s and columns w·s..(w+1)·s with s = VAE spatial factor × patch,
and the pixel frames of latent frame f. Wan's causal VAE keeps pixel frame 0 alone in latent frame 0 and packs
the next `temporal factor` pixel frames into each later one (17 frames → 1 + 4·4 → 5 latent frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import GenerateConfig, PruneConfig
from .metrics import adjacent_frame_iou
from .models import TokenGrid

SKIP_TINT = np.array([255, 32, 32], dtype=np.float32)  # skipped tokens turn red
TINT_ALPHA = 0.55  # strong enough to read on bright frames, weak enough to still see the content
MIN_PANEL_PX = 256  # small videos are enlarged (nearest neighbour) so token squares stay visible
GAP_PX = 16  # between panels; a multiple of 16 keeps the MP4 free of H.264 padding
HEADER_PX = 32


@dataclass(frozen=True)
class TokenGeometry:
    """How a transformer token maps back onto decoded pixels."""

    temporal_factor: int  # pixel frames per latent frame (after the first)
    patch_frames: int  # latent frames per token
    token_px: int  # pixels per token side: VAE spatial factor × spatial patch

    @classmethod
    def of(cls, pipe) -> TokenGeometry:
        from .models import adapter_for, denoisers

        return cls(*adapter_for(denoisers(pipe)[0]).token_geometry(pipe))

    def grid(self, frames: int, height: int, width: int) -> TokenGrid:
        return TokenGrid(-(-self._latent_frames(frames) // self.patch_frames), height // self.token_px,
                         width // self.token_px)

    def token_frame(self, pixel_frames: int) -> np.ndarray:
        """Token frame index of each pixel frame, (pixel_frames,). Latent frames that do not fill whole temporal
        patches are padded at the front (CogVideoX-1.5's pipeline: 3 latent frames → [pad, 0], [1, 2])."""
        pixel = np.arange(pixel_frames)
        latent = np.where(pixel == 0, 0, (pixel - 1) // self.temporal_factor + 1)
        latent_frames = self._latent_frames(pixel_frames)
        padding = -latent_frames % self.patch_frames
        return (latent + padding) // self.patch_frames

    def _latent_frames(self, pixel_frames: int) -> int:
        return (pixel_frames - 1) // self.temporal_factor + 1


def cond_keep_masks(masks: list, grid: TokenGrid) -> dict[tuple[int, int], np.ndarray]:
    """(step, layer) → keep mask (F, H, W) bool, True = computed, for every pruned block of each step's first call.

    A block missing from the result ran dense. `masks` holds (step, call, layer, positions (B, K)) records; the
    call counter runs over the whole generation, so a step's conditional pass is its smallest call number.
    """
    first_call: dict[int, int] = {}
    for step, call, _, _ in masks:
        first_call[step] = min(call, first_call.get(step, call))
    keep = {}
    for step, call, layer, positions in masks:
        if call == first_call[step]:
            flat = np.zeros(grid.num_tokens, dtype=bool)
            flat[positions[0].numpy()] = True  # batch item 0: the prompt's video
            keep[step, layer] = flat.reshape(grid.frames, grid.height, grid.width)
    return keep


def tint_skipped(frames: np.ndarray, keep: np.ndarray, geometry: TokenGeometry) -> np.ndarray:
    """frames (F, H, W, 3) uint8 with the pixels of skipped tokens tinted; keep (Ft, Ht, Wt) bool."""
    skipped = ~keep[geometry.token_frame(len(frames))]  # (F, Ht, Wt)
    skipped = skipped.repeat(geometry.token_px, axis=1).repeat(geometry.token_px, axis=2)  # (F, H, W)
    tinted = frames.astype(np.float32)  # (F, H, W, 3)
    tinted[skipped] = (1 - TINT_ALPHA) * tinted[skipped] + TINT_ALPHA * SKIP_TINT
    return tinted.round().astype(np.uint8)


@dataclass
class MaskView:
    method: str
    reduction: float
    frames: np.ndarray  # (F, H, W, 3) uint8, skipped tokens tinted
    skipped_fraction: float  # at the chosen layer and step
    iou: float  # adjacent-frame IoU of the skipped sets at the chosen layer and step
    iou_all_blocks: float  # the same, averaged over every pruned block of every step (conditional pass)
    kept_fraction: float  # over the whole generation

    @property
    def label(self) -> str:
        """The achieved budget, not the requested one: dense ignores --reduction."""
        return f"{self.method}, kept {self.kept_fraction:.2f}"

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "reduction": self.reduction,
            "skipped_fraction": self.skipped_fraction,
            "adjacent_frame_iou": self.iou,
            "adjacent_frame_iou_all_blocks": self.iou_all_blocks,
            "kept_fraction": self.kept_fraction,
        }


def check_position(pipe, gen: GenerateConfig, layer: int, step: int, causal=None) -> None:
    """Refuse (ValueError), before any compute, a block or step the generation does not have, or a video too
    short for adjacent latent frames. `causal` (a CausalConfig): `step` is a step of each chunk."""
    from .models import adapter_for, denoisers

    transformer = denoisers(pipe)[0]
    num_layers = len(adapter_for(transformer).blocks(transformer))
    if not 0 <= layer < num_layers:
        raise ValueError(f"--layer must be in [0, {num_layers}) for this model, got {layer}")
    steps, flag = (gen.steps, "--steps") if causal is None else (causal.chunk_steps, "--chunk-steps")
    if not 0 <= step < steps:
        raise ValueError(f"--step must be in [0, {steps}) for {flag} {steps}, got {step}")
    if TokenGeometry.of(pipe).grid(gen.frames, gen.height, gen.width).frames < 2:
        raise ValueError(f"--frames {gen.frames} gives one latent frame; adjacent-frame IoU needs two or more")


def mask_views(pipe, gen: GenerateConfig, prunes: Sequence[PruneConfig], layer: int, step: int,
               causal=None) -> list[MaskView]:
    """One seeded generation per pruning config, each with its mask at (`layer`, `step`) drawn over its frames.

    `causal` (a CausalConfig): generated chunk by chunk; each chunk's mask at its own step `step` is drawn over the
    chunk's frames (the prompt's sample of the guidance batch)."""
    from .engine import generate

    geometry = TokenGeometry.of(pipe)
    grid = geometry.grid(gen.frames, gen.height, gen.width)
    views = []
    for prune in prunes:
        if causal is None:
            result = generate(pipe, gen, prune, record_masks=True)
            masks = cond_keep_masks(result.masks, grid)
        else:
            from .causal.masks import video_keep_masks
            from .causal.sampler import generate_causal

            result = generate_causal(pipe, gen, causal, prune, record_masks=True)
            masks = {key: keep[-1] for key, keep in video_keep_masks(result.masks, result.calls, result.grid).items()
                     if key[0] < causal.chunk_steps}  # the prompt's row; context passes are not drawn
        keep = masks.get((step, layer), np.ones((grid.frames, grid.height, grid.width), dtype=bool))
        every_block = np.stack(list(masks.values())) if masks else keep[None]  # (S, F, H, W)
        views.append(
            MaskView(
                method=prune.method,
                reduction=prune.reduction,
                frames=tint_skipped(result.frames, keep, geometry),
                skipped_fraction=float(1 - keep.mean()),
                iou=adjacent_frame_iou(keep),
                iou_all_blocks=adjacent_frame_iou(every_block),
                kept_fraction=result.kept_fraction,
            )
        )
    return views


def _enlarged(frames: np.ndarray) -> np.ndarray:
    scale = max(1, -(-MIN_PANEL_PX // frames.shape[1]))  # ceil: at least MIN_PANEL_PX tall
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)  # (F, H·scale, W·scale, 3)


def write_mask_files(views: Sequence[MaskView], png: Path, geometry: TokenGeometry, layer: int, step: int,
                     fps: int) -> Path:
    """The PNG grid and, beside it, the side-by-side MP4: both reach their paths or neither does. Returns the MP4's."""
    from .outputs import atomic_files, encode_mp4, save_png

    video = png.with_suffix(".mp4")
    with atomic_files(video, png) as (video_partial, png_partial):
        encode_mp4(side_by_side_frames(views), video_partial, fps)
        save_png(grid_figure(views, geometry, layer, step), png_partial, dpi=100)
    return video


def side_by_side_frames(views: Sequence[MaskView]) -> np.ndarray:
    """The methods' tinted videos next to each other, each under its name: (F, H, W, 3) uint8."""
    import cv2

    panels = [_enlarged(view.frames) for view in views]  # each (F, h, w, 3)
    frames, height, width, _ = panels[0].shape
    canvas = np.full((frames, HEADER_PX + height, len(panels) * (width + GAP_PX) - GAP_PX, 3), 255, np.uint8)
    header = canvas[0, :HEADER_PX].copy()  # (HEADER_PX, W, 3)
    for i, (view, panel) in enumerate(zip(views, panels)):
        left = i * (width + GAP_PX)
        canvas[:, HEADER_PX:, left : left + width] = panel
        cv2.putText(header, view.label, (left + 4, HEADER_PX - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    canvas[:, :HEADER_PX] = header
    return canvas


def grid_figure(views: Sequence[MaskView], geometry: TokenGeometry, layer: int, step: int):
    """A row per method, a column per latent frame (its first pixel frame: the mask is the same for all of them)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to touch

    token_frame = geometry.token_frame(len(views[0].frames))  # (F,)
    columns = [int(np.flatnonzero(token_frame == f)[0]) for f in range(token_frame.max() + 1)]
    figure = Figure(figsize=(2.0 * len(columns), 2.25 * len(views) + 0.6))
    axes = figure.subplots(len(views), len(columns), squeeze=False)
    for row, view in enumerate(views):
        for col, pixel_frame in enumerate(columns):
            axis = axes[row, col]
            axis.imshow(view.frames[pixel_frame], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            last = int(np.flatnonzero(token_frame == col)[-1])
            if row == 0:
                axis.set_title(f"frames {pixel_frame}–{last}" if last > pixel_frame else f"frame {pixel_frame}",
                               fontsize=9)
        axes[row, 0].set_ylabel(f"{view.label}\nIoU {view.iou:.2f}", fontsize=9)
    figure.suptitle(f"skipped tokens (red), block {layer}, step {step}, conditional pass", fontsize=10)
    figure.tight_layout()
    return figure
