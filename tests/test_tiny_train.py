"""The embedded model's training command, run for a handful of steps: it writes a loadable pipeline and continues."""

import csv
import json

from diffusers import WanPipeline
from safetensors.torch import load_file

from vidgen_prune.tiny import train

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

    train.main(["--out", str(second), "--init-from", str(first), "--vae-steps", "0", *TINY_RUN])
    continued = WanPipeline.from_pretrained(second)
    assert continued.vae.config.latents_std == pipe.vae.config.latents_std  # the kept VAE keeps its statistics
    before, after = transformer_weights(first), transformer_weights(second)
    assert before.keys() == after.keys()
    assert any(not before[name].equal(after[name]) for name in before)  # stage 3 went on training
    assert "_name_or_path" not in (second / "model_index.json").read_text()  # no trace of the folder read from
