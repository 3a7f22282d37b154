"""Prompt-adherence checker for the tiny model's world: what do the frames show, and does it match the caption?

    spec = parse_caption("a red circle moving left on a gray background")
    score_video(frames, spec.caption)
    # {"colour": True, "shape": True, "motion": False, "background": True, "count": True}

Method, on uint8 frames (F, H, W, 3):
  1. background = the world's background (plain colours, stripes, checker) that best matches the frames, by
     the median per-pixel distance, so the object (a minority of pixels) does not sway it; a temporal median
     would not do, as a slow object covers its path for most of the clip and a growing one never leaves;
  2. foreground = pixels far from that background; object colour = the palette colour that most foreground
     pixels lie within ``PALETTE_DISTANCE`` of (a vote, so a background drawn with the wrong texture, whose
     pixels are off-background but near no object colour, does not pull the object's colour towards it);
  3. per frame, the largest connected foreground component gives centroid, area and bounding-box fill
     (square ~1.0, circle ~0.79, triangle ~0.5); the objects in a frame are the components at least
     ``COMPANION_AREA`` of the largest one's area, and the video's count is their median over frames (a caption
     names one object: a model that tiles its scene draws several copies, each of which may move right);
  4. motion from the smoothed centroid trajectory: growing (area x2.5 or more), bouncing (vertical path much
     longer than the net vertical displacement), else the dominant net displacement (left/right/up/down).
All distances are fractions of the frame size, so the checker works at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vidgen_prune.tiny.prompts import BACKGROUNDS, parse_caption
from vidgen_prune.tiny.synthetic import OBJECT_RGB, background_image

BACKGROUND_DISTANCE = 60.0  # RGB distance above which a pixel is not background (palette gaps are >= 100)
PALETTE_DISTANCE = 80.0  # a pixel this close to an object colour votes for it (object colours are >= 180 apart)
MIN_OBJECT_FRACTION = 0.002  # smallest component counted as the object, as a fraction of the frame area
GROWTH_RATIO = 2.5  # rendered growth is about x12 in area; moving objects stay near x1
MIN_TRAVEL = 0.12  # rendered linear travel is 0.35-0.5 of the frame
COMPANION_AREA = 0.25  # a component this fraction of the largest one's area counts as another object, not speckle
ATTRIBUTES = ("colour", "shape", "motion", "background", "count")  # what score_video judges


@dataclass(frozen=True)
class Detection:
    """What the checker saw; None where it could not decide."""

    colour: str | None
    shape: str | None
    motion: str | None
    background: str | None
    objects: int  # object-sized components in the median frame


def score_video(frames: np.ndarray, caption: str) -> dict[str, bool]:
    """Per-attribute correctness of ``frames`` (uint8 (F, H, W, 3)) against ``caption``."""
    spec = parse_caption(caption)
    seen = detect(frames)
    return {
        "colour": seen.colour == spec.colour,
        "shape": seen.shape == spec.shape,
        "motion": seen.motion == spec.motion,
        "background": seen.background == spec.background,
        "count": seen.objects == 1,
    }


def detect(frames: np.ndarray) -> Detection:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    video = frames.astype(np.float32)  # (F, H, W, 3)
    background_name, distance = _match_background(video)  # distance: (F, H, W)
    foreground = distance > BACKGROUND_DISTANCE  # (F, H, W)
    if foreground.mean() < MIN_OBJECT_FRACTION:
        return Detection(None, None, None, background_name, 0)
    colour = _voted_colour(video[foreground])
    per_frame = [_objects(mask) for mask in foreground]  # each: blobs, largest first
    objects = int(np.rint(np.median([len(blobs) for blobs in per_frame])))
    found = [blobs[0] for blobs in per_frame if blobs]
    if len(found) < len(per_frame) // 2:
        return Detection(colour, None, None, background_name, objects)
    return Detection(colour, _classify_shape(found), _classify_motion(found, frames.shape[1:3]), background_name,
                     objects)


# ----------------------------------------------------------------------------------------------------- pieces

@dataclass(frozen=True)
class _Blob:
    centre_x: float  # pixels
    centre_y: float
    area: float  # pixels
    fill: float  # area / bounding-box area
    touches_border: bool


def _objects(mask: np.ndarray) -> list[_Blob]:
    """The object-sized connected components of one frame's foreground mask, largest first: at least
    ``MIN_OBJECT_FRACTION`` of the frame and ``COMPANION_AREA`` of the largest component."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]  # (count - 1,) without the background label 0
    smallest = max(MIN_OBJECT_FRACTION * mask.size, COMPANION_AREA * areas.max())
    blobs = []
    for label in 1 + np.argsort(-areas, kind="stable"):
        left, top, width, height, area = stats[label]
        if area < smallest:
            break
        touches = left == 0 or top == 0 or left + width == mask.shape[1] or top + height == mask.shape[0]
        blobs.append(_Blob(float(centroids[label][0]), float(centroids[label][1]), float(area),
                           area / (width * height), bool(touches)))
    return blobs


