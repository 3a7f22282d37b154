"""The Python API: apply / remove on a diffusers pipeline, the README's example, parity with the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vidgen_prune
from vidgen_prune.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPT = "a red circle moving left on a blue background"
CALL = dict(num_frames=9, height=64, width=64, num_inference_steps=4, max_sequence_length=16, output_type="np")


def run_pipe(pipe, seed: int = 1) -> np.ndarray:
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **CALL).frames[0]


def readme_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(capsys):
    exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    kept = float(re.search(r"kept (\d\.\d+)", printed).group(1))
    assert kept == pytest.approx(0.7, abs=0.02) and "40 transformer calls" in printed


@torch.no_grad()
def test_apply_then_remove_leaves_the_pipeline_as_it_was(tiny_pipe):
    before = run_pipe(tiny_pipe)
    handle = vidgen_prune.apply(tiny_pipe, "tape", reduction=0.3, reselect_every=3)
    pruned = run_pipe(tiny_pipe)
    assert handle.kept_fraction == pytest.approx(0.7, abs=0.02) and handle.transformer_calls == 8
    assert handle.transformer_s > 0 and handle.flop_bound_speedup > 1.2
    vidgen_prune.remove(tiny_pipe)
    after = run_pipe(tiny_pipe)
    assert not np.array_equal(before, pruned) and np.array_equal(before, after)
    assert not tiny_pipe.transformer._diffusers_hook.hooks
    assert "set_timesteps" not in vars(tiny_pipe.scheduler)


@torch.no_grad()
def test_applying_again_replaces_and_a_context_removes(tiny_pipe):
    first = vidgen_prune.apply(tiny_pipe, "evit", reduction=0.3)
    with vidgen_prune.apply(tiny_pipe, "tape", reduction=0.2, reselect_every=3) as second:
        run_pipe(tiny_pipe)
        assert not first.active and second.kept_fraction == pytest.approx(0.8, abs=0.02)
        assert len(tiny_pipe.transformer._diffusers_hook.hooks) == 2  # one pruner + its timer, not two
    assert not tiny_pipe.transformer._diffusers_hook.hooks


@torch.no_grad()
def test_the_step_count_comes_from_each_call(tiny_pipe):
    """HighLow spreads its levels over the steps of the call being made, learnt from the scheduler."""
    with vidgen_prune.apply(tiny_pipe, "tape", reduction=0.3, reselect_every=3) as handle:
        for steps in (2, 5):
            tiny_pipe(PROMPT, generator=torch.Generator().manual_seed(0), **{**CALL, "num_inference_steps": steps})
            assert handle.controller.num_steps == steps and sorted(handle.controller.log.per_step) == list(range(steps))
            assert handle.kept_fraction == pytest.approx(0.7, abs=0.02)


def test_bad_options_raise_the_clis_one_line_message(tiny_pipe):
    with pytest.raises(ValueError, match=r"--reduction must be in \[0, 0.95\)"):
        vidgen_prune.apply(tiny_pipe, "tape", reduction=1.5)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        vidgen_prune.apply(tiny_pipe, "nope")
    with pytest.raises(ValueError, match="unknown pruning option colour"):
        vidgen_prune.apply(tiny_pipe, "tape", colour="red")
    assert getattr(tiny_pipe, "_vidprune_handle", None) is None


@torch.no_grad()
def test_the_handle_reports_what_the_cli_reports(tiny_pipe, tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = CliRunner().invoke(app, [
        "generate", "--prompt", PROMPT, "--model", str(tiny_model_dir), "--steps", "4", "--frames", "9", "--height",
        "64", "--width", "64", "--method", "tape", "--reduction", "0.3", "--reselect-every", "3", "--seed", "1",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    with vidgen_prune.apply(tiny_pipe, "tape", reduction=0.3, reselect_every=3) as handle:
        tiny_pipe(PROMPT, generator=torch.Generator().manual_seed(1),
                  **{**CALL, "max_sequence_length": sidecar["generate"]["max_sequence_length"]})
    assert handle.kept_fraction == sidecar["achieved_kept_fraction"]
    assert handle.transformer_calls == sidecar["timings"]["transformer_calls"]
