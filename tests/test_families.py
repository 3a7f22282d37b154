"""LTX-Video, SkyReels-V2 and image-to-video Wan, each on a tiny random pipeline saved with `save_pretrained` and
loaded as the CLI loads it: every method runs and spends its budget, reduction 0 is dense, removing the hooks
restores every transformer, the CLI runs end to end (with --image where the model animates one), and each family's
input rules are refused before any weight is read."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import dummies
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vidgen_prune.cli import app
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate, load_pipeline
from vidgen_prune.models import denoisers, describe_pipeline
from vidgen_prune.pruning import check_pruner

PROMPT = "a red circle moving left on a blue background"
STEPS = 2
PRUNING_METHODS = ("tape", "tape-s", "tape-r", "tape-t", "evit", "tome", "stavit")


@dataclass(frozen=True)
class Family:
    build: object  # tests/dummies.py builder
    image: bool = False  # generate with --image (the model animates the first frame)
    text_positions: int = 16  # max_sequence_length (Wan2.1 I2V's attention needs 512)
    frames: int = 9  # 3 latent frames through the tiny VAEs (4× time; Mochi's 6×)
    size: int = 32  # 16 tokens per latent frame (Mochi's VAE compresses 8× in space)


FAMILIES = {
    "ltx-video": Family(dummies.ltx_video),
    "ltx-video-i2v": Family(dummies.ltx_video, image=True),  # LTXImageToVideoPipeline on the same folder
    "skyreels-v2": Family(dummies.skyreels_v2),
    "skyreels-v2-i2v": Family(dummies.skyreels_v2_i2v, image=True, text_positions=512),
    "wan2.1-i2v": Family(dummies.wan_i2v, image=True, text_positions=512),
    "wan2.2-ti2v-i2v": Family(dummies.wan_ti2v, image=True),  # WanPipeline folder, run as WanImageToVideoPipeline
    "mochi": Family(dummies.mochi, frames=13, size=64),
}
# train-router's trajectories are text-to-video (it has no --image): TI2V-5B's folder trains in its text mode
ROUTER_FAMILIES = ("ltx-video", "skyreels-v2", "mochi", "wan2.2-ti2v-i2v")


@pytest.fixture(scope="session")
def first_frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "first.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """One saved folder per builder (LTX-Video's text and image modes share one), made when first asked for."""
    folders = {}

    def folder(name: str):
        build = FAMILIES[name].build
        if build not in folders:
            folders[build] = tmp_path_factory.mktemp(name)
            build().save_pretrained(folders[build])
        return folders[build]

    return folder


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, family_dirs, first_frame):
    """(name, model folder, loaded pipeline, generation settings) of one family."""
    name = request.param
    folder = family_dirs(name)
    return name, folder, load_pipeline(str(folder)), small_run(name, folder, first_frame)


def small_run(name: str, folder, first_frame, **overrides) -> GenerateConfig:
    spec = FAMILIES[name]
    values = dict(prompt=PROMPT, model=str(folder), steps=STEPS, frames=spec.frames, height=spec.size,
                  width=spec.size, seed=1, max_sequence_length=spec.text_positions,
                  image=first_frame if spec.image else None)
    return GenerateConfig(**{**values, **overrides})


def _no_hooks_left(pipe) -> bool:
    info = describe_pipeline(pipe)
    for name in info.denoisers:
        transformer = getattr(pipe, name)
        modules = [transformer, *info.adapter.blocks(transformer)]
        if any(getattr(module, "_diffusers_hook", None) and module._diffusers_hook.hooks for module in modules):
            return False
    return True


@torch.no_grad()
def test_every_method_runs_and_spends_its_budget(family):
    name, _, pipe, gen = family
    dense = generate(pipe, gen, PruneConfig(method="dense"))
    assert dense.frames.shape == (gen.frames, gen.height, gen.width, 3)
    for method in PRUNING_METHODS:
        result = generate(pipe, gen, PruneConfig(method=method, reduction=0.3, reselect_every=3))
        assert result.kept_fraction == pytest.approx(0.7, abs=0.02), (name, method)
        assert result.flop_bound_speedup > 1.1, (name, method)
        assert not np.array_equal(result.frames, dense.frames), (name, method)


