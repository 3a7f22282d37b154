"""The slim-decoder distillation: a few steps on a tiny pipeline, and the shipped VAE's encoder is the trained one's."""

import csv
import json

import pytest
import torch
from diffusers import AutoencoderKLWan, WanPipeline
from safetensors.torch import load_file

from vidgen_prune.tiny import EMBEDDED_MODEL_DIR, distill_decoder
from vidgen_prune.tiny.pipeline import TinyConfig, build_pipeline

# encoder_digest of the VAE the shipped transformer was trained with (commit 2418820, 16-wide decoder)
TRAINED_ENCODER_DIGEST = "42eb3cf3b5eb72f35c1fe754183d0233363e3a0b2f4253851d0b42c294fde3e2"
TINY_RUN = ["--decoder-base-dim", "4", "--size", "32", "--frames", "5", "--generation-steps", "1", "--videos", "2",
            "--generated", "1", "--validation", "1", "--steps", "3", "--batch", "2", "--save-every", "2",
            "--log-every", "1"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    build_pipeline(TinyConfig.for_tests(), seed=0).save_pretrained(folder)
    return folder


def test_distillation_trains_a_narrower_decoder_behind_the_teachers_encoder(teacher_dir, tmp_path):
    distill_decoder.main(["--teacher", str(teacher_dir), "--out", str(tmp_path), *TINY_RUN])
    teacher, student = WanPipeline.from_pretrained(teacher_dir).vae, WanPipeline.from_pretrained(tmp_path).vae
    assert student.config.decoder_base_dim == 4 and teacher.config.decoder_base_dim is None
    assert distill_decoder.encoder_digest(student) == distill_decoder.encoder_digest(teacher)
    assert student.config.latents_std == teacher.config.latents_std
    assert "_name_or_path" not in (tmp_path / "vae" / "config.json").read_text()  # no trace of the teacher's folder
    assert student.decoder.conv_out.weight.shape[1] == 4 < teacher.decoder.conv_out.weight.shape[1]
    # the decoder learned: the residual branches zeroed at the start are not zero any more
    assert student.decoder.up_blocks[-1].resnets[0].conv2.weight.abs().sum() > 0
    transformer = load_file(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    for name, value in WanPipeline.from_pretrained(teacher_dir).transformer.state_dict().items():
        assert value.equal(transformer[name])
    with open(tmp_path / "distill_log.csv") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["0", "1", "2"]
    summary = json.loads((tmp_path / "distill_summary.json").read_text())
    assert summary["encoder_digest"]["student"] == summary["encoder_digest"]["teacher"]
    assert set(summary["validation_psnr_db"]) == {"encoded", "generated"}


def test_moving_pixels_mark_the_object_not_the_background():
    frames = torch.full((1, 3, 5, 8, 8), -0.8)  # (N, 3, F, H, W), a flat dark background
    for index in range(5):
        frames[0, :, index, 2, index] = 0.9  # a bright pixel moving right along row 2
    moving = distill_decoder._moving_pixels(frames)  # (1, 1, 5, 8, 8)
    assert moving.sum() == 5 and all(moving[0, 0, index, 2, index] for index in range(5))


def test_a_bad_width_is_refused_before_loading_the_teacher(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        distill_decoder.main(["--teacher", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "not a pipeline folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill_decoder.main(["--teacher", str(EMBEDDED_MODEL_DIR), "--out", str(tmp_path / "out"),
                              "--decoder-base-dim", "0"])
    assert "--decoder-base-dim must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_shipped_vae_keeps_the_encoder_the_transformer_was_trained_on():
    vae = AutoencoderKLWan.from_pretrained(EMBEDDED_MODEL_DIR / "vae")
    assert distill_decoder.encoder_digest(vae) == TRAINED_ENCODER_DIGEST
    trained_on = json.loads((EMBEDDED_MODEL_DIR / "train_summary.json").read_text())["config"]
    assert vae.config.latents_mean == trained_on["latents_mean"]
    assert vae.config.latents_std == trained_on["latents_std"]
    assert vae.config.decoder_base_dim == TinyConfig().vae_decoder_base_dim < vae.config.base_dim


def test_a_run_continues_from_an_earlier_students_decoder(teacher_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    distill_decoder.main(["--teacher", str(teacher_dir), "--out", str(first), *TINY_RUN])
    with pytest.raises(SystemExit):  # an earlier decoder of another width is refused before any work
        distill_decoder.main(["--teacher", str(teacher_dir), "--out", str(second), "--init-from", str(first),
                              *TINY_RUN, "--decoder-base-dim", "2"])
    assert not second.exists()
    args = distill_decoder._parse_args(["--teacher", str(teacher_dir), "--out", str(second), "--init-from", str(first),
                                        *TINY_RUN])
    earlier = WanPipeline.from_pretrained(first).vae
    student = distill_decoder.build_student(WanPipeline.from_pretrained(teacher_dir).vae, args.decoder_base_dim)
    distill_decoder._continue_from(student, earlier)
    for name, value in earlier.state_dict().items():
        assert value.equal(student.state_dict()[name])
