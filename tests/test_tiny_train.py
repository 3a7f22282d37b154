"""The embedded model's training command, run for a handful of steps: it writes a loadable pipeline and continues."""

import csv
import json

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
                "--object-weight", "4", *TINY_RUN])
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