@torch.no_grad()
def test_a_plan_that_keeps_every_token_is_bit_identical(family):
    """Gather → block → scatter over all tokens gives the block's own output: every per-token argument the adapter
    gathers (rotary, per-token modulation, masks) follows the gather, and the video stream is found in the output."""
    from vidgen_prune.models import BlockCall
    from vidgen_prune.pruning.plan import skip_plan

    _, _, pipe, gen = family
    loaded = describe_pipeline(pipe)
    call_pipe = loaded.adapter.pipeline_for(pipe, gen, loaded)
    adapter, block = loaded.adapter, loaded.adapter.blocks(call_pipe.transformer)[1]
    captured = []
    hook = block.register_forward_pre_hook(lambda module, args, kwargs: captured.append((args, kwargs)),
                                           with_kwargs=True)
    call_pipe(**adapter.pipeline_kwargs(gen, describe_pipeline(call_pipe)), output_type="latent",
              generator=torch.Generator().manual_seed(0))
    hook.remove()
    args, kwargs = captured[0]
    call = BlockCall(block, adapter.layout(block), args, kwargs)
    hidden = call.hidden_states  # (B, N, D)
    plan = skip_plan(torch.arange(hidden.shape[1]).expand(hidden.shape[0], -1))
    rows = plan.gather(hidden)
    rows_out, output = call.run(block.forward, rows, plan.positions)
    dense = block(*args, **kwargs)
    assert torch.equal(plan.scatter(hidden, rows, rows_out), call.video(dense))
    assert all(torch.equal(a, b) for a, b in zip(output, dense)) if isinstance(dense, tuple) else True


@torch.no_grad()
def test_reduction_zero_is_dense_and_removing_the_hooks_restores_the_model(family):
    _, _, pipe, gen = family
    dense = generate(pipe, gen, PruneConfig(method="dense"))
    for method in ("tape", "evit", "tome"):
        unpruned = generate(pipe, gen, PruneConfig(method=method, reduction=0.0, reselect_every=3))
        assert np.array_equal(unpruned.frames, dense.frames), method
    generate(pipe, gen, PruneConfig(method="stavit", reduction=0.4))
    after = generate(pipe, gen, PruneConfig(method="dense"))
    assert np.array_equal(after.frames, dense.frames) and _no_hooks_left(pipe)


@pytest.mark.parametrize("name", ["ltx-video-i2v", "wan2.2-ti2v-i2v"])
@torch.no_grad()
def test_per_token_timesteps_count_one_step_per_denoising_step(name, family_dirs, first_frame):
    """Image-to-video LTX-Video and Wan2.2 TI2V give the first frame's tokens t = 0 and the rest the step's t: the
    controller still counts one step per denoising step (the call's highest timestep), so HighLow's rate falls
    step by step."""
    import vidgen_prune

    steps = 4
    folder = family_dirs(name)
    pipe = load_pipeline(str(folder))
    gen = small_run(name, folder, first_frame, steps=steps)
    loaded = describe_pipeline(pipe)
    image_pipe = loaded.adapter.pipeline_for(pipe, gen, loaded)
    timesteps = []
    hook = image_pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: timesteps.append(kwargs["timestep"]), with_kwargs=True)
    with vidgen_prune.apply(image_pipe, "tape", 0.3, reselect_every=3, schedule_stages=steps) as handle:
        image_pipe(**loaded.adapter.pipeline_kwargs(gen, describe_pipeline(image_pipe)), output_type="latent",
                   generator=torch.Generator().manual_seed(0))
    hook.remove()
    first_frame_tokens = handle.controller.grid.tokens_per_frame
    assert all(t.dim() == 2 and (t[:, :first_frame_tokens] == 0).all() and (t[:, first_frame_tokens:] > 0).all()
               for t in timesteps)
    per_step = handle.controller.log.per_step
    assert sorted(per_step) == list(range(steps))
    kept = [per_step[step][0] / per_step[step][1] for step in range(steps)]
    assert all(later > earlier for earlier, later in zip(kept, kept[1:])), kept


