"""HunyuanVideo and CogVideoX (2B, 5B, 1.5): text tokens inside the attention, pruned through their adapters.

Tiny random pipelines built like diffusers' own test dummies (`dummies.py`), saved with `save_pretrained` and loaded
through `load_pipeline`, the CLI's path. Each runs 9 frames at 128×128: 3 latent frames × 8 × 8 = 192 video tokens
(CogVideoX-1.5: 2 token frames of 2 latent frames, 128 tokens) beside 16 text tokens.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import dummies
import imageio.v3 as iio
import pytest
import torch
from typer.testing import CliRunner

import vidgen_prune
from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate, load_pipeline
from vidgen_prune.models import BlockCall, adapter_for, describe_pipeline

PROMPT = "a red circle moving left on a blue background"
TEXT = 16  # text positions per prompt (max_sequence_length)
# family → (builder, a folder name no preset key matches, transformer calls per step × samples per call)
FAMILIES = {
    "hunyuanvideo": (dummies.hunyuan_video, "hy_dummy", 1),  # guidance-distilled: one pass of one sample
    "cogvideox-2b": (lambda: dummies.cogvideox("2b"), "cog2b_dummy", 2),  # CFG: one call, a batch of 2
    "cogvideox-5b": (lambda: dummies.cogvideox("5b"), "cog5b_dummy", 2),
    "cogvideox-1.5": (lambda: dummies.cogvideox("1.5"), "cog15_dummy", 2),
}
METHODS = ["tape", "tape-s", "tape-r", "tape-t", "evit", "tome", "stavit"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    build, folder_name, batch = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(folder_name)
    build().save_pretrained(folder)
    pipe = load_pipeline(str(folder))
    gen = GenerateConfig(prompt=PROMPT, model=str(folder), steps=3, frames=9, height=128, width=128,
                         max_sequence_length=TEXT, guidance=6.0, seed=1)
    family = SimpleNamespace(name=request.param, folder=folder, pipe=pipe, gen=gen, batch=batch)
    family.dense = latents(family, PruneConfig(method="dense"))[0]
    assert torch.isfinite(family.dense).all()
    return family


def latents(family, prune: PruneConfig):
    """The generation's final latents (the pipeline's `output_type="latent"`) and its result."""
    captured = {}
    call = family.pipe.__class__.__call__

    def recording(self, *args, **kwargs):
        output = call(self, *args, **kwargs)
        captured["latents"] = output.frames
        return output

    family.pipe.__class__.__call__ = recording
    try:
        with torch.no_grad():
            result = generate(family.pipe, family.gen, prune, decode=False)
    finally:
        family.pipe.__class__.__call__ = call
    return captured["latents"], result


# ------------------------------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", METHODS)
def test_every_method_spends_its_budget_over_all_transformer_calls(family, method):
    output, result = latents(family, PruneConfig(method=method, reduction=0.3, reselect_every=3))
    assert result.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert result.transformer_calls == family.gen.steps  # one call a step (CogVideoX batches its two CFG passes)
    assert torch.isfinite(output).all() and not torch.equal(output, family.dense)
    assert result.flop_bound_speedup > 1.2


def test_reduction_zero_is_bit_identical_to_dense(family):
    for method in ("tape", "evit"):
        output, result = latents(family, PruneConfig(method=method, reduction=0.0, reselect_every=3))
        assert result.kept_fraction == 1.0 and torch.equal(output, family.dense), method


@torch.no_grad()
def test_removing_the_hooks_restores_the_transformer_exactly(family):
    pipe = family.pipe
    info = describe_pipeline(pipe)
    call = dict(info.adapter.pipeline_kwargs(family.gen, info), output_type="latent")
    direct = pipe(**call, generator=torch.Generator().manual_seed(1)).frames
    handle = vidgen_prune.apply(pipe, "tome", reduction=0.3)
    pruned = pipe(**call, generator=torch.Generator().manual_seed(1)).frames
    assert handle.kept_fraction == pytest.approx(0.7, abs=0.02)
    vidgen_prune.remove(pipe)
    after = pipe(**call, generator=torch.Generator().manual_seed(1)).frames
    assert torch.equal(direct, after) and torch.equal(family.dense, after) and not torch.equal(direct, pruned)
    adapter = adapter_for(pipe.transformer)
    assert not pipe.transformer._diffusers_hook.hooks
    assert all(not block._diffusers_hook.hooks for block in adapter.blocks(pipe.transformer))
    assert "set_timesteps" not in vars(pipe.scheduler)


# ----------------------------------------------------------------------------------------------- text tokens


def attention_modules(transformer):
    adapter = adapter_for(transformer)
    return [getattr(block, "attn", None) or block.attn1 for block in adapter.blocks(transformer)]


@torch.no_grad()
def test_no_text_token_is_ever_skipped(family):
    """Every attention call of every block sees all the text tokens beside the kept video tokens, and the budget
    counts video tokens only."""
    transformer = family.pipe.transformer
    seen = []  # (batch, video rows, text rows) of each attention call

    def record(module, args, kwargs):
        video, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        seen.append((video.shape[0], video.shape[1], text.shape[1]))

    handles = [attn.register_forward_pre_hook(record, with_kwargs=True) for attn in attention_modules(transformer)]
    try:
        _, result = latents(family, PruneConfig(method="tape", reduction=0.4, reselect_every=3))
    finally:
        for handle in handles:
            handle.remove()
    tokens, blocks = result.tokens_per_forward, len(attention_modules(transformer))
    assert {text for _, _, text in seen} == {TEXT}
    assert min(video for _, video, _ in seen) < tokens  # some blocks were pruned ...
    kept = sum(batch * video for batch, video, _ in seen) / family.batch  # ... and video rows are all it counted
    assert kept / (result.transformer_calls * blocks * tokens) == pytest.approx(result.kept_fraction)
    assert result.tokens_per_forward == (128 if family.name == "cogvideox-1.5" else 192)


# ----------------------------------------------------------------------------------------------- scoring


def block_call(transformer, layer: int, inputs: dict) -> tuple[torch.nn.Module, BlockCall]:
    adapter = adapter_for(transformer)
    block = adapter.blocks(transformer)[layer]
    captured = {}
    handle = block.register_forward_pre_hook(lambda m, a, k: captured.setdefault("call", (a, k)), with_kwargs=True)
    transformer(**inputs)
    handle.remove()
    return block, BlockCall(block, adapter.layout(block), *captured["call"])


def transformer_inputs(family, batch: int = 2, padded_text: bool = False) -> dict:
    """One forward's inputs for `family`'s tiny transformer (9 frames at 128×128); HunyuanVideo's text mask leaves
    the last 5 text positions of the second sample as padding when `padded_text`."""
    generator = torch.Generator().manual_seed(3)
    config = family.pipe.transformer.config
    if family.name == "hunyuanvideo":
        mask = torch.ones(batch, TEXT)
        if padded_text:
            mask[-1, -5:] = 0
        return dict(
            hidden_states=torch.randn(batch, config.in_channels, 3, 16, 16, generator=generator),
            timestep=torch.tensor([700.0] * batch), return_dict=False,
            encoder_hidden_states=torch.randn(batch, TEXT, config.text_embed_dim, generator=generator),
            encoder_attention_mask=mask, guidance=torch.tensor([6000.0] * batch),
            pooled_projections=torch.randn(batch, config.pooled_projection_dim, generator=generator),
        )
    frames = 4 if config.patch_size_t else 3  # 1.5: latent frames padded to a multiple of its temporal patch
    inputs = dict(
        hidden_states=torch.randn(batch, frames, config.in_channels, 16, 16, generator=generator),
        encoder_hidden_states=torch.randn(batch, TEXT, config.text_embed_dim, generator=generator),
        timestep=torch.tensor([700] * batch), return_dict=False,
    )
    if config.use_rotary_positional_embeddings:
        inputs["image_rotary_emb"] = family.pipe._prepare_rotary_positional_embeddings(128, 128, frames, "cpu")
    return inputs


@torch.no_grad()
def test_scores_use_each_blocks_real_queries_and_keys(family, monkeypatch):
    """query_key's video queries and keys equal those inside the block's own attention (modulated norm, projections,
    qk-norm, rotary), for each block kind, and a subset of positions gives the same rows."""
    import torch.nn.functional as F
    from diffusers.models import attention_dispatch

    transformer = family.pipe.transformer
    adapter = adapter_for(transformer)
    inputs = transformer_inputs(family)
    layers = [0, len(adapter.blocks(transformer)) - 1]  # HunyuanVideo: a dual- and a single-stream block
    for layer in layers:
        block, call = block_call(transformer, layer, inputs)
        inside = {}
        if family.name == "hunyuanvideo":  # (B, S, heads, d), video rows first
            original = attention_dispatch.dispatch_attention_fn

            def capture(query, key, *args, **kwargs):
                inside.update(q=query[:, :call.hidden_states.shape[1]].transpose(1, 2),
                              k=key[:, :call.hidden_states.shape[1]].transpose(1, 2))
                return original(query, key, *args, **kwargs)

            monkeypatch.setattr("diffusers.models.transformers.transformer_hunyuan_video.dispatch_attention_fn",
                                capture)
        else:  # (B, heads, S, d), text rows first
            original = F.scaled_dot_product_attention

            def capture(query, key, *args, **kwargs):
                inside.update(q=query[:, :, TEXT:], k=key[:, :, TEXT:])
                return original(query, key, *args, **kwargs)

            monkeypatch.setattr(F, "scaled_dot_product_attention", capture)
        block(*call.bound.args, **call.bound.kwargs)
        monkeypatch.undo()
        query, key = adapter.query_key(block, call, None, None)  # (B, heads, N, d)
        torch.testing.assert_close(query, inside["q"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(key, inside["k"], rtol=1e-4, atol=1e-5)
        positions = torch.tensor([[0, 5, 70, 191], [3, 64, 65, 100]]) % call.hidden_states.shape[1]
        queries = torch.tensor([[1, 3], [0, 2]])
        sub_query, sub_key = adapter.query_key(block, call, positions, queries)
        rows = positions.gather(1, queries)
        for sample in range(2):
            torch.testing.assert_close(sub_key[sample], key[sample][:, positions[sample]], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(sub_query[sample], query[sample][:, rows[sample]], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_samples_that_keep_different_tokens_run_one_at_a_time_exactly(family):
    """A pruned block on a batch whose samples keep different video tokens equals running each sample on its own
    tokens, with its rotary rows and (HunyuanVideo, padded text) its mask gathered by hand. CogVideoX-2B has no
    rotary tables, so its batch runs in one call (equal to the per-sample calls up to float rounding)."""
    transformer = family.pipe.transformer
    block, call = block_call(transformer, 1, transformer_inputs(family, padded_text=True))
    tokens = call.hidden_states.shape[1]
    index = torch.stack([torch.arange(0, tokens, 2), torch.arange(1, tokens, 2)])  # (2, N/2): disjoint sets
    rows = call.hidden_states.gather(1, index.unsqueeze(-1).expand(-1, -1, call.hidden_states.shape[-1]))
    rows_out, (video, text) = call.run(block, rows, index)
    args = call.arguments
    rotary = next((name for name in ("freqs_cis", "image_rotary_emb") if args.get(name) is not None), None)
    same = torch.equal if rotary else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    for sample in range(2):
        picked = index[sample]
        by_hand = dict(args)
        by_hand.update(hidden_states=rows[sample : sample + 1], temb=args["temb"][sample : sample + 1],
                       encoder_hidden_states=args["encoder_hidden_states"][sample : sample + 1])
        if rotary:
            by_hand[rotary] = tuple(table[picked] for table in args[rotary])
        if "attention_mask" in args:
            mask = args["attention_mask"][sample : sample + 1]  # (1, 1, 1, N + L)
            by_hand["attention_mask"] = torch.cat([mask[..., picked], mask[..., tokens:]], dim=-1)
        bound = call.bound.signature.bind(**{k: v for k, v in by_hand.items() if k in call.bound.signature.parameters})
        expected_video, expected_text = block(*bound.args, **bound.kwargs)
        assert same(rows_out[sample : sample + 1], expected_video)
        assert same(text[sample : sample + 1], expected_text)
    if family.name == "hunyuanvideo":  # the padded text positions really were masked: the mask made a difference
        unmasked = dict(args, hidden_states=rows[1:], temb=args["temb"][1:],
                        encoder_hidden_states=args["encoder_hidden_states"][1:], attention_mask=None)
        unmasked[rotary] = tuple(table[index[1]] for table in args[rotary])
        bound = call.bound.signature.bind(**{k: v for k, v in unmasked.items() if k in call.bound.signature.parameters})
        assert not torch.equal(block(*bound.args, **bound.kwargs)[0], rows_out[1:])


@torch.no_grad()
@pytest.mark.parametrize("cache", ["fbcache", "taylorseer"])
def test_diffusers_caches_compose_and_count_what_they_reused(family, cache):
    """A cache outside the pruned blocks: its compute fraction counts each hooked call once, even when a pruned
    block runs once per sample."""
    settings = dict(fbcache_threshold=0.5, taylorseer_interval=2)
    gen = family.gen
    family.gen = GenerateConfig(**{**vars(gen), "steps": 6})
    try:
        output, result = latents(family, PruneConfig(method="tape", reduction=0.3, reselect_every=3, cache=cache,
                                                     **settings))
    finally:
        family.gen = gen
    assert 0.0 < result.cache_compute_fraction < 1.0 and result.kept_fraction < 1.0
    assert torch.isfinite(output).all() and not family.pipe.transformer.is_cache_enabled


# ------------------------------------------------------------------------------------------------------ FLOPs


@torch.no_grad()
def test_the_analytic_flops_of_each_block_kind_match_torchs_count(family):
    """The joint-attention formula (metrics.flops) against torch's FLOP counter on the block itself, dense and with
    half the video tokens kept (norms and the per-sample modulation are the few percent it leaves out)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    transformer = family.pipe.transformer
    adapter = adapter_for(transformer)
    inputs = transformer_inputs(family, batch=1)
    for layer in (0, len(adapter.blocks(transformer)) - 1):
        block, call = block_call(transformer, layer, inputs)
        tokens = call.hidden_states.shape[1]
        for kept in (tokens, tokens // 2):
            index = torch.arange(kept).unsqueeze(0)
            # the math backend runs attention as matmuls the counter sees (the CPU's fused kernel is not counted)
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                call.run(block, call.hidden_states[:, :kept], index)
            analytic = adapter.block_flops(transformer, layer, tokens, kept, TEXT)
            assert analytic == pytest.approx(counter.get_total_flops(), rel=0.05), (layer, kept)


# ------------------------------------------------------------------------------------------------ the CLI


def run(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def preset_file(tmp_path) -> str:
    """The tiny pipelines' text length: CogVideoX takes exactly its transformer's max_text_seq_length."""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"generate:\n  max_sequence_length: {TEXT}\n  guidance: 6.0\n")
    return str(path)


SMALL = ["--steps", "2", "--frames", "9", "--height", "64", "--width", "64"]


def test_generate_writes_the_video_end_to_end(family, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("generate", "--prompt", PROMPT, "--model", family.folder, "--method", "tape", "--reduction", "0.3",
                 "--reselect-every", "3", "--preset", preset_file(tmp_path), *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    frames = list(iio.imiter(out))
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.03)
    assert meta["tokens_per_forward"] == (32 if family.name == "cogvideox-1.5" else 48)


def refusal(model, tmp_path, monkeypatch, *flags):
    """Run generate with `flags`: (result, whether a pipeline's weights were loaded)."""
    from diffusers import DiffusionPipeline

    loads = []
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *args, **kwargs: loads.append(args) or 1 / 0)
    result = run("generate", "--prompt", PROMPT, "--model", model, *SMALL, *flags, "--out", tmp_path / "x.mp4")
    monkeypatch.undo()
    return result, bool(loads)


FAMILY_RULES = {  # family → [(flags, what the one line says)]
    "hunyuanvideo": [
        (["--frames", "10"], "HunyuanVideo: --frames must be 4k+1"),
        (["--width", "72"], "HunyuanVideo: --width must be a multiple of 16"),
        (["--negative-prompt", "blurry"], "HunyuanVideo is guidance-distilled"),
        (["--method", "router"], "the router method is not offered for hunyuanvideo models"),
    ],
    "cogvideox-5b": [
        (["--frames", "12"], "CogVideoX: --frames must be 4k+1"),
        (["--height", "40"], "CogVideoX: --height must be a multiple of 16"),
        (["--method", "router"], "the router method is not offered for cogvideox models"),
    ],
    "cogvideox-1.5": [(["--width", "160"], "CogVideoX-1.5: its rotary grid spans at most 128x128 pixels")],
}


def test_the_familys_input_rules_exit_2_before_loading(family, tmp_path, monkeypatch):
    for flags, fragment in FAMILY_RULES.get(family.name, []):
        result, weights_read = refusal(family.folder, tmp_path, monkeypatch, "--preset", preset_file(tmp_path), *flags)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], (flags, result.output)
        assert not weights_read and not (tmp_path / "x.mp4").exists()
    if family.name.startswith("cogvideox"):  # without a preset: the generic 512 text positions
        result, weights_read = refusal(family.folder, tmp_path, monkeypatch)
        assert result.exit_code == 2 and "max_sequence_length must be the transformer's max_text_seq_length 16" in (
            result.output) and not weights_read


