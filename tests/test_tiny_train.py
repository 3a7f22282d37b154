"""The embedded model's training command, run for a handful of steps: it writes a loadable pipeline and continues."""

import csv
import json

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from vidgen_prune.tiny import train
from vidgen_prune.tiny.pipeline import TinyConfig, build_pipeline
from vidgen_prune.tiny.prompts import parse_caption
from vidgen_prune.tiny.synthetic import render_batch

TINY_RUN = ["--seed", "0", "--threads", "1", "--videos", "4", "--batch", "2", "--steps", "2", "--save-every", "1"]


def transformer_weights(folder):
    return load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")


def test_training_writes_a_pipeline_and_continues_from_it(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train.main(["--out", str(first), "--vae-steps", "2", "--vae-batch", "1", "--vae-crop", "16", *TINY_RUN])
    pipe = WanPipeline.from_pretrained(first)
    assert pipe.vae.config.latents_std != [1.0] * pipe.vae.config.z_dim  # measured on the encoded videos
    with open(first / "train_log.csv") as handle:
        stages = {row["stage"] for row in csv.DictReader(handle)}
    assert stages == {"vae", "transformer"}
    assert json.loads((first / "train_summary.json").read_text())["args"]["text_length"] == 16

    train.main(["--out", str(second), "--init-from", str(first), "--vae-steps", "0", "--size", "64",
                "--object-weight", "4", "--crop-from", "128", *TINY_RUN])
    continued = WanPipeline.from_pretrained(second)
    assert continued.vae.config.latents_std == pipe.vae.config.latents_std  # the kept VAE keeps its statistics
    before, after = transformer_weights(first), transformer_weights(second)
    assert before.keys() == after.keys()
    assert any(not before[name].equal(after[name]) for name in before)  # stage 3 went on training
    assert "_name_or_path" not in (second / "model_index.json").read_text()  # no trace of the folder read from


def test_fresh_transformer_keeps_the_trained_vae_and_starts_the_transformer_from_the_seed(tmp_path):
    trained = build_pipeline(TinyConfig(latents_mean=(0.5,) * 8, latents_std=(2.0,) * 8), seed=1)
    trained.save_pretrained(tmp_path)
    args = train._parse_args(["--out", str(tmp_path / "out"), "--init-from", str(tmp_path), "--fresh-transformer"])
    config, pipe = train._initial_pipeline(args)
    seeded = build_pipeline(TinyConfig(), seed=0)
    assert config.latents_std == (2.0,) * 8
    for name, value in pipe.vae.state_dict().items():
        assert value.equal(trained.vae.state_dict()[name])
    for name, value in pipe.transformer.state_dict().items():
        assert value.equal(seeded.transformer.state_dict()[name])


def test_latent_object_mask_follows_the_object_through_the_causal_frame_grouping():
    config = TinyConfig()
    spec = parse_caption("a red circle moving right on a striped background")
    video = render_batch([spec], seed=0, frames=17, height=64, width=64)  # (1, 17, 64, 64, 3)
    on_object = torch.from_numpy(train._on_object(video, [spec]))  # (1, 17, 64, 64)
    mask = train._latent_object_mask(on_object, config)  # (1, 5, 16, 16)
    assert mask.shape == (1, 5, 16, 16)
    # latent frame 0 is frame 0 alone; latent frame 1 covers frames 1-4
    assert mask[0, 0].equal(on_object[0, 0].reshape(16, 4, 16, 4).any(3).any(1))
    assert mask[0, 1].equal(on_object[0, 1:5].any(0).reshape(16, 4, 16, 4).any(3).any(1))
    columns = [frame.nonzero()[:, 1].float().mean().item() for frame in mask[0]]
    assert columns == sorted(columns) and columns[-1] > columns[0] + 3  # moving right


def test_a_training_size_the_model_cannot_patch_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out", str(tmp_path / "out"), "--size", "72"])
    assert exit_info.value.code == 2
    assert "--size must be a positive multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def latent_set_of(caption, size, seed=0):
    """A one-video _LatentSet whose latents are the latent-cell object mask itself, so a window's content can be
    checked against its cells; (1, 1, 5, size/4, size/4)."""
    spec = parse_caption(caption)
    video = render_batch([spec], seed=seed, frames=17, height=size, width=size)
    cells = train._latent_object_mask(torch.from_numpy(train._on_object(video, [spec])), TinyConfig())
    return train._LatentSet(torch.tensor([0]), cells[:, None].float(), cells)


@pytest.mark.parametrize("caption", ["a red circle moving right on a striped background",
                                     "a blue square growing on a black background",
                                     "a white triangle bouncing on a checkered background"])
def test_a_window_of_a_larger_video_always_holds_the_object(caption):
    videos = latent_set_of(caption, 128)  # 32x32 latent cells
    rng = np.random.default_rng(0)
    origins = set()
    for _ in range(50):
        latents, cells = videos.window(0, 16, rng)
        assert latents.shape == (1, 5, 16, 16) and cells.shape == (5, 16, 16)
        assert cells.any()
        assert latents[0].bool().equal(cells)  # the latents and the cells come from the same window
        origins.add(tuple(latents[0].nonzero()[0].tolist()))
    assert len(origins) > 5  # windows are drawn, not fixed


def test_crop_fraction_decides_which_batch_slots_are_windows():
    whole = latent_set_of("a red circle moving left on a gray background", 64)
    large = latent_set_of("a green square moving up on a purple background", 128)
    large = large._replace(caption_index=torch.tensor([1]), latents=large.latents + 10.0)  # tell the sources apart
    args = train._parse_args(["--out", "unused", "--size", "64", "--crop-from", "128", "--batch", "64",
                              "--crop-fraction", "0.25"])
    caption_index, x0, cells = train._draw_batch(whole, large, np.random.default_rng(0), args)
    assert x0.shape == (64, 1, 5, 16, 16) and cells.shape == (64, 5, 16, 16)
    from_windows = caption_index == 1
    assert 8 <= int(from_windows.sum()) <= 24  # about a quarter of 64
    assert (x0[from_windows] >= 10.0).all() and (x0[~from_windows] <= 1.0).all()
    assert whole.latents.max() <= 1.0  # drawing a batch leaves the cached latents alone
    args.crop_fraction = 0.0
    caption_index, _, _ = train._draw_batch(whole, large, np.random.default_rng(0), args)
    assert not caption_index.any()


@pytest.mark.parametrize("flags", [["--crop-from", "64"], ["--crop-from", "136"], ["--crop-from", "128",
                                                                                    "--crop-fraction", "1.5"]])
def test_crop_settings_that_cannot_work_are_refused(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out", str(tmp_path / "out"), "--size", "64", *flags])
    assert exit_info.value.code == 2
    assert "--crop-" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
