"""The tiny model's world: caption grammar, procedural videos, and the checker that reads them back."""

import itertools

import numpy as np
import pytest

from vidgen_prune.tiny.checker import detect, score_video
from vidgen_prune.tiny.prompts import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PROMPTS,
    MOTIONS,
    SHAPES,
    TEXTURED_BACKGROUNDS,
    VideoSpec,
    all_specs,
    parse_caption,
    training_specs,
    vocabulary,
)
from vidgen_prune.tiny.synthetic import background_image, render_batch, render_video


def test_parse_caption_round_trips_every_spec():
    for spec in all_specs():
        assert parse_caption(spec.caption) == spec


def test_parse_caption_rejects_text_outside_the_grammar():
    for caption in ("a red circle", "a pink circle moving left on a gray background", "a red circle moving left"):
        with pytest.raises(ValueError):
            parse_caption(caption)


def test_vocabulary_covers_every_caption_word():
    words = vocabulary()
    assert all(word in words for spec in all_specs() for word in spec.caption.split())
    assert sorted(words.values()) == list(range(len(words)))


def test_held_out_prompts_are_valid_unseen_and_cover_every_attribute_pair_in_training():
    assert len(HELD_OUT_PROMPTS) >= 40 and len(set(HELD_OUT_PROMPTS)) == len(HELD_OUT_PROMPTS)
    held_out = {parse_caption(prompt) for prompt in HELD_OUT_PROMPTS}
    train = training_specs()
    assert held_out.isdisjoint(train)
    assert len(train) + len(held_out) == len(all_specs())
    fields = ("colour", "shape", "motion", "background")
    for first, second in itertools.combinations(fields, 2):
        pairs = {(getattr(spec, first), getattr(spec, second)) for spec in train}
        assert len(pairs) == len({(getattr(s, first), getattr(s, second)) for s in all_specs()})


def test_world_has_the_required_variety():
    assert set(SHAPES) == {"circle", "square", "triangle"}
    assert {"moving left", "moving right", "moving up", "moving down"} < set(MOTIONS)
    assert {"bouncing", "growing"} <= set(MOTIONS)
    assert set(TEXTURED_BACKGROUNDS) < set(BACKGROUNDS) and len(COLOURS) >= 4


def test_rendering_is_seeded():
    spec = VideoSpec("red", "circle", "moving left", "striped")
    first = render_batch([spec, spec], seed=3, frames=9, height=64, width=64)
    again = render_batch([spec, spec], seed=3, frames=9, height=64, width=64)
    other = render_batch([spec, spec], seed=4, frames=9, height=64, width=64)
    assert first.shape == (2, 9, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])  # the geometry is drawn per video


def test_textured_background_is_drawn_identically_in_every_frame():
    video = render_video(VideoSpec("white", "square", "moving right", "checkered"), np.random.default_rng(0), 17,
                         128, 128)
    background = np.rint(background_image("checkered", 128, 128))  # (H, W, 3)
    assert len(np.unique(background.reshape(-1, 3), axis=0)) >= 2  # really textured
    off_background = np.abs(video - background).max(axis=-1) > 1  # (F, H, W)
    assert (off_background.mean(axis=(1, 2)) < 0.1).all()  # only the object differs, in every frame
    assert off_background.any(axis=(1, 2)).all()  # and the object is there


def test_checker_reads_rendered_training_videos():
    rng = np.random.default_rng(0)
    specs = training_specs()
    picked = [specs[i] for i in rng.choice(len(specs), size=60, replace=False)]
    scores = [score_video(render_video(spec, rng, 17, 128, 128), spec.caption) for spec in picked]
    for attribute in ("colour", "shape", "motion", "background", "count"):
        accuracy = np.mean([score[attribute] for score in scores])
        assert accuracy >= 0.95, f"{attribute}: {accuracy:.2f}"


def test_checker_flags_a_mismatched_caption():
    spec = VideoSpec("green", "triangle", "moving up", "black")
    video = render_video(spec, np.random.default_rng(1), 17, 96, 96)
    assert detect(video).motion == "moving up"
    wrong = score_video(video, "a red square moving down on a striped background")
    assert wrong == {"colour": False, "shape": False, "motion": False, "background": False, "count": True}


def test_checker_counts_the_copies_of_a_tiled_scene():
    """A model trained small and run large can repeat its scene in a 2 x 2 grid: right colour, shape and motion,
    four objects where the caption names one."""
    spec = VideoSpec("red", "circle", "moving right", "black")
    quarter = render_video(spec, np.random.default_rng(2), 17, 64, 64)  # (F, 64, 64, 3)
    tiled = np.tile(quarter, (1, 2, 2, 1))  # (F, 128, 128, 3)
    assert detect(quarter).objects == 1
    scores = score_video(tiled, spec.caption)
    assert detect(tiled).objects == 4 and not scores["count"]
    assert scores["colour"] and scores["motion"]


def test_checker_finds_nothing_on_an_empty_background():
    empty = np.full((9, 64, 64, 3), 120, dtype=np.uint8)  # plain gray, no object
    seen = detect(empty)
    assert seen.background == "gray" and seen.colour is None and seen.motion is None


def test_checker_reads_the_object_colour_over_a_misdrawn_texture():
    """A background drawn with its texture out of phase is off-background almost everywhere; the object's colour is
    still the one read, and the background is still the mistake that gets reported."""
    spec = VideoSpec("blue", "circle", "moving left", "checkered")
    video = render_video(spec, np.random.default_rng(3), 17, 128, 128).astype(np.float32)  # (F, H, W, 3)
    background = background_image("checkered", 128, 128)  # (H, W, 3)
    on_object = np.abs(video - background).max(axis=-1, keepdims=True) > 8  # (F, H, W, 1)
    shifted = np.roll(background, 8, axis=(0, 1))  # half a checker square off in both directions
    misdrawn = np.where(on_object, video, shifted).astype(np.uint8)
    seen = detect(misdrawn)
    assert seen.colour == "blue"
    assert np.mean(np.median(misdrawn, axis=0) != background) > 0.3  # the texture really is wrong
    wrong_colour = np.where(on_object, np.array([40, 200, 60], np.float32), shifted).astype(np.uint8)
    assert detect(wrong_colour).colour == "green"