@pytest.mark.parametrize("name", ROUTER_FAMILIES)
@torch.no_grad()
def test_a_router_trained_for_the_family_prunes_it(name, family_dirs, tmp_path):
    from vidgen_prune.router_training import TrainRouterConfig, train_router

    folder = family_dirs(name)
    pipe = load_pipeline(str(folder))
    gen = small_run(name, folder, None)
    with torch.enable_grad():
        train_router(pipe, TrainRouterConfig(prompts=(PROMPT,), out=tmp_path / "router", sampling=gen, steps=2,
                                             checkpoint_every=2))
    dense = generate(pipe, gen, PruneConfig(method="dense"))
    routed = generate(pipe, gen, PruneConfig(method="router", reduction=0.3, router=str(tmp_path / "router")))
    assert routed.kept_fraction == pytest.approx(0.7, abs=0.02)
    assert not np.array_equal(routed.frames, dense.frames) and _no_hooks_left(pipe)


def _generate_cli(name, folder, tmp_path, *flags):
    spec, out = FAMILIES[name], tmp_path / "clip.mp4"
    result = CliRunner().invoke(app, [
        "generate", "--prompt", PROMPT, "--model", str(folder), "--steps", str(STEPS), "--frames", str(spec.frames),
        "--height", str(spec.size), "--width", str(spec.size), "--method", "tape", "--reduction", "0.3",
        "--reselect-every", "3", "--out", str(out), *map(str, flags),
    ])
    return result, out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_cli_generates_end_to_end(name, family_dirs, first_frame, tmp_path):
    spec = FAMILIES[name]
    result, out = _generate_cli(name, family_dirs(name), tmp_path, *(["--image", first_frame] if spec.image else []))
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 0 and sidecar["achieved_kept_fraction"] == pytest.approx(0.7, abs=0.02)
    assert sidecar["generate"]["image"] == (str(first_frame) if spec.image else None)


def _one_line_exit_2(result, fragment: str) -> None:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


RULES = [  # (family, flags, the line's fragment); the tiny VAEs compress 4× in time and space
    ("ltx-video", ["--frames", "10"], "LTX-Video: --frames must be 4k+1"),
    ("ltx-video", ["--height", "34"], "LTX-Video: --height must be a multiple of 4"),
    ("skyreels-v2", ["--frames", "12"], "SkyReels-V2: --frames must be 4k+1"),
    ("skyreels-v2", ["--image", "FIRST"], "--image needs an image-to-video model"),
    ("skyreels-v2-i2v", [], "is an image-to-video skyreels-v2 pipeline: give --image PATH"),
    ("wan2.1-i2v", [], "is an image-to-video wan pipeline: give --image PATH"),
    ("wan2.2-ti2v-i2v", ["--width", "40"], "Wan: --width must be a multiple of 16"),
    ("mochi", ["--frames", "9"], "Mochi: --frames must be 6k+1"),
    ("mochi", ["--height", "56"], "Mochi: --height must be a multiple of 16"),
    ("mochi", ["--image", "FIRST"], "--image needs an image-to-video model"),
]


@pytest.mark.parametrize(("name", "flags", "fragment"), RULES)
def test_the_family_rules_are_refused_before_loading(name, flags, fragment, family_dirs, first_frame, tmp_path,
                                                     monkeypatch):
    from diffusers import DiffusionPipeline

    loads = []
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(lambda cls, *args, **kw: loads.append(args)))
    flags = [first_frame if flag == "FIRST" else flag for flag in flags]
    result, out = _generate_cli(name, family_dirs(name), tmp_path, *flags)
    _one_line_exit_2(result, fragment)
    assert not loads and not out.exists()  # (only the weight files' headers were read, to check their lengths)


