"""The causal training module, a few steps: it writes a loadable transformer; the noise levels imitate generation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from vidgen_prune.causal.config import CausalConfig
from vidgen_prune.causal.pipeline import load_causal_pipeline
from vidgen_prune.causal.sampler import generate_causal
from vidgen_prune.config import GenerateConfig
from vidgen_prune.metrics.boundary import boundary_jump, chunk_first_frames
from vidgen_prune.tiny import EMBEDDED_MODEL_DIR, train_causal


def test_training_writes_a_causal_transformer_that_generates(tmp_path):
    out = tmp_path / "causal"
    train_causal.main(["--out", str(out), "--videos", "4", "--full-size-videos", "2", "--batch", "2",
                       "--full-size-batch", "1", "--full-size-every", "2", "--steps", "2", "--save-every", "1"])
    trained = WanTransformer3DModel.from_pretrained(out)
    start = WanTransformer3DModel.from_pretrained(EMBEDDED_MODEL_DIR / "transformer")
    assert any(not a.equal(b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    with open(out / "train_log.csv") as handle:
        assert {row["stage"] for row in csv.DictReader(handle)} == {"causal64", "causal128"}
    assert json.loads((out / "train_summary.json").read_text())["args"]["chunk_frames"] == 1
    assert "_name_or_path" not in (out / "config.json").read_text()  # no trace of the folder read from
    assert all(type(block.attn1.processor).__name__ == "WanAttnProcessor" for block in trained.blocks)
    pipe = load_causal_pipeline(None, causal_transformer=str(out))  # the embedded text encoder and VAE around it
    gen = GenerateConfig(prompt="a red circle moving left on a black background", frames=5, height=32, width=32,
                         max_sequence_length=16)
    assert generate_causal(pipe, gen, CausalConfig(chunk_frames=1, chunk_steps=1)).frames.shape == (5, 32, 32, 3)


def test_noise_levels_are_a_clean_prefix_then_independent_levels():
    sigma = train_causal.chunk_noise_levels(2000, 5, shift=3.0, generator=torch.Generator().manual_seed(0))
    clean = sigma == 0
    assert (clean.int().diff(dim=1) <= 0).all()  # once a chunk is noisy, every later one is
    assert (~clean).any(dim=1).all()  # at least the last chunk is a target
    prefix = clean.sum(dim=1)
    assert set(prefix.tolist()) == {0, 1, 2, 3, 4}
    assert abs(prefix.float().mean().item() - 2.0) < 0.15  # uniform over 0..4
    assert sigma[~clean].max() <= 1.0


def test_a_size_the_model_cannot_patch_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_causal.main(["--out", str(tmp_path / "out"), "--size", "40"])
    assert exit_info.value.code == 2 and "--size must be a positive multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_boundary_jump_separates_boundary_pairs_from_the_rest():
    starts = chunk_first_frames([1, 1, 1], temporal_factor=4)
    assert starts == [1, 5]  # latent frame 0 → video frame 0; latent frame 1 → frames 1-4; 2 → 5-8
    levels = np.array([0, 10, 11, 12, 13, 23, 24, 25, 26], dtype=np.float32) / 100  # jumps of 0.1 into 1 and 5
    video = np.broadcast_to(levels[:, None, None, None], (9, 4, 4, 3))
    jump = boundary_jump(video, starts)
    assert jump["boundary"] == pytest.approx(0.10) and jump["within"] == pytest.approx(0.01)
    assert jump["ratio"] == pytest.approx(10.0)
    smooth = np.broadcast_to((np.arange(9, dtype=np.float32) / 10)[:, None, None, None], (9, 4, 4, 3))
    assert boundary_jump(smooth, starts)["ratio"] == pytest.approx(1.0)
