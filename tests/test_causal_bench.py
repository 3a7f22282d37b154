"""`vidprune bench --causal` and causal profiles: chunk timings, fidelity against the dense causal video, FLOPs with
the KV cache on the meta device as on a real run, refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune.bench import Bench, check_budgets, make_spec
from vidgen_prune.causal.pipeline import load_causal_pipeline
from vidgen_prune.cli import app
from vidgen_prune.metrics.flops import block_flops
from vidgen_prune.models import WanAdapter

SMALL = dict(frames=9, height=64, width=64)  # 3 latent frames of 8×8 tokens


def test_a_causal_bench_judges_every_method_against_the_dense_causal_video(tiny_model_dir, tmp_path):
    spec = make_spec(None, dict(methods=["dense", "tape", "evit"], reductions=[0.3], prompts=["a red circle"],
                                seeds=[0], warmup=0),
                     dict(model=str(tiny_model_dir), **SMALL), dict(reselect_every=3), None,
                     causal_flags=dict(chunk_frames=1, chunk_steps=2))
    assert spec.causal.chunk_frames == 1 and spec.gen.steps == 2
    pipe = load_causal_pipeline(str(tiny_model_dir))
    check_budgets(spec, pipe)
    result = Bench(spec, tmp_path).run(pipe)
    dense, tape, evit = result.records
    assert all(record["mode"] == "causal" for record in result.records)
    assert dense["transformer_calls"] == 3 * 2 + 2 and dense["psnr"] is None
    for record in (tape, evit):
        assert record["kept_fraction"] == pytest.approx(0.7, abs=0.02) and record["flop_bound_speedup"] > 1.2
        assert 0 < record["psnr"] < 100 and 0 < record["ssim"] < 1 and record["tde"] > 0
        assert 0 <= record["mask_iou"] <= 1  # adjacent latent frames of the video, from different chunks
    for record in result.records:
        assert 0 < record["first_chunk_s"] and 0 < record["chunk_s"] and record["kv_cache_mb"] > 0
    assert result.aggregates[0]["chunk_speedup"] == 1.0 and result.aggregates[1]["chunk_speedup"] > 0


@pytest.fixture
def tiny_causal_profile(monkeypatch, tmp_path):
    """A causal profile of the test bench's tiny shapes and its preset (chunks of 2 latent frames, 2 steps each)."""
    from test_bench import TINY_PROFILE

    monkeypatch.setitem(WanAdapter.profiles, "tiny-causal", replace(TINY_PROFILE, causal=True))
    preset = tmp_path / "tiny-causal.yaml"
    preset.write_text("causal:\n  chunk_frames: 2\n  chunk_steps: 2\n  sampler: renoise\n")
    return str(preset)


@torch.no_grad()
def test_the_causal_profile_counts_the_cache_and_gives_the_same_flops_on_the_meta_device(tiny_causal_profile,
                                                                                         tmp_path):
    records = {}
    for device in ("cpu", "meta"):
        spec = make_spec(None, dict(methods=["dense", "tape", "tome"], reductions=[0.3], profile="tiny-causal",
                                    warmup=0), dict(device=device), dict(reselect_every=3, kernels="torch"),
                         tiny_causal_profile)
        records[device] = Bench(spec, tmp_path / device).run(None).records
    for real, shapes in zip(records["cpu"], records["meta"]):
        assert shapes["kept_fraction"] == real["kept_fraction"] and shapes["tflops"] == pytest.approx(real["tflops"])
        assert shapes["kv_cache_mb"] == real["kv_cache_mb"] and shapes["chunk_s"] is None and real["chunk_s"] > 0
    dense, tape, _ = records["cpu"]
    assert dense["transformer_calls"] == 2 * 2 + 1 and dense["tokens_per_forward"] == 2 * 16
    # chunk 0 (2 frames) twice and its context pass, then chunk 1 (1 frame) twice against the 2 cached frames
    config = WanAdapter.profiles["tiny-causal"].config
    dim, ffn, layers, per_frame, text = 32, config["ffn_dim"], config["num_layers"], 16, 8
    first = block_flops(2 * per_frame, dim, ffn, text)
    second = block_flops(per_frame, dim, ffn, text) + 4.0 * per_frame * (2 * per_frame) * dim
    assert dense["tflops"] * 1e12 == pytest.approx(layers * (3 * first + 2 * second))
    assert tape["kept_fraction"] == pytest.approx(0.7, abs=0.03) and tape["flop_bound_speedup"] > 1.2


def test_the_self_forcing_profile_is_causal_with_its_presets_chunks():
    spec = make_spec(None, dict(methods=["dense"], profile="self-forcing-1.3b"), dict(device="meta"), {}, None)
    assert (spec.causal.chunk_frames, spec.causal.chunk_steps, spec.causal.sampler) == (3, 4, "renoise")
    assert spec.latent == (21, 60, 104)  # 7 chunks of 3 × 30 × 52 = 4,680 tokens


@pytest.mark.parametrize(("args", "fragment"), [
    (["--causal", "--methods", "tape+fbcache"], "--causal does not compose with the cache methods"),
    (["--chunk-steps", "2"], "--chunk-steps only apply with --causal"),
    (["--causal", "--steps", "3"], "give --chunk-steps instead of --steps"),
    (["--causal", "--profile", "wan2.1-1.3b"], "--profile wan2.1-1.3b is not a causal profile"),
    (["--profile", "self-forcing-1.3b", "--e2e"], "--causal does not take --compile or --e2e"),
    (["--causal", "--router", "."], "--router is the folder of the router method"),
])
def test_bad_causal_bench_input_is_one_line_exit_2(tmp_path, args, fragment):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not out.exists()