def test_wan21_i2v_needs_512_text_positions(family_dirs, first_frame):
    from vidgen_prune.models import inspect_model

    folder = family_dirs("wan2.1-i2v")
    info = inspect_model(str(folder))
    gen = small_run("wan2.1-i2v", folder, first_frame)
    info.adapter.check_inputs(gen, info)  # 512
    with pytest.raises(ValueError, match="Wan I2V: max_sequence_length must be 512"):
        info.adapter.check_inputs(replace(gen, max_sequence_length=16), info)


@pytest.mark.parametrize(("name", "pipeline_class", "fragment"), [
    ("skyreels-v2", "SkyReelsV2DiffusionForcingPipeline", "its per-frame timesteps come from a step matrix"),
    ("ltx-video", "LTXConditionPipeline", "it appends conditioning latents to the video tokens"),
])
def test_unsupported_pipelines_of_a_family_are_refused_with_the_reason(name, pipeline_class, fragment, family_dirs,
                                                                       tmp_path, opened_files):
    import shutil

    folder = tmp_path / pipeline_class
    shutil.copytree(family_dirs(name), folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline_class}))
    opened_files.clear()
    result, _ = _generate_cli(name, folder, tmp_path)
    _one_line_exit_2(result, f"{pipeline_class} is not supported: {fragment}")
    assert not [path for path in opened_files if path.endswith((".safetensors", ".bin"))]


