"""`vidprune generate` end to end: an MP4 with the right frames and a sidecar; bad input refused up front."""

from __future__ import annotations

import json
import os

import imageio.v3 as iio
import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune.cli import app

runner = CliRunner()
SMALL = ["--steps", "2", "--frames", "9", "--height", "64", "--width", "64"]


def run(*args):
    return runner.invoke(app, ["generate", *map(str, args)])


def test_generate_writes_a_decodable_mp4_and_sidecar(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("--prompt", "a red circle moving left", "--model", tiny_model_dir, "--method", "tape",
                 "--reduction", "0.3", "--reselect-every", "3", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    frames = list(iio.imiter(out))
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prune"]["method"] == "tape" and meta["prune"]["reduction"] == 0.3
    assert meta["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.03)
    assert meta["tokens_per_forward"] == 3 * 8 * 8
    assert len(meta["timings"]["step_s"]) == 2
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize(("flags", "title"), [(["--method", "dense"], "dense →"),
                                              (["--method", "stavit", "--restore", "similar"],
                                               "stavit at reduction 0.3, restore similar →")])
def test_the_printed_title_names_what_ran(tiny_model_dir, tmp_path, flags, title):
    result = run("--prompt", "a red circle moving left", "--model", tiny_model_dir, *flags, *SMALL,
                 "--out", tmp_path / "clip.mp4")
    assert result.exit_code == 0, result.output
    assert title in " ".join(result.output.split())  # the table may wrap the title


@pytest.mark.parametrize(("preset", "text_positions"), [([], 512), (["--preset", "tiny-wan"], 16)])
def test_the_presets_text_length_reaches_the_prompt_encoder(tiny_model_dir, tmp_path, monkeypatch, preset,
                                                            text_positions):
    from diffusers import WanPipeline

    seen = []
    encode_prompt = WanPipeline.encode_prompt

    def recording(self, *args, **kwargs):
        seen.append(kwargs["max_sequence_length"])
        return encode_prompt(self, *args, **kwargs)

    monkeypatch.setattr(WanPipeline, "encode_prompt", recording)
    result = run("--prompt", "a red circle moving left", "--model", tiny_model_dir, *preset, *SMALL,
                 "--out", tmp_path / "clip.mp4")
    assert result.exit_code == 0, result.output
    assert seen == [text_positions]  # an unknown model gets Wan's 512; the embedded model's preset says 16


def assert_refused(result, out, fragment: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--reduction", "0.95"], "--reduction must be in [0, 0.95)"),
        (["--reduction", "-0.1"], "--reduction must be in [0, 0.95)"),
        (["--frames", "10"], "--frames must be 4k+1"),
        (["--height", "100"], "Wan: --height must be a multiple of 16"),
        (["--width", "72"], "Wan: --width must be a multiple of 16"),
        (["--method", "nope"], "choose from dense, tape, tape-s, tape-r, tape-t, evit"),
        (["--schedule", "zigzag"], "unknown schedule"),
        (["--model", "/no/such/model/folder"], "--model folder not found"),
        (["--preset", "/no/such/preset.yaml"], "preset not found"),
        (["--reduction", "0.9", "--reselect-every", "3"], "cannot be reached"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tiny_model_dir, tmp_path, flags, fragment):
    out = tmp_path / "clip.mp4"
    args = ["--prompt", "a red circle", "--model", tiny_model_dir, *SMALL, "--out", out, *flags]
    if "--model" in flags:
        args = args[:2] + args[4:]
    assert_refused(run(*args), out, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(tmp_path):
    out = tmp_path / "clip.mp4"
    assert_refused(run("--prompt", "x", "--device", "cuda", "--out", out), out, "CUDA is not available")


@pytest.mark.parametrize("content", ["generate: [unclosed", "generate:\n  frames: 9\n  colour: red\n", "- a list"])
def test_unreadable_preset_is_refused(tmp_path, content):
    preset = tmp_path / "bad.yaml"
    preset.write_text(content)
    out = tmp_path / "clip.mp4"
    result = run("--prompt", "x", "--preset", preset, "--out", out)
    assert_refused(result, out, "preset")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_refused_as_user(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out = locked / "clip.mp4"
    assert_refused(run("--prompt", "x", "--out", out), out, "not writable")


def test_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "clip.mp4"
    assert_refused(run("--prompt", "x", "--out", out), out, "not writable")
