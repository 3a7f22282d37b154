"""Procedural captioned videos: one flat-coloured shape moving over a plain or textured background.

Geometry is expressed as fractions of the frame size, so the same spec renders the same scene at any
resolution. Every random choice (start position, size, travel distance) comes from the caller's
``numpy.random.Generator``, so a seed reproduces a video exactly. Frames are anti-aliased by rendering at
twice the resolution and averaging 2x2 blocks.
"""

from __future__ import annotations

import numpy as np

from vidgen_prune.tiny.prompts import VideoSpec

OBJECT_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 40),
    "white": (240, 240, 240),
}
PLAIN_BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (120, 120, 120),
    "purple": (90, 40, 120),
}
# two-tone textures; both tones dark and unsaturated so every object colour stands out on them
STRIPE_RGB = ((35, 35, 35), (85, 85, 85))
CHECKER_RGB = ((45, 45, 80), (95, 95, 60))
TEXTURE_PERIOD = 0.125  # stripe width and checker square side, as a fraction of the frame width

SUPERSAMPLE = 2


def render_video(spec: VideoSpec, rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """Render ``spec`` as uint8 frames of shape (frames, height, width, 3)."""
    hi_h, hi_w = height * SUPERSAMPLE, width * SUPERSAMPLE
    background = _background(spec.background, hi_h, hi_w)  # (Hs, Ws, 3) float
    centres_x, centres_y, radii = _trajectory(spec.motion, rng, frames)  # each (F,), fractions of the frame
    ys = (np.arange(hi_h) + 0.5) / hi_h  # (Hs,)
    xs = (np.arange(hi_w) + 0.5) / hi_w  # (Ws,)
    # distances in units of the shorter side so shapes stay undistorted on non-square frames
    scale = min(hi_h, hi_w)
    colour = np.asarray(OBJECT_RGB[spec.colour], dtype=np.float32)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        dx = (xs[None, :] - centres_x[index]) * hi_w / scale  # (1, Ws)
        dy = (ys[:, None] - centres_y[index]) * hi_h / scale  # (Hs, 1)
        inside = _shape_mask(spec.shape, dx, dy, radii[index])  # (Hs, Ws) bool
        frame = np.where(inside[..., None], colour, background)  # (Hs, Ws, 3)
        frame = frame.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))  # (H, W, 3)
        video[index] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return video


def render_batch(
    specs: list[VideoSpec], seed: int, frames: int, height: int, width: int
) -> np.ndarray:
    """Render several specs with one seed; returns uint8 (B, frames, height, width, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([render_video(spec, rng, frames, height, width) for spec in specs])


def sample_specs(rng: np.random.Generator, specs: list[VideoSpec], count: int) -> list[VideoSpec]:
    return [specs[i] for i in rng.integers(0, len(specs), size=count)]


def to_model_range(videos: np.ndarray) -> np.ndarray:
    """uint8 (B, F, H, W, 3) -> float32 (B, 3, F, H, W) in [-1, 1], the layout and range the Wan VAE takes."""
    return (videos.astype(np.float32) / 127.5 - 1.0).transpose(0, 4, 1, 2, 3)


def background_image(name: str, height: int, width: int) -> np.ndarray:
    """The background exactly as ``render_video`` draws it behind the object: float32 (height, width, 3)."""
    hi_res = _background(name, height * SUPERSAMPLE, width * SUPERSAMPLE)  # (Hs, Ws, 3)
    return hi_res.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))


def _background(name: str, height: int, width: int) -> np.ndarray:
    if name in PLAIN_BACKGROUND_RGB:
        return np.broadcast_to(np.asarray(PLAIN_BACKGROUND_RGB[name], np.float32), (height, width, 3))
    period = TEXTURE_PERIOD * width
    column_band = (np.arange(width) // period).astype(int)  # (W,)
    if name == "striped":
        tone = np.broadcast_to(column_band[None, :] % 2, (height, width))  # vertical stripes
        tones = STRIPE_RGB
    elif name == "checkered":
        row_band = (np.arange(height) // period).astype(int)  # (H,)
        tone = (row_band[:, None] + column_band[None, :]) % 2  # (H, W)
        tones = CHECKER_RGB
    else:
        raise ValueError(f"unknown background {name!r}")
    return np.asarray(tones, np.float32)[tone]  # (H, W, 3)


def _trajectory(motion: str, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y and radius per frame, as fractions of the frame size."""
    progress = np.linspace(0.0, 1.0, frames)  # (F,)
    radius = rng.uniform(0.11, 0.15)
    if motion == "growing":
        start, end = rng.uniform(0.05, 0.07), rng.uniform(0.19, 0.23)
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        return np.full(frames, cx), np.full(frames, cy), start + (end - start) * progress
    radii = np.full(frames, radius)
    margin = radius * 1.2  # triangle vertices reach 1.15 radii from the centre
    if motion == "bouncing":
        # two bounces: the object rests on a floor and rises by `height` at the top of each arc
        rise = rng.uniform(0.3, 0.4)
        floor = rng.uniform(margin + rise, 1.0 - margin)
        cx = rng.uniform(margin, 1.0 - margin)
        return np.full(frames, cx), floor - rise * np.abs(np.sin(2.0 * np.pi * progress)), radii
    travel = rng.uniform(0.35, 0.5)
    start = rng.uniform(margin + travel, 1.0 - margin)  # along the motion axis, before the sign flip
    along = start - travel * progress  # decreasing coordinate
    across = np.full(frames, rng.uniform(margin, 1.0 - margin))
    if motion == "moving left":
        return along, across, radii
    if motion == "moving right":
        return 1.0 - along, across, radii
    if motion == "moving up":
        return across, along, radii
    if motion == "moving down":
        return across, 1.0 - along, radii
    raise ValueError(f"unknown motion {motion!r}")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half_side = 0.9 * radius
        return (np.abs(dx) <= half_side) & (np.abs(dy) <= half_side)
    if shape == "triangle":
        # upright equilateral triangle inscribed in a circle of 1.15 radii (area close to the circle's)
        circum = 1.15 * radius
        top, base = -circum, 0.5 * circum  # y grows downwards
        half_base = circum * np.sqrt(3.0) / 2.0
        # the two slanted edges: |dx| shrinks linearly from half_base at the base to 0 at the top
        within_slope = np.abs(dx) <= half_base * (dy - top) / (base - top)
        return within_slope & (dy >= top) & (dy <= base)
    raise ValueError(f"unknown shape {shape!r}")
