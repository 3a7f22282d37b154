"""Pruning composed with diffusers' own features: offload, attention backends, compile, LoRA, VAE tiling, defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vidgen_prune
from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate, load_pipeline

PROMPT = "a red circle moving left on a blue background"
TAPE = PruneConfig(method="tape", reduction=0.3, reselect_every=3)


def small(model_dir, **overrides) -> GenerateConfig:
    values = dict(prompt=PROMPT, model=str(model_dir), steps=3, frames=9, height=32, width=32, seed=1,
                  max_sequence_length=8)
    return GenerateConfig(**{**values, **overrides})


def run(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_refused(result, fragment: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The plain pipeline's pruned frames, which every composition that changes no arithmetic must reproduce."""
    gen = small(tiny_model_dir)
    return generate(load_pipeline(gen.model, setup=gen), gen, TAPE)


@torch.no_grad()
def test_group_offloading_composes_with_pruning(tiny_model_dir, reference):
    """`--offload group` (on the CPU here: onload and offload device alike) runs every pruned block with its weights
    where the offloading hooks put them, and changes nothing in the arithmetic."""
    gen = small(tiny_model_dir, offload="group")
    pipe = load_pipeline(gen.model, setup=gen)
    result = generate(pipe, gen, TAPE)
    assert result.kept_fraction == reference.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert np.array_equal(result.frames, reference.frames)


@torch.no_grad()
@pytest.mark.parametrize("offload_type", ["leaf_level", "block_level"])
def test_vidprune_runs_inside_group_offloading_applied_first(tiny_model_dir, reference, offload_type):
    """A pipeline offloaded before `apply` (the Python user's order): vidprune's block hooks go inside diffusers'
    group-offloading hooks, so a block's weights are onloaded before the scoring pass reads them."""
    gen = small(tiny_model_dir)
    pipe = load_pipeline(gen.model, setup=gen)
    pipe.transformer.enable_group_offload(torch.device("cpu"), offload_type=offload_type, num_blocks_per_group=1)
    with vidgen_prune.apply(pipe, "tape", reduction=0.3, reselect_every=3):
        block = pipe.transformer.blocks[1]
        assert block._diffusers_hook._hook_order == ["vidprune_block", "group_offloading"]  # outermost last
        result = generate(pipe, gen, TAPE)
    assert np.array_equal(result.frames, reference.frames)
    assert pipe.transformer.blocks[1]._diffusers_hook._hook_order == ["group_offloading"]


@torch.no_grad()
@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_attention_backends_compose_with_pruning(tiny_model_dir, reference, backend):
    gen = small(tiny_model_dir, attention_backend=backend)
    result = generate(load_pipeline(gen.model, setup=gen), gen, TAPE)
    assert result.kept_fraction == reference.kept_fraction
    # the same attention by another kernel: equal up to float rounding (uint8 frames may differ by a level or two)
    assert np.abs(result.frames.astype(int) - reference.frames).max() <= 2


@torch.no_grad()
def test_compiled_blocks_match_eager_and_count_their_graphs(tiny_model_dir, reference):
    gen = small(tiny_model_dir, compile=True)
    pipe = load_pipeline(gen.model, setup=gen)
    first = generate(pipe, gen, TAPE)
    second = generate(pipe, gen, TAPE)
    assert first.kept_fraction == reference.kept_fraction
    assert np.abs(first.frames.astype(int) - reference.frames).max() <= 2  # inductor's fusions round differently
    # dense (scoring) blocks and pruned blocks see different token counts: at least two graphs, then no more
    assert first.compiled_graphs >= 2 and second.compiled_graphs == 0


def make_lora(pipe, folder):
    """A tiny rank-4 LoRA on the self-attention projections, random (init off), saved with the pipeline's writer."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(3)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["attn1.to_q", "attn1.to_k", "attn1.to_v"]))
    type(pipe).save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    return folder


@torch.no_grad()
def test_a_lora_changes_the_output_and_pruning_still_spends_its_budget(tiny_model_dir, reference, tmp_path):
    lora = make_lora(load_pipeline(str(tiny_model_dir)), tmp_path / "lora")
    gen = small(tiny_model_dir, lora=(f"{lora}:0.8",))
    result = generate(load_pipeline(gen.model, setup=gen), gen, TAPE)
    assert result.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert not np.array_equal(result.frames, reference.frames)

    out = tmp_path / "clip.mp4"
    cli = run("generate", "--prompt", PROMPT, "--model", tiny_model_dir, "--steps", "3", "--frames", "9", "--height",
              "32", "--width", "32", "--method", "tape", "--reduction", "0.3", "--reselect-every", "3",
              "--lora", f"{lora}:0.8", "--vae-tiling", "--out", out)
    assert cli.exit_code == 0, cli.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["generate"]["lora"] == [f"{lora}:0.8"] and sidecar["generate"]["vae_tiling"] is True


def test_vae_tiling_is_switched_on(tiny_model_dir):
    gen = small(tiny_model_dir, vae_tiling=True)
    assert load_pipeline(gen.model, setup=gen).vae.use_tiling


@pytest.mark.parametrize("flags, fragment", [
    (["--offload", "model"], "--offload model moves weights to an accelerator"),
    (["--offload", "disk"], "--offload must be one of model, group, sequential"),
    (["--offload", "group", "--compile"], "--compile with --offload is not supported"),
    (["--attention-backend", "nope"], "unknown --attention-backend 'nope'"),
    (["--attention-backend", "flash"], "--attention-backend flash is not usable here"),
    (["--lora", "missing.safetensors"], "no such file or folder: missing.safetensors"),
])
def test_combinations_that_cannot_run_are_refused_before_loading(tiny_model_dir, tmp_path, monkeypatch, flags,
                                                                 fragment):
    monkeypatch.setattr("vidgen_prune.engine.load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    out = tmp_path / "clip.mp4"
    assert_refused(run("generate", "--prompt", PROMPT, "--model", tiny_model_dir, "--out", out, *flags), fragment)
    assert not out.exists()


def test_sequential_offload_is_refused_with_pruning(tiny_model_dir, monkeypatch):
    from vidgen_prune.commands.common import check_model

    monkeypatch.setattr("vidgen_prune.compose.check_setup", lambda gen: None)  # this CPU has no accelerator
    gen = small(tiny_model_dir, offload="sequential")
    with pytest.raises(ValueError, match="use --offload group"):
        check_model(gen, [TAPE])
    check_model(gen, [PruneConfig(method="dense")])  # dense runs with it


def test_defaults_follow_the_machine(monkeypatch):
    assert (GenerateConfig(prompt="x").device, GenerateConfig(prompt="x").dtype) == ("cpu", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = GenerateConfig(prompt="x")
    assert (config.device, config.dtype) == ("cuda", "bfloat16")
    assert GenerateConfig(prompt="x", dtype="float32").dtype == "float32"  # what a user gives stays