def test_a_batch_item_takes_its_image_relative_to_the_prompt_file(family_dirs, first_frame, tmp_path):
    import shutil

    folder = family_dirs("wan2.2-ti2v-i2v")
    shutil.copy(first_frame, tmp_path / "frame.png")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT, "image": "frame.png"}) + "\n" + json.dumps({"prompt": PROMPT}))
    common = ["generate", "--prompts", str(prompts), "--model", str(folder), "--steps", str(STEPS), "--frames", "9",
              "--height", "32", "--width", "32", "--method", "tape", "--reduction", "0.3", "--reselect-every", "3"]
    result = CliRunner().invoke(app, [*common, "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    sidecars = sorted((tmp_path / "out").glob("*.json"))
    images = [json.loads(path.read_text())["generate"]["image"] for path in sidecars]
    assert images == [str(tmp_path / "frame.png"), None]  # TI2V-5B: one item animates the image, one is text only

    prompts.write_text(json.dumps({"prompt": PROMPT, "image": "missing.png"}) + "\n")
    _one_line_exit_2(CliRunner().invoke(app, [*common, "--out-dir", str(tmp_path / "bad")]),
                     "line 1: --image file not found")


def test_skyreels_block_causal_mask_follows_the_gather():
    """SkyReels-V2's fifth block argument, a token × token mask, keeps the rows and columns of the kept tokens;
    a transformer with a block-causal mask (num_frame_per_block 2) runs pruned and is exact at reduction 0."""
    from diffusers import SkyReelsV2Transformer3DModel

    from vidgen_prune.engine import pruned
    from vidgen_prune.models.skyreels_v2 import SkyReelsV2Adapter, gather_square_mask

    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(1, 1, 12, 12, generator=generator) > 0.5
    index = torch.stack([torch.randperm(12, generator=generator)[:5].sort().values for _ in range(2)])  # (2, 5)
    gathered = gather_square_mask(mask, index)  # (2, 1, 5, 5)
    for sample in range(2):
        assert torch.equal(gathered[sample, 0], mask[0, 0][index[sample]][:, index[sample]])

    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(**dummies._wan_shape(num_frame_per_block=2)).eval()
    config = transformer.config
    inputs = dict(hidden_states=torch.randn(2, config.in_channels, 4, 8, 8, generator=generator),
                  timestep=torch.tensor([900.0, 900.0]), return_dict=False,
                  encoder_hidden_states=torch.randn(2, 8, config.text_dim, generator=generator))
    with torch.no_grad():
        dense = transformer(**inputs)[0]
        with pruned(transformer, PruneConfig(method="tape", reduction=0.0, reselect_every=3), 1):
            assert torch.equal(transformer(**inputs)[0], dense)
        with pruned(transformer, PruneConfig(method="evit", reduction=0.3), 1) as controller:
            output = transformer(**inputs)[0]
    assert torch.isfinite(output).all() and not torch.equal(output, dense)
    assert controller.log.kept_fraction == pytest.approx(0.7, abs=0.02)
    with pytest.raises(ValueError, match="diffusion forcing is not supported"):
        SkyReelsV2Adapter().token_grid(transformer, (), {**inputs, "enable_diffusion_forcing": True})


TINY_PROFILES = {  # transformer configs of the tiny dummies above, as `vidprune bench --profile` builds them
    "ltx-video": ("LTXVideoAdapter", dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                                          cross_attention_dim=16, num_layers=6, caption_channels=16), (3, 8, 8)),
    "skyreels-v2": ("SkyReelsV2Adapter", dummies._wan_shape(), (3, 8, 8)),
    "mochi": ("MochiAdapter", dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=6,
                                   pooled_projection_dim=16, in_channels=12, text_embed_dim=32, time_embed_dim=4),
              (3, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(TINY_PROFILES))
@torch.no_grad()
def test_the_meta_device_gives_the_flop_bound_of_a_real_run(name, tmp_path, monkeypatch):
    """A family's profile runs on the meta device as shapes only (Mochi through its stand-ins) and gives the kept
    fractions and FLOPs the same profile computes for real on the CPU."""
    from vidgen_prune import models
    from vidgen_prune.bench import Bench, make_spec
    from vidgen_prune.models import Profile

    adapter_class, config, latent = TINY_PROFILES[name]
    adapter = next(a for a in models.ADAPTERS if type(a).__name__ == adapter_class)
    monkeypatch.setitem(type(adapter).profiles, "tiny-test", Profile(config, latent, 8))
    records = {}
    for device in ("cpu", "meta"):
        spec = make_spec(None, dict(methods=["dense", "tape", "tome"], reductions=[0.3], profile="tiny-test",
                                    warmup=0), dict(steps=3, device=device), dict(reselect_every=3, kernels="torch"),
                         preset="tiny-wan")
        records[device] = Bench(spec, tmp_path / device).run(None).records
    for real, shapes in zip(records["cpu"], records["meta"]):
        assert shapes["kept_fraction"] == real["kept_fraction"] and shapes["tflops"] == pytest.approx(real["tflops"])
        assert real["flop_bound_speedup"] >= 1.0 and shapes["transformer_s"] is None


@torch.no_grad()
@pytest.mark.parametrize("cache", ["fbcache", "taylorseer"])
def test_diffusers_caches_compose_with_pruning_and_report_what_they_reused(family, cache):
    """A cache outside the pruner on every family: its hooked modules are found (the adapter's compute marker), it
    reuses some of their calls, and it comes off the model afterwards."""
    name, folder, pipe, gen = family
    config = PruneConfig(method="tape", reduction=0.3, reselect_every=3, cache=cache, fbcache_threshold=0.5,
                         taylorseer_interval=2)
    if cache == "fbcache" and name.startswith("skyreels"):  # diffusers' FirstBlockCache has no SkyReels-V2 block
        with pytest.raises(ValueError, match="does not know SkyReelsV2TransformerBlock blocks"):
            check_pruner(config, pipe.transformer)
        return
    result = generate(pipe, replace(gen, steps=4), config)
    assert result.cache_compute_fraction is not None and 0.0 < result.cache_compute_fraction < 1.0
    assert not any(transformer.is_cache_enabled for transformer in denoisers(pipe))
