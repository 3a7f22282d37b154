"""A router for causal generation: teacher trajectories of the causal model's own chunks, replayed exactly, trained
from the CLI and used by `generate --causal --method router`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vidgen_prune.causal.config import CausalConfig
from vidgen_prune.causal.trajectories import collect_causal_trajectories
from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.pruning import make_pruner
from vidgen_prune.pruning.hooks import apply_pruner, remove_pruner

SMALL = ["--frames", "9", "--height", "64", "--width", "64", "--chunk-frames", "1", "--chunk-steps", "2"]


@torch.no_grad()
def test_every_call_replays_to_the_teachers_velocity_with_the_cache_it_had(tiny_pipe):
    """Dense replay of each recorded call (its cache refilled from the recorded context passes, a 2-frame window with
    a sink) gives the dense velocity: what the distillation target is matched against is exactly that call."""
    causal = CausalConfig(chunk_frames=1, chunk_steps=2, kv_window=2, sink_frames=1)
    gen = GenerateConfig(prompt="-", frames=13, height=32, width=32, guidance=4.0, max_sequence_length=8)
    prompts = ("a red circle moving left", "a blue square moving up")
    trajectories = collect_causal_trajectories(tiny_pipe, prompts, gen, causal, seed=0, on_prompt=lambda done: None)
    assert trajectories.count == 4 * 2 + 3 and sum(call.context for call in trajectories.calls) == 3
    transformer = tiny_pipe.transformer
    pruner = make_pruner(PruneConfig())
    controller = apply_pruner(transformer, pruner, kernels="torch")
    try:
        with trajectories.session(transformer, controller):
            for index in range(trajectories.count):
                velocity, target = trajectories.replay(transformer, controller, pruner, [1, 0], index)
                assert velocity.shape[0] == 4  # two prompts × both guidance passes
                torch.testing.assert_close(velocity, target, atol=1e-5, rtol=0)
    finally:
        remove_pruner(transformer)


def run_train(*args):
    return CliRunner().invoke(app, ["train-router", *map(str, args)])


def test_train_router_causal_writes_a_router_that_causal_generation_loads(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    out = tmp_path / "router"
    result = run_train("--causal", "--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--steps", "3",
                       *SMALL)
    assert result.exit_code == 0, result.output
    meta = yaml.safe_load((out / "router.yaml").read_text())
    assert meta["model"]["grid"] == {"frames": 1, "height": 8, "width": 8}  # a chunk's grid
    assert meta["training"]["causal"]["chunk_steps"] == 2 and meta["training"]["sample_steps"] == 2
    clip = tmp_path / "clip.mp4"
    generated = CliRunner().invoke(app, ["generate", "--causal", "--prompt", "a red circle", "--model",
                                         str(tiny_model_dir), "--method", "router", "--router", str(out), *SMALL,
                                         "--out", str(clip)])
    assert generated.exit_code == 0, generated.output
    meta = json.loads(clip.with_suffix(".json").read_text())
    assert meta["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.02)
    changed = run_train("--causal", "--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--steps", "3",
                        *SMALL[:-1], "3")  # other steps per chunk: not the same training
    assert changed.exit_code == 2 and "other settings (sample_steps, causal)" in changed.output


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--chunk-steps", "2"], "--chunk-steps only apply with --causal"),
    (["--causal", "--sample-steps", "4"], "give --chunk-steps instead of --sample-steps"),
    (["--causal", "--chunk-frames", "0"], "--chunk-frames must be at least 1"),
])
def test_bad_causal_training_input_is_one_line_exit_2(tiny_model_dir, tmp_path, flags, fragment):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "router"
    result = run_train("--model", tiny_model_dir, "--prompts", prompts, "--out", out, *flags)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not out.exists()