def test_a_token_replace_hunyuanvideo_is_refused_before_loading(tmp_path, monkeypatch):
    folder = tmp_path / "hy_token_replace"
    dummies.hunyuan_video(num_layers=1, num_single_layers=1, image_condition_type="token_replace").save_pretrained(
        folder)
    result, weights_read = refusal(folder, tmp_path, monkeypatch, "--preset", preset_file(tmp_path))
    assert result.exit_code == 2 and "image_condition_type=token_replace is not supported" in result.output
    assert not weights_read
    with pytest.raises(ValueError, match="first-frame tokens take their own modulation"):
        vidgen_prune.apply(load_pipeline(str(folder)), "tape", reduction=0.3)


# ----------------------------------------------------------------------------------------------- bench --profile

_TINY_COG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
                 text_embed_dim=16, num_layers=6, sample_width=16, sample_height=16, max_text_seq_length=TEXT,
                 use_rotary_positional_embeddings=True)
TINY_PROFILES = {  # name → (adapter class, a config shaped like the dummies, video tokens of a (3, 16, 16) latent)
    "hunyuanvideo": ("HunyuanVideoAdapter", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=4,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(4, 6, 6)), 192),
    "cogvideox-5b": ("CogVideoXAdapter", _TINY_COG, 192),
    "cogvideox-1.5": ("CogVideoXAdapter", dict(_TINY_COG, patch_size_t=2, patch_bias=False), 128),  # 3 → 4 frames
}


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(TINY_PROFILES))
def test_the_meta_device_gives_the_flop_bound_of_a_real_profile_run(name, tmp_path, monkeypatch):
    """`bench --profile` on each family: the shapes-only run on the meta device has the kept fractions and FLOPs of
    the same profile run for real (random weights, the family's own profile inputs: mask, pooled text, guidance,
    rotary tables)."""
    from vidgen_prune import models
    from vidgen_prune.bench import Bench, make_spec
    from vidgen_prune.models import Profile

    adapter_name, config, tokens = TINY_PROFILES[name]
    adapter = next(a for a in models.ADAPTERS if type(a).__name__ == adapter_name)
    profile = Profile(config, (3, 16, 16), TEXT, adapter.pipeline_classes[0])
    monkeypatch.setitem(type(adapter).profiles, "tiny-test", profile)
    records = {}
    for device in ("cpu", "meta"):
        spec = make_spec(None, dict(methods=["dense", "tape", "evit", "tome", "stavit"], reductions=[0.3],
                                    profile="tiny-test", warmup=0),
                         dict(steps=5, device=device), dict(reselect_every=3, kernels="torch"), preset="tiny-wan")
        records[device] = Bench(spec, tmp_path / device).run(None).records
    for real, shapes in zip(records["cpu"], records["meta"]):
        assert shapes["kept_fraction"] == real["kept_fraction"] and shapes["tflops"] == real["tflops"]
        assert real["tokens_per_forward"] == tokens and real["transformer_s"] > 0
    assert all(record["flop_bound_speedup"] > 1.2 for record in records["cpu"][1:])


def test_mask_figures_map_cogvideox_15_tokens_onto_its_padded_frames():
    """CogVideoX-1.5 patches 2 latent frames per token and its pipeline pads the latents at the front: 9 frames →
    3 latent frames → [pad, 0], [1, 2]; pixel frame 0 is token frame 0 alone, frames 1–8 token frame 1."""
    from vidgen_prune.viz import TokenGeometry

    geometry = TokenGeometry(temporal_factor=4, patch_frames=2, token_px=16)
    assert geometry.grid(9, 128, 128).frames == 2
    assert geometry.token_frame(9).tolist() == [0] + [1] * 8
    assert TokenGeometry(4, 2, 16).token_frame(13).tolist() == [0] * 5 + [1] * 8  # 4 latent frames: no padding
    assert TokenGeometry(4, 1, 16).token_frame(9).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]  # Wan: one per token