def _classify_shape(blobs: list[_Blob]) -> str | None:
    whole = [blob.fill for blob in blobs if not blob.touches_border] or [blob.fill for blob in blobs]
    fill = float(np.median(whole))
    if fill >= 0.89:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def _classify_motion(blobs: list[_Blob], frame_hw: tuple[int, int]) -> str | None:
    height, width = frame_hw
    xs = _smooth(np.array([blob.centre_x for blob in blobs]) / width)  # (T,)
    ys = _smooth(np.array([blob.centre_y for blob in blobs]) / height)  # (T,)
    areas = np.array([blob.area for blob in blobs])  # (T,)
    ends = max(1, len(blobs) // 6)  # average a few frames at each end against jitter
    growth = areas[-ends:].mean() / max(areas[:ends].mean(), 1.0)
    if growth >= GROWTH_RATIO:
        return "growing"
    net_x = xs[-ends:].mean() - xs[:ends].mean()
    net_y = ys[-ends:].mean() - ys[:ends].mean()  # image y grows downwards
    vertical_path = np.abs(np.diff(ys)).sum()
    if vertical_path > 0.3 and vertical_path > 2.0 * max(abs(net_y), 0.1):
        return "bouncing"
    if max(abs(net_x), abs(net_y)) < MIN_TRAVEL:
        return None
    if abs(net_x) >= abs(net_y):
        return "moving right" if net_x > 0 else "moving left"
    return "moving down" if net_y > 0 else "moving up"


def _match_background(video: np.ndarray) -> tuple[str, np.ndarray]:
    """Best-matching background name and every pixel's RGB distance to it, (F, H, W)."""
    height, width = video.shape[1:3]
    best_name, best_distance, best_score = "", np.empty(0), np.inf
    for name in BACKGROUNDS:
        distance = np.linalg.norm(video - background_image(name, height, width), axis=-1)  # (F, H, W)
        score = float(np.median(distance))
        if score < best_score:
            best_name, best_distance, best_score = name, distance, score
    return best_name, best_distance


def _voted_colour(pixels: np.ndarray) -> str | None:
    """The object colour that most of ``pixels`` (P, 3) lie within ``PALETTE_DISTANCE`` of; None if none do."""
    palette = np.asarray(list(OBJECT_RGB.values()), np.float32)  # (C, 3)
    distances = np.linalg.norm(pixels[:, None] - palette[None], axis=-1)  # (P, C)
    votes = np.bincount(distances.argmin(1)[distances.min(1) < PALETTE_DISTANCE], minlength=len(palette))  # (C,)
    return list(OBJECT_RGB)[int(votes.argmax())] if votes.any() else None


def _smooth(values: np.ndarray) -> np.ndarray:
    if len(values) < 3:
        return values
    padded = np.concatenate([values[:1], values, values[-1:]])  # (T + 2,)
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0  # (T,)


