"""The learned router (`--method router`): ratio offsets, calibration, bins, gates, budget and bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate
from vidgen_prune.pruning.router import (
    BIN,
    RouterNet,
    RouterPruner,
    model_fingerprint,
    retention_table,
    round_to_bins,
    save_router,
    step_offsets,
)

SMALL = ["--steps", "3", "--frames", "9", "--height", "64", "--width", "64"]


def write_router(folder, blocks: int, width: int, seed: int = 0):
    net = RouterNet.seeded(seed, num_layers=blocks, width=width)
    save_router(net, folder, {"model": {"blocks": blocks, "width": width}, "step": 0})
    return folder


@pytest.fixture(scope="module")
def router_dir(tiny_pipe, tmp_path_factory):
    fingerprint = model_fingerprint(tiny_pipe.transformer)
    return write_router(tmp_path_factory.mktemp("router"), fingerprint["blocks"], fingerprint["width"])


def test_step_offsets_are_the_papers_for_four_steps_and_a_ramp_otherwise():
    assert step_offsets(4).tolist() == pytest.approx([-0.3, -0.1, 0.1, 0.3])
    ramp = step_offsets(20)
    assert ramp[0] == pytest.approx(-0.3) and ramp[-1] == pytest.approx(0.3)
    assert (ramp.diff() > 0).all() and ramp.mean().abs() < 1e-6
    assert step_offsets(1).tolist() == [0.0]


def test_alternating_initialisation():
    assert RouterNet(num_layers=5, width=8).layer_ratios.tolist() == pytest.approx([1.0, 0.8, 1.0, 0.8, 1.0])


@pytest.mark.parametrize("budget", [0.9, 0.7, 0.45, 0.1])
@pytest.mark.parametrize("num_steps", [1, 4, 20])
def test_calibrated_retentions_average_to_the_budget_despite_clamping(budget, num_steps):
    ratios = torch.tensor([1.0, 0.8, 1.0, 0.8, 1.0, 0.3])
    table = retention_table(ratios, step_offsets(num_steps), budget)  # (L, S)
    assert table.mean().item() == pytest.approx(budget, abs=1e-6)
    assert table.min() >= 0.1 - 1e-6 and table.max() <= 1.0 + 1e-6
    # the noisy steps prune more: retention never falls from one step to the next
    assert (table.diff(dim=1) >= -1e-6).all()


def test_bin_rounding_is_nearest_bin_when_that_keeps_the_mean():
    table = torch.tensor([[0.64, 0.76], [0.83, 0.57]])  # mean 0.70; nearest bins 0.6, 0.8, 0.8, 0.6 also 0.70
    assert round_to_bins(table).flatten().tolist() == pytest.approx([0.6, 0.8, 0.8, 0.6])


def test_bin_rounding_moves_the_entry_nearest_a_boundary_to_keep_the_mean():
    table = torch.tensor([[0.74, 0.76], [0.745, 0.74]])  # mean 0.746; nearest bins 0.7, 0.8, 0.7, 0.7: 0.725
    rounded = round_to_bins(table)
    assert rounded.flatten().tolist() == pytest.approx([0.7, 0.8, 0.8, 0.7])  # 0.745 goes up instead
    assert rounded.mean().item() == pytest.approx(table.mean().item(), abs=BIN / (2 * table.numel()))
    multiples = rounded / BIN
    assert torch.allclose(multiples, multiples.round(), atol=1e-5)


def test_ratio_loss_value_and_gradient():
    net = RouterNet(num_layers=4, width=8)  # ratios 1.0, 0.8, 1.0, 0.8: mean 0.9
    loss = net.ratio_loss(0.7)
    loss.backward()
    assert loss.item() == pytest.approx(0.04)
    assert net.layer_ratios.grad.tolist() == pytest.approx([2 * 0.2 / 4] * 4)


def interpolation_gates(retention: float, tokens: int = 20):
    """Training-mode plan of one layer: gates of the kept tokens, by score rank, and d gates / d retention."""
    net = RouterNet(num_layers=1, width=8).train()
    pruner = RouterPruner(PruneConfig(method="router", reduction=0.3), net=net)
    scores = torch.arange(tokens, 0, -1, dtype=torch.float32).unsqueeze(0)  # (1, N): token 0 ranks first
    gate = torch.full((1, tokens), 1.5)
    ratio = torch.tensor(retention, requires_grad=True)
    plan = pruner._interpolated_plan(ratio, scores, gate, tokens)
    full = torch.zeros(1, tokens, 1)
    gates = plan.scatter(full, full.gather(1, plan.positions.unsqueeze(-1)), torch.ones(1, plan.kept, 1))  # x + g·1
    gates.sum().backward()
    return plan, gates.flatten().detach(), ratio.grad.item()


def test_bin_interpolation_blends_the_two_neighbouring_bins_by_distance():
    plan, gates, slope = interpolation_gates(0.55)  # bins 0.5 (10 tokens) and 0.6 (12 tokens), t = 0.5
    assert plan.kept == 12 and plan.positions.tolist() == [list(range(12))]
    assert gates[:10].tolist() == pytest.approx([1.5] * 10)  # in both bins: (1 − t)·g + t·g
    assert gates[10:12].tolist() == pytest.approx([0.75] * 2)  # only in the upper bin: t·g
    assert gates[12:].tolist() == [0.0] * 8  # skipped
    assert slope == pytest.approx(2 * 1.5 / BIN)  # two tokens' gates each rise g / BIN per unit of retention


def test_bin_interpolation_towards_the_dense_bin_is_ungated():
    _, gates, _ = interpolation_gates(0.95)  # bins 0.9 (18 tokens) and 1.0 (dense, gate 1), t = 0.5
    assert gates[:18].tolist() == pytest.approx([0.5 * 1.5 + 0.5] * 18)
    assert gates[18:].tolist() == pytest.approx([0.5] * 2)


def run_generate(*args):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def test_generate_with_router_keeps_the_target_fraction(tiny_model_dir, router_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run_generate("--prompt", "a red circle moving left", "--model", tiny_model_dir, "--method", "router",
                          "--router", router_dir, "--reduction", "0.3", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prune"]["router"] == str(router_dir)
    assert meta["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.02)


@torch.no_grad()
@pytest.mark.parametrize(("reduction", "steps"), [(0.2, 5), (0.5, 1), (0.85, 3)])
def test_router_spends_the_budget(tiny_pipe, router_dir, reduction, steps):
    gen = GenerateConfig(prompt="a blue square", model=str(tiny_pipe.config._name_or_path), steps=steps, frames=9,
                         height=64, width=64)
    routed = generate(tiny_pipe, gen, PruneConfig(method="router", reduction=reduction, router=str(router_dir)),
                      decode=False)
    # 192 tokens a forward: whole-token rounding of K moves the fraction by < 0.003
    assert routed.kept_fraction == pytest.approx(1.0 - reduction, abs=0.02)


@torch.no_grad()
def test_router_at_reduction_zero_is_the_dense_model(tiny_pipe, router_dir):
    gen = GenerateConfig(prompt="a blue square", model=str(tiny_pipe.config._name_or_path), steps=2, frames=9,
                         height=64, width=64)
    dense = generate(tiny_pipe, gen, PruneConfig(method="dense"))
    routed = generate(tiny_pipe, gen, PruneConfig(method="router", reduction=0.0, router=str(router_dir)))
    assert routed.kept_fraction == 1.0 and (dense.frames == routed.frames).all()


def assert_refused(result, out, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize(("blocks", "width", "fragment"), [(4, 32, "4-block model"), (6, 48, "of width 48")])
def test_router_for_another_model_is_refused(tiny_model_dir, tmp_path, blocks, width, fragment):
    foreign = write_router(tmp_path / "foreign", blocks, width)
    out = tmp_path / "clip.mp4"
    result = run_generate("--prompt", "x", "--model", tiny_model_dir, "--method", "router", "--router", foreign,
                          *SMALL, "--out", out)
    assert_refused(result, out, fragment)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda folder: (folder / "router.safetensors").write_bytes(b"\x00" * 40), "corrupt"),
        (lambda folder: (folder / "router.safetensors").unlink(), "has no router.safetensors"),
        (lambda folder: (folder / "router.yaml").write_text("format: [unclosed"), "unreadable"),
        (lambda folder: (folder / "router.yaml").write_text("format: something-else\n"), "is not a"),
        (lambda folder: (folder / "router.yaml").unlink(), "has no router.yaml"),
    ],
)
def test_corrupt_router_is_refused(tiny_model_dir, router_dir, tmp_path, damage, fragment):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(router_dir, broken)
    damage(broken)
    out = tmp_path / "clip.mp4"
    result = run_generate("--prompt", "x", "--model", tiny_model_dir, "--method", "router", "--router", broken,
                          *SMALL, "--out", out)
    assert_refused(result, out, fragment)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--method", "tape", "--router", "."], "--router needs --method router"),
        (["--method", "router", "--router", "/no/such/router"], "--router folder not found"),
    ],
)
def test_bad_router_flags_are_refused(tiny_model_dir, tmp_path, flags, fragment):
    out = tmp_path / "clip.mp4"
    result = run_generate("--prompt", "x", "--model", tiny_model_dir, *SMALL, "--out", out, *flags)
    assert_refused(result, out, fragment)


def test_shipped_router_fits_the_embedded_model():
    from vidgen_prune.pruning.router import DEFAULT_ROUTER_DIR, load_router
    from vidgen_prune.tiny import EMBEDDED_MODEL_DIR

    config_path = EMBEDDED_MODEL_DIR / "transformer" / "config.json"
    if not config_path.is_file():
        pytest.skip("the embedded model's weights are not in this checkout")
    config = json.loads(config_path.read_text())
    net, meta = load_router(DEFAULT_ROUTER_DIR)
    assert meta["model"]["blocks"] == config["num_layers"] == net.spec["num_layers"]
    assert meta["model"]["width"] == config["num_attention_heads"] * config["attention_head_dim"] == net.spec["width"]
    assert meta["target_reduction"] == 0.3 and meta["step"] == meta["final"]["step"]
