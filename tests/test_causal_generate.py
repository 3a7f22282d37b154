"""`vidprune generate --causal` end to end, the streaming writer and decoder, and Self-Forcing-style checkpoints."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_cli_generate import assert_refused  # the tests folder is on sys.path under pytest
from typer.testing import CliRunner

from vidgen_prune.causal.config import CausalConfig
from vidgen_prune.causal.decode import StreamingDecoder
from vidgen_prune.causal.sampler import generate_causal
from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig

runner = CliRunner()
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--chunk-frames", "1", "--chunk-steps", "2"]


def run(*args):
    return runner.invoke(app, ["generate", "--causal", *map(str, args)])


def test_causal_generate_streams_an_mp4_and_records_the_chunks(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("--prompt", "a red circle moving left", "--model", tiny_model_dir, *SMALL, "--kv-window", "2",
                 "--sink-frames", "1", "--method", "dense", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    frames = list(iio.imiter(out))
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["causal"]["chunk_frames"] == 1 and meta["causal"]["chunk_steps"] == 2
    assert meta["causal"]["kv_window"] == 2 and meta["causal"]["sink_frames"] == 1
    assert meta["causal"]["chunk_latent_frames"] == [1, 1, 1]
    timings = meta["timings"]
    assert len(timings["chunk_s"]) == 3 and 0 < timings["first_chunk_s"] <= timings["total_s"]
    assert timings["transformer_calls"] == 3 * 2 + 2  # two steps per chunk, a context pass after all but the last
    assert meta["generate"]["steps"] == 2 and meta["prune"]["method"] == "dense"
    assert json.loads(result.stdout)["timings"]["chunk_s"] == timings["chunk_s"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--chunk-frames", "0"], "--chunk-frames must be at least 1"),
        (["--chunk-steps", "0"], "--chunk-steps must be at least 1"),
        (["--sink-frames", "-1"], "--sink-frames must be at least 0"),
        (["--kv-window", "1", "--sink-frames", "1"], "--kv-window must hold the sink frames plus one chunk"),
        (["--steps", "4"], "give --chunk-steps instead of --steps"),
        (["--method", "tape", "--reduction", "0.85"], "tape: reduction 0.85 (peak 0.95) cannot be reached"),
        (["--method", "router"], "was trained for a 8-block model"),
        (["--vae-tiling"], "--causal does not take --vae-tiling"),
        (["--compile"], "--causal does not take --compile"),
        (["--transformer-weights", "/no/such/file.pt"], "--transformer-weights file not found"),
    ],
)
def test_bad_causal_input_is_one_line_exit_2_before_loading(tiny_model_dir, tmp_path, monkeypatch, flags, fragment):
    import vidgen_prune.engine

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a pipeline for bad input")

    monkeypatch.setattr(vidgen_prune.engine, "load_pipeline", no_loading)
    out = tmp_path / "clip.mp4"
    assert_refused(run("--prompt", "a red circle", "--model", tiny_model_dir, *SMALL, "--out", out, *flags), out,
                   fragment)


def test_causal_generate_prunes_inside_the_chunks(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("--prompt", "a red circle moving left", "--model", tiny_model_dir, *SMALL, "--method", "tape",
                 "--reduction", "0.3", "--reselect-every", "3", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prune"]["method"] == "tape" and meta["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.02)
    assert json.loads(result.stdout)["kept_fraction"] == meta["achieved_kept_fraction"]
    assert len(list(iio.imiter(out))) == 9


def test_a_model_causal_generation_cannot_run_is_refused_before_loading(tmp_path, monkeypatch):
    from dummies import wan_two_experts

    import vidgen_prune.engine

    folder = tmp_path / "a14b"
    wan_two_experts().save_pretrained(folder)
    monkeypatch.setattr(vidgen_prune.engine, "load_pipeline", lambda *a, **k: pytest.fail("loaded for bad input"))
    out = tmp_path / "clip.mp4"
    assert_refused(run("--prompt", "x", "--model", folder, *SMALL, "--method", "dense", "--out", out), out,
                   "--causal runs one Wan2.1-style text-to-video transformer")


def test_causal_batch_mode_writes_every_item_and_resumes(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle moving left", "seed": 3}\n'
                       '{"prompt": "a blue square moving up", "overrides": {"method": "evit", "reduction": 0.2}}\n')
    out_dir = tmp_path / "out"
    args = ["--prompts", prompts, "--out-dir", out_dir, "--model", tiny_model_dir, *SMALL, "--reselect-every", "3"]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["generated"] == ["0000-a-red-circle-moving-left", "0001-a-blue-square-moving-up"]
    first = json.loads((out_dir / "0000-a-red-circle-moving-left.json").read_text())
    second = json.loads((out_dir / "0001-a-blue-square-moving-up.json").read_text())
    assert first["seed"] == 3 and first["prune"]["method"] == "tape" and first["causal"]["chunks"] == 3
    assert second["prune"]["method"] == "evit" and second["achieved_kept_fraction"] == pytest.approx(0.8, abs=0.03)
    assert len(list(iio.imiter(out_dir / "0001-a-blue-square-moving-up.mp4"))) == 9
    again = run(*args, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["finished_before"] == 2
    changed = run(*args[:-2], "--chunk-steps", "3", "--reselect-every", "3")  # another causal setting: not resumed
    assert changed.exit_code == 2 and "made with another prompt or settings" in changed.output


def test_a_batch_line_that_sets_steps_is_refused_with_its_line(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a red circle", "overrides": {"steps": 3}}\n')
    result = run("--prompts", prompts, "--out-dir", tmp_path / "out", "--model", tiny_model_dir, *SMALL)
    assert result.exit_code == 2 and "line 2: --causal denoises each chunk separately" in result.output
    assert not (tmp_path / "out").exists()


def test_causal_flags_without_causal_are_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = runner.invoke(app, ["generate", "--prompt", "x", "--model", str(tiny_model_dir), "--kv-window", "3",
                                 "--out", str(out)])
    assert_refused(result, out, "--kv-window only apply with --causal")


# ------------------------------------------------------------------------------------------ streaming pieces

def test_streaming_decode_equals_one_decode_of_the_whole_latent(tiny_pipe):
    vae = tiny_pipe.vae
    latents = torch.randn(1, vae.config.z_dim, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        whole = vae.decode(latents * std + mean, return_dict=False)[0][0]  # (3, 13, H, W)
    expected = ((whole.permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    decoder = StreamingDecoder(vae)
    pieces = [decoder.decode(latents[:, :, :1]), decoder.decode(latents[:, :, 1:3]), decoder.decode(latents[:, :, 3:])]
    assert [len(p) for p in pieces] == [1, 8, 4]
    np.testing.assert_array_equal(np.concatenate(pieces), expected)


def test_causal_frames_are_the_frames_streamed(tiny_pipe):
    streamed = []
    gen = GenerateConfig(prompt="a blue square", frames=9, height=32, width=32, max_sequence_length=8)
    result = generate_causal(tiny_pipe, gen, CausalConfig(chunk_frames=2, chunk_steps=2),
                             on_frames=lambda chunk, frames: streamed.append((chunk, len(frames))))
    assert streamed == [(0, 5), (1, 4)]  # latent frames 0-1 → video frames 0-4; latent frame 2 → 5-8
    assert result.frames.shape == (9, 32, 32, 3) and result.chunk_frames == [2, 1]
    again = generate_causal(tiny_pipe, gen, CausalConfig(chunk_frames=2, chunk_steps=2))
    np.testing.assert_array_equal(again.frames, result.frames)  # seeded: the same video


def test_a_streamed_mp4_reaches_its_path_only_when_finished(tmp_path):
    from vidgen_prune.outputs import Mp4Encoder, OutputError, atomic_files

    out = tmp_path / "video.mp4"
    frames = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    with atomic_files(out) as (partial,), Mp4Encoder(partial, fps=8) as video:
        video.append(frames[:1])
        assert not out.exists()  # mid-stream: nothing at the target
        video.append(frames[1:])
    assert len(list(iio.imiter(out))) == 4 and [p.name for p in tmp_path.iterdir()] == ["video.mp4"]

    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError), atomic_files(failed) as (partial,), Mp4Encoder(partial, fps=8) as video:
        video.append(frames)
        raise RuntimeError("the sampler failed mid-video")
    with pytest.raises(OutputError, match="no frames"), atomic_files(failed) as (partial,), Mp4Encoder(partial, 8):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


# ---------------------------------------------------------------------------------------------- checkpoints

# diffusers → original Wan names, written out by hand (diffusers' convert_wan_to_diffusers, read backwards), so the
# test does not reuse the rules it checks
TO_ORIGINAL = [
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.to_out.0", "self_attn.o"), ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."),
    ("attn1.norm_", "self_attn.norm_"), ("attn2.norm_", "cross_attn.norm_"),
    ("norm2", "norm3"), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def original_names(state: dict) -> dict:
    renamed = {}
    for key, value in state.items():
        for new, old in TO_ORIGINAL:
            key = key.replace(new, old)
        if key == "scale_shift_table":
            key = "head.modulation"
        renamed[key.replace(".scale_shift_table", ".modulation")] = value
    return renamed


@pytest.fixture
def self_forcing_checkpoint(tiny_model_dir, tmp_path):
    """A Self-Forcing-style file: {"generator_ema": {"model.<original Wan name>": tensor}}, from other weights."""
    from diffusers import WanTransformer3DModel

    config = WanTransformer3DModel.load_config(tiny_model_dir, subfolder="transformer")
    torch.manual_seed(1)
    source = WanTransformer3DModel.from_config(config)
    state = {f"model.{key}": value for key, value in original_names(source.state_dict()).items()}
    assert "model.blocks.0.self_attn.q.weight" in state and "model.blocks.0.norm3.weight" in state
    path = tmp_path / "self_forcing.pt"
    torch.save({"generator_ema": state, "generator": {}}, path)
    return path, source


def test_a_checkpoint_with_the_original_wan_names_loads_into_the_transformer(tiny_model_dir, self_forcing_checkpoint):
    from vidgen_prune.causal.pipeline import load_causal_pipeline, read_transformer_weights

    path, source = self_forcing_checkpoint
    weights = read_transformer_weights(str(path), str(tiny_model_dir))
    pipe = load_causal_pipeline(str(tiny_model_dir), transformer_weights=weights)
    loaded = pipe.transformer.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    assert all(torch.equal(loaded[key], value) for key, value in source.state_dict().items())


@pytest.mark.parametrize("damage", ["unknown", "missing", "shape"])
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tiny_model_dir, self_forcing_checkpoint, tmp_path,
                                                                damage):
    path, _ = self_forcing_checkpoint
    state = torch.load(path, weights_only=True)["generator_ema"]
    if damage == "unknown":
        state["model.blocks.0.self_attn.extra.weight"] = torch.zeros(1)
    elif damage == "missing":
        del state["model.blocks.1.ffn.2.bias"]
    else:
        state["model.head.head.bias"] = torch.zeros(3)
    torch.save({"generator_ema": state}, path)
    out = tmp_path / "clip.mp4"
    result = run("--prompt", "x", "--model", tiny_model_dir, *SMALL, "--transformer-weights", path, "--out", out)
    expected = {"unknown": "1 unknown keys (blocks.0.self_attn.extra.weight)",
                "missing": "1 missing parameters (blocks.1.ffn.net.2.bias)", "shape": "1 shape mismatches"}[damage]
    assert_refused(result, out, expected)


def test_visualize_masks_causal_draws_each_chunks_mask_over_its_frames(tiny_model_dir, tmp_path):
    png = tmp_path / "masks.png"
    args = ["visualize-masks", "--causal", "--model", str(tiny_model_dir), "--prompt", "a red circle", *SMALL,
            "--method", "tape", "--compare", "evit", "--reduction", "0.3", "--layer", "2", "--json", "--out", str(png)]
    result = runner.invoke(app, [*args, "--step", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [view["method"] for view in report["methods"]] == ["tape", "evit"]
    for view in report["methods"]:
        assert view["kept_fraction"] == pytest.approx(0.7, abs=0.02) and 0 < view["skipped_fraction"] < 1
        assert 0 <= view["adjacent_frame_iou"] <= 1  # latent frames 0-1 and 1-2: masks of different chunks
    assert png.read_bytes()[:4] == b"\x89PNG" and len(list(iio.imiter(png.with_suffix(".mp4")))) == 9
    refused = runner.invoke(app, [*args[:-1], str(tmp_path / "other.png"), "--step", "2"])
    assert refused.exit_code == 2 and "--step must be in [0, 2) for --chunk-steps 2" in refused.output
    assert not (tmp_path / "other.png").exists()
