"""The caption grammar of the tiny model's world, its vocabulary, and the fixed held-out prompt list.

A caption reads ``a <colour> <shape> <motion> on a <background> background``, for example
``a red circle moving left on a gray background``. Background words are disjoint from object colour words so
that a caption has exactly one reading. The held-out prompts are attribute combinations never rendered for
training; benchmarks and ``vidgen_prune.tiny.evaluate`` use them as unseen prompts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# "bouncing" (vertical bounces) and "growing" (radius increases in place) are the non-linear motions
MOTIONS: tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down", "bouncing", "growing")
BACKGROUNDS: tuple[str, ...] = ("black", "gray", "purple", "striped", "checkered")
TEXTURED_BACKGROUNDS: tuple[str, ...] = ("striped", "checkered")

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"


@dataclass(frozen=True)
class VideoSpec:
    """The four attributes a caption names."""

    colour: str
    shape: str
    motion: str
    background: str

    def __post_init__(self) -> None:
        for value, allowed in (
            (self.colour, COLOURS),
            (self.shape, SHAPES),
            (self.motion, MOTIONS),
            (self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion} on a {self.background} background"


_CAPTION_PATTERN = re.compile(
    r"^a (?P<colour>{}) (?P<shape>{}) (?P<motion>{}) on a (?P<background>{}) background$".format(
        *("|".join(map(re.escape, words)) for words in (COLOURS, SHAPES, MOTIONS, BACKGROUNDS))
    )
)


def parse_caption(caption: str) -> VideoSpec:
    """Parse a caption of the grammar back into its attributes; raises ``ValueError`` for anything else."""
    match = _CAPTION_PATTERN.match(" ".join(caption.strip().lower().split()))
    if match is None:
        raise ValueError(f"caption does not follow the grammar: {caption!r}")
    return VideoSpec(**match.groupdict())


def vocabulary() -> dict[str, int]:
    """Word-level vocabulary: special tokens first, then every word the grammar can produce."""
    words = ["a", "on", "background"]
    for phrase in COLOURS + SHAPES + MOTIONS + BACKGROUNDS:
        words.extend(phrase.split())
    ordered = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN] + list(dict.fromkeys(words))
    return {word: index for index, word in enumerate(ordered)}


def all_specs() -> list[VideoSpec]:
    return [VideoSpec(*combo) for combo in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS)]


# 45 of the 450 combinations, fixed as text so that a grammar change cannot silently alter the benchmark set.
# Chosen so that every single attribute value and every pair of attribute values still occurs in training.
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a red circle moving left on a black background",
    "a red circle growing on a striped background",
    "a red square moving right on a purple background",
    "a red square bouncing on a checkered background",
    "a red triangle moving up on a gray background",
    "a red triangle moving down on a black background",
    "a red triangle growing on a checkered background",
    "a red circle moving down on a purple background",
    "a red square moving up on a striped background",
    "a green circle moving right on a gray background",
    "a green circle bouncing on a black background",
    "a green square moving left on a checkered background",
    "a green square moving down on a gray background",
    "a green triangle moving right on a striped background",
    "a green triangle growing on a purple background",
    "a green circle moving up on a checkered background",
    "a green square growing on a black background",
    "a green triangle bouncing on a gray background",
    "a blue circle moving up on a purple background",
    "a blue circle growing on a gray background",
    "a blue square moving right on a black background",
    "a blue square bouncing on a striped background",
    "a blue triangle moving left on a purple background",
    "a blue triangle moving down on a checkered background",
    "a blue circle moving left on a striped background",
    "a blue square moving down on a purple background",
    "a blue triangle growing on a black background",
    "a yellow circle moving down on a striped background",
    "a yellow circle bouncing on a purple background",
    "a yellow square moving left on a gray background",
    "a yellow square growing on a checkered background",
    "a yellow triangle moving up on a black background",
    "a yellow triangle bouncing on a striped background",
    "a yellow circle moving right on a checkered background",
    "a yellow square moving up on a purple background",
    "a yellow triangle moving left on a gray background",
    "a white circle moving up on a gray background",
    "a white circle moving down on a checkered background",
    "a white square moving left on a striped background",
    "a white square growing on a purple background",
    "a white triangle moving right on a gray background",
    "a white triangle bouncing on a checkered background",
    "a white circle growing on a black background",
    "a white square bouncing on a black background",
    "a white triangle moving down on a striped background",
)


def training_specs() -> list[VideoSpec]:
    """Every combination of the grammar except the held-out ones."""
    held_out = set(HELD_OUT_PROMPTS)
    return [spec for spec in all_specs() if spec.caption not in held_out]
