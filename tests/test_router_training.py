"""`vidprune train-router`: gradients, exact resume, checkpoint files, and bad input refused up front."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.pruning.hooks import apply_pruner, remove_pruner
from vidgen_prune.pruning.router import RouterNet, RouterPruner, model_fingerprint
from vidgen_prune.router_training import TrainRouterConfig, train_router

PROMPTS = ("a red circle moving left on a black background", "a blue square bouncing on a gray background")
SMALL = ["--sample-steps", "2", "--frames", "9", "--height", "64", "--width", "64"]


def small_config(model_dir, out, steps: int) -> TrainRouterConfig:
    """One prompt, a 2-step trajectory of 9 frames at 64×64."""
    sampling = GenerateConfig(prompt=PROMPTS[0], model=str(model_dir), steps=2, frames=9, height=64, width=64)
    # seed 1 draws denoising steps 0, 1, 1, 0: both halves of the resumed run see both steps
    return TrainRouterConfig(prompts=PROMPTS[:1], out=out, sampling=sampling, steps=steps, checkpoint_every=2, seed=1)


def test_gradient_reaches_every_router_and_ratio(tiny_pipe):
    transformer = tiny_pipe.transformer
    fingerprint = model_fingerprint(transformer)
    net = RouterNet.seeded(0, num_layers=fingerprint["blocks"], width=fingerprint["width"]).train()
    with torch.no_grad():
        net.layer_ratios.fill_(0.65)  # first of 2 steps: 0.65 − 0.3 = 0.35, between the 0.3 and 0.4 bins
    pruner = RouterPruner(PruneConfig(method="router", reduction=0.35), net=net)
    pruner.forced_step = 0
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, transformer.config.in_channels, 3, 16, 16, generator=generator)
    inputs = dict(hidden_states=latents, timestep=torch.tensor([900.0]), return_dict=False,
                  encoder_hidden_states=torch.randn(1, 8, transformer.config.text_dim, generator=generator))
    with torch.no_grad():
        dense = transformer(**inputs)[0]
    controller = apply_pruner(transformer, pruner, kernels="torch")
    controller.reset(num_steps=2)
    try:
        torch.nn.functional.mse_loss(transformer(**inputs)[0], dense).backward()
    finally:
        remove_pruner(transformer)
    assert controller.log.kept_fraction == pytest.approx(0.4, abs=0.01)  # the upper bin's tokens are computed
    assert (net.layer_ratios.grad != 0).all()
    for layer, router in enumerate(net.routers):
        for name, parameter in router.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (layer, name)


def test_resume_ends_where_an_uninterrupted_run_does(tiny_pipe, tmp_path):
    straight = train_router(tiny_pipe, small_config(tiny_pipe.config._name_or_path, tmp_path / "straight", 4))
    train_router(tiny_pipe, small_config(tiny_pipe.config._name_or_path, tmp_path / "resumed", 2))
    resumed = train_router(tiny_pipe, small_config(tiny_pipe.config._name_or_path, tmp_path / "resumed", 4))
    assert resumed.first_step == 2
    for name, tensor in straight.net.state_dict().items():
        assert torch.equal(tensor, resumed.net.state_dict()[name]), name
    losses = [[(row["step"], row["distill"], row["mean_ratio"]) for row in run.losses] for run in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    untrained = RouterNet.seeded(1, **straight.net.spec)
    assert not torch.equal(untrained.routers[0].score.weight, straight.net.routers[0].score.weight)  # it trained


def run_train(*args):
    return CliRunner().invoke(app, ["train-router", *map(str, args)])


def test_train_router_writes_a_checkpoint_that_generate_loads(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# training prompts\n" + "\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "router"
    result = run_train("--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--steps", "3", *SMALL)
    assert result.exit_code == 0, result.output
    assert {path.name for path in out.iterdir()} == {
        "router.safetensors", "router.yaml", "train_state.safetensors", "losses.csv", "loss.png"
    }
    meta = yaml.safe_load((out / "router.yaml").read_text())
    assert meta["model"]["blocks"] == 6 and meta["model"]["width"] == 32
    assert meta["model"]["grid"] == {"frames": 3, "height": 8, "width": 8}
    assert meta["step"] == 3 and meta["target_reduction"] == 0.3 and meta["training"]["prompts"] == 2
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "losses.csv") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
    clip = tmp_path / "clip.mp4"
    generated = CliRunner().invoke(app, ["generate", "--prompt", "a red circle", "--model", str(tiny_model_dir),
                                         "--method", "router", "--router", str(out), "--steps", "2", "--frames", "9",
                                         "--height", "64", "--width", "64", "--out", str(clip)])
    assert generated.exit_code == 0, generated.output
    # the same command again resumes at step 3 and has nothing left to do; other settings are refused
    again = run_train("--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--steps", "3", *SMALL)
    assert again.exit_code == 0, again.output
    changed = run_train("--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--steps", "3",
                        "--target-reduction", "0.2", *SMALL)
    assert changed.exit_code == 2 and "other settings (target_reduction)" in changed.output


@pytest.mark.parametrize(
    ("setup", "flags", "fragment"),
    [
        (None, ["--prompts", "missing.txt"], "--prompts file not found"),
        ("# only a comment\n", [], "holds no prompts"),
        ("a prompt\n", ["--target-reduction", "0.95"], "--target-reduction must be in"),
        ("a prompt\n", ["--steps", "0"], "--steps must be at least 1"),
        ("a prompt\n", ["--batch", "2"], "--batch 2 exceeds the 1 prompts"),
        ("a prompt\n", ["--frames", "10"], "--frames must be 4k+1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tiny_model_dir, tmp_path, setup, flags, fragment):
    prompts = tmp_path / "prompts.txt"
    if setup is not None:
        prompts.write_text(setup)
    out = tmp_path / "router"
    args = ["--model", tiny_model_dir, "--out", out, "--prompts", prompts, *flags]
    result = CliRunner().invoke(app, ["train-router", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not out.exists()


@torch.no_grad()
def test_evaluate_compares_router_untrained_router_and_tape_at_one_budget(tiny_pipe, tmp_path):
    from vidgen_prune.pruning.router import save_router
    from vidgen_prune.router_training import evaluate

    fingerprint = model_fingerprint(tiny_pipe.transformer)
    untrained = RouterNet.seeded(3, num_layers=fingerprint["blocks"], width=fingerprint["width"])
    save_router(untrained, tmp_path, {"model": fingerprint, "training": {"seed": 3}, "step": 0})
    # 1 step of 5 frames at 32×32: 32 tokens a forward, whole-token rounding moves the fraction by < 0.016
    sampling = GenerateConfig(prompt="-", model=str(tiny_pipe.config._name_or_path), steps=1, frames=5, height=32,
                              width=32)
    report = evaluate(tiny_pipe, tmp_path, PROMPTS[:1], sampling, 0.3)
    summary = report["summary"]
    assert set(summary) == {"router", "untrained router", "tape"}
    for figures in summary.values():
        assert figures["kept_fraction"] == pytest.approx(0.7, abs=0.02) and figures["psnr"] > 0
    # a router that never trained is its own untrained baseline: the same video
    assert summary["router"]["psnr"] == summary["untrained router"]["psnr"]


def test_fitted_mix_reads_the_guidance_scale_and_refuses_a_non_linear_mix():
    from vidgen_prune.router_training import fitted_mix

    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 3, 8, 8, generator=generator)
    mix = fitted_mix(torch.stack([cond, uncond]), uncond + 5.0 * (cond - uncond))
    assert mix.tolist() == pytest.approx([5.0, -4.0], abs=1e-5)
    rescaled = (uncond + 5.0 * (cond - uncond)) * cond.abs()  # a mix that no fixed weights reproduce
    with pytest.raises(ValueError, match="not a fixed mix of the transformer passes"):
        fitted_mix(torch.stack([cond, uncond]), rescaled)


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_guided_trajectories_record_the_samplers_velocity_as_the_pipelines_cfg_mix(tiny_pipe, guidance):
    from dataclasses import replace

    from vidgen_prune.router_training import collect_trajectories

    sampling = replace(small_config(tiny_pipe.config._name_or_path, Path("unused"), 1).sampling, guidance=guidance)
    trajectories = collect_trajectories(tiny_pipe, PROMPTS[:1], sampling, 0, lambda done: None, guided=True)
    passes = 2 if guidance > 1.0 else 1  # at guidance 1 the pipeline runs the cond pass alone
    expected = [guidance, 1.0 - guidance] if passes == 2 else [1.0]
    for step in range(sampling.steps):
        guided, calls = trajectories.guided[0][step], trajectories.calls[0][step]
        assert len(calls) == passes and guided.mix.tolist() == pytest.approx(expected, abs=1e-4)
        mix, target = trajectories.guided_batch([0], step)
        assert mix.shape == (1, passes) and torch.equal(target[0], guided.velocity)
    assert tiny_pipe.scheduler.step.__func__ is type(tiny_pipe.scheduler).step  # the recording hook is gone


def test_guided_objective_with_restoration_trains_and_is_recorded(tiny_pipe, tmp_path):
    from dataclasses import replace

    config = replace(small_config(tiny_pipe.config._name_or_path, tmp_path / "router", 2), objective="guided",
                     restore="similar")
    result = train_router(tiny_pipe, config)
    assert all(row["distill"] > 0 for row in result.losses)
    training = yaml.safe_load((tmp_path / "router" / "router.yaml").read_text())["training"]
    assert training["objective"] == "guided" and training["restore"] == "similar"
    with pytest.raises(ValueError, match=r"other settings \(objective\)"):  # resuming asks for the same objective
        train_router(tiny_pipe, replace(config, objective="pass", steps=3))


def test_a_checkpoint_from_before_objective_and_restore_resumes_as_pass_without_restoration(tiny_pipe, tmp_path):
    from vidgen_prune.router_training import checkpoint_step

    out = tmp_path / "router"
    train_router(tiny_pipe, small_config(tiny_pipe.config._name_or_path, out, 2))
    meta = yaml.safe_load((out / "router.yaml").read_text())
    del meta["training"]["objective"], meta["training"]["restore"]  # as written before the two settings existed
    (out / "router.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    assert checkpoint_step(small_config(tiny_pipe.config._name_or_path, out, 3)) == 2
