"""vidprune bench: diffusers caches alone and composed with a pruner, the output schema, resume, refusals."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune.bench import AGGREGATE_FIELDS, RUN_FIELDS, Bench, check_budgets, make_spec
from vidgen_prune.bench import runner as bench_runner
from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate, pruned
from vidgen_prune.models import Profile, WanAdapter, adapter_for

PROMPT = "a red circle moving left on a black background"
SMALL = dict(steps=2, frames=5, height=64, width=64)  # 2 latent frames × 8 × 8 tokens


def small_gen(model_dir, **overrides) -> GenerateConfig:
    return GenerateConfig(**{"prompt": PROMPT, "model": str(model_dir), "seed": 1, **SMALL, **overrides})


@torch.no_grad()
@pytest.mark.parametrize(
    "cache, settings",
    [("fbcache", dict(fbcache_threshold=0.5)), ("pab", {}), ("taylorseer", dict(taylorseer_interval=2))],
)
def test_cache_methods_reuse_computation(tiny_pipe, cache, settings):
    gen = small_gen(tiny_pipe.config._name_or_path, steps=6)
    result = generate(tiny_pipe, gen, PruneConfig(cache=cache, **settings))
    assert result.kept_fraction == 1.0  # a cache spends no token budget
    assert result.cache_compute_fraction is not None and result.cache_compute_fraction < 1.0
    assert not tiny_pipe.transformer.is_cache_enabled  # taken off after the generation


@torch.no_grad()
def test_a_pruner_composes_with_fbcache_inside_it(tiny_pipe):
    transformer = tiny_pipe.transformer
    config = PruneConfig(method="tape", reduction=0.3, reselect_every=3, cache="fbcache", fbcache_threshold=0.5)
    with pruned(transformer, config, num_steps=6):
        order = adapter_for(transformer).blocks(transformer)[2]._diffusers_hook._hook_order
        assert order.index("vidprune_block") < order.index("fbc_block_hook")  # ours is innermost: sees the block
    result = generate(tiny_pipe, small_gen(tiny_pipe.config._name_or_path, steps=6), config)
    layers = len(adapter_for(transformer).blocks(transformer))
    assert result.kept_fraction < 0.8  # the blocks that ran skipped tokens
    assert result.cache_compute_fraction < 1.0  # and the cache skipped whole blocks
    assert result.block_calls < result.transformer_calls * layers


def test_pab_does_not_compose_with_token_pruning():
    with pytest.raises(ValueError, match="cannot be composed"):
        PruneConfig(method="tape", reduction=0.3, cache="pab")


def quality_spec(model_dir, **lists):
    values = dict(methods=["dense", "tape", "fbcache"], reductions=[0.3, 0.4], prompts=[PROMPT], seeds=[0],
                  warmup=0)
    return make_spec(None, {**values, **lists}, dict(model=str(model_dir), **SMALL), dict(reselect_every=3), None)


@torch.no_grad()
def test_bench_writes_records_aggregates_and_resumes(tiny_pipe, tmp_path):
    spec = quality_spec(tiny_pipe.config._name_or_path)
    check_budgets(spec, tiny_pipe)
    result = Bench(spec, tmp_path).run(tiny_pipe)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["records"]) == 4  # dense, tape × 2, fbcache
    assert all(set(record) == set(RUN_FIELDS) for record in saved["records"])
    assert [(a["method"], a["reduction"]) for a in saved["aggregates"]] == [
        ("dense", None), ("tape", 0.3), ("tape", 0.4), ("fbcache", None)
    ]
    with open(tmp_path / "runs.csv") as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == RUN_FIELDS
    with open(tmp_path / "summary.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert set(saved["aggregates"][0]) == set(AGGREGATE_FIELDS)
    assert (tmp_path / "speedup_vs_fidelity.png").stat().st_size > 0
    tape = result.aggregates[1]
    assert tape["kept_fraction"] == pytest.approx(0.7, abs=0.02) and tape["psnr"] is not None
    assert tape["flop_bound_speedup"] > 1.0 and 0.0 <= tape["mask_iou"] <= 1.0
    assert result.aggregates[3]["cache_compute_fraction"] is not None

    again = Bench(spec, tmp_path)
    again.check()
    assert again.run(tiny_pipe).skipped == 4  # nothing ran again
    saved["records"] = [r for r in saved["records"] if not (r["method"] == "tape" and r["reduction"] == 0.4)]
    (tmp_path / "bench.json").write_text(json.dumps(saved))
    ran = []
    resumed = Bench(spec, tmp_path, on_progress=lambda done, total, label: ran.append(label))
    resumed.check()
    assert resumed.run(tiny_pipe).skipped == 3 and ran == ["tape r=0.4"]


def test_spec_file_settings_hold_unless_a_flag_overrides_them(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("methods: [dense, tape]\nreductions: [0.2]\nseeds: [3]\nprompts: [a red circle moving left "
                         "on a black background]\ngenerate: {steps: 4, frames: 9}\nprune: {schedule: constant, "
                         "reselect_every: 2}\n")
    flags = dict(steps=None, frames=None, height=None, model=None)
    spec = make_spec(spec_file, dict(seeds=None), flags, dict(schedule=None, reselect_every=None), None)
    assert (spec.gen.steps, spec.gen.frames, spec.prune.schedule, spec.prune.reselect_every) == (4, 9, "constant", 2)
    assert spec.seeds == (3,) and spec.reductions == (0.2,)
    spec = make_spec(spec_file, dict(seeds=[5]), {**flags, "steps": 6}, dict(schedule="lowhigh"), None)
    assert (spec.gen.steps, spec.prune.schedule, spec.prune.reselect_every, spec.seeds) == (6, "lowhigh", 2, (5,))


def test_profile_refuses_quality_metrics():
    with pytest.raises(ValueError, match="quality metrics"):
        make_spec(None, dict(profile="wan2.1-1.3b", metrics=["timing", "fidelity"]), {}, {}, None)


def test_cli_refuses_bad_bench_input_with_one_line_and_no_file(tmp_path):
    runner = CliRunner()
    for args in (["--methods", "dense,nonsense"], ["--reductions", "0.3,1.5"], ["--profile", "wan2.1-1.3b",
                                                                                "--metrics", "timing,psnr"],
                 ["--profile", "wan2.1-1.3b", "--metrics", "timing,fidelity"], ["--seeds", "a"]):
        out = tmp_path / "out"
        result = runner.invoke(app, ["bench", *args, "--out", str(out)])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count("error:") == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()


TINY_PROFILE = Profile(
    dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=16,
         freq_dim=32, ffn_dim=64, num_layers=6, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
    latent=(3, 8, 8), text_tokens=8,
)


@torch.no_grad()
def test_profile_runs_a_composed_cache_and_decodes_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(WanAdapter.profiles, "tiny-test", TINY_PROFILE)
    monkeypatch.setattr(bench_runner, "time_vae_decode", lambda decode, spec: 0.25)  # the real-size VAE is slow here
    spec = make_spec(
        None, dict(methods=["dense", "tape+fbcache"], reductions=[0.3], profile="tiny-test", profile_latent=[3, 8, 8],
                   warmup=0, e2e=True),
        dict(steps=4), dict(reselect_every=3, fbcache_threshold=0.5), preset="tiny-wan",
    )
    dense, composed = Bench(spec, tmp_path).run(None).records
    assert composed["cache_compute_fraction"] < 1.0 and composed["kept_fraction"] < 1.0
    assert composed["decode_s"] == 0.25 and composed["total_s"] == pytest.approx(composed["transformer_s"] + 0.25)


def test_compile_with_a_cache_is_refused():
    with pytest.raises(ValueError, match="--compile cannot be combined"):
        make_spec(None, dict(methods=["dense", "tape+fbcache"], profile="wan2.1-1.3b", compile=True), {}, {}, None)


@torch.no_grad()
def test_profile_times_transformer_steps_with_kernels_and_compile(tmp_path, monkeypatch):
    monkeypatch.setitem(WanAdapter.profiles, "tiny-test", TINY_PROFILE)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)  # the wiring, not inductor
    spec = make_spec(
        None,
        dict(methods=["dense", "tape", "tome"], reductions=[0.3], profile="tiny-test",
             profile_latent=[3, 8, 8], warmup=1, repeats=2, compile=True),
        dict(steps=4), dict(reselect_every=3, kernels="torch", fbcache_threshold=0.5), preset="tiny-wan",
    )
    assert spec.metrics == ("timing",) and spec.prune.kernels == "torch"
    check_budgets(spec, None)
    result = Bench(spec, tmp_path).run(None)
    assert len(compiled) == TINY_PROFILE.config["num_layers"]
    dense, tape, tome = result.aggregates
    assert dense["transformer_step_ms"] > 0 and tape["speedup"] > 0
    assert tape["kept_fraction"] == pytest.approx(0.7, abs=0.02) and tape["psnr"] is None
    assert tape["flop_bound_speedup"] > 1.0 and tome["flop_bound_speedup"] > 1.0
    assert all(record["mode"] == "profile:tiny-test" for record in result.records)


@torch.no_grad()
def test_the_meta_device_gives_the_flop_bound_of_a_real_run(tmp_path, monkeypatch):
    """`--device meta` runs the real-size architecture as shapes only: its kept fractions and FLOP bounds are those
    of the same profile computed for real on the CPU, and it times nothing."""
    monkeypatch.setitem(WanAdapter.profiles, "tiny-test", TINY_PROFILE)
    records = {}
    for device in ("cpu", "meta"):
        spec = make_spec(
            None, dict(methods=["dense", "tape", "evit", "tome", "stavit"], reductions=[0.3], profile="tiny-test",
                       warmup=0),
            dict(steps=5, device=device), dict(reselect_every=3, kernels="torch"), preset="tiny-wan",
        )
        records[device] = Bench(spec, tmp_path / device).run(None).records
    for real, shapes in zip(records["cpu"], records["meta"]):
        assert shapes["kept_fraction"] == real["kept_fraction"] and shapes["tflops"] == real["tflops"]
        assert shapes["flop_bound_speedup"] == pytest.approx(real["flop_bound_speedup"])
        assert shapes["transformer_s"] is None and real["transformer_s"] > 0
    with pytest.raises(ValueError, match="--device meta .* needs --profile"):
        make_spec(None, dict(methods=["dense"]), dict(device="meta"), {}, None)


def test_a_cache_that_fails_to_apply_leaves_nothing_on_the_model(tiny_pipe, monkeypatch):
    from vidgen_prune.pruning.caches import TIMESTEP_HOOK, apply_cache

    def broken_marker(self, module):
        raise TypeError("no marker here")

    monkeypatch.setattr(WanAdapter, "compute_marker", broken_marker)
    with pytest.raises(TypeError):
        apply_cache([tiny_pipe.transformer], PruneConfig(cache="fbcache"))
    assert not tiny_pipe.transformer.is_cache_enabled
    assert tiny_pipe.transformer._diffusers_hook.get_hook(TIMESTEP_HOOK) is None
