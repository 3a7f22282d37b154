"""Nothing written is ever wrong: outputs on failing disks, NaN generations, out-of-range and wrong-typed input,
preset keys that take effect, batch runs that cannot collide, unknown prompt words, the OpenMP wait policy.

Every failure case asserts the exit code, the one line on stderr, and that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune import outputs
from vidgen_prune.batch import OutDirLock, World, read_prompt_file
from vidgen_prune.cli import app
from vidgen_prune.commands.generate import build_configs
from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.outputs import OutputError, atomic_files, partial_path

runner = CliRunner()
SIZE = ["--steps", "2", "--frames", "5", "--height", "32", "--width", "32"]
SMALL = [*SIZE, "--reselect-every", "3"]
REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return runner.invoke(app, [*map(str, args)])


def lines_of(result) -> list[str]:
    return [line for line in result.output.strip().splitlines() if line.strip()]


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = lines_of(result)
    assert len(lines) == 1, result.output
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Everything in `folder` (recursively) except the lock files a batch keeps between runs."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".vidprune" not in p.name)


@pytest.fixture
def no_loading(monkeypatch):
    """Bad input must be refused before any weights load: loading fails the test."""
    def refuse(*args, **kwargs):
        pytest.fail("the pipeline was loaded for input that should have been refused first")

    monkeypatch.setattr("vidgen_prune.engine.load_pipeline", refuse)


# ------------------------------------------------------------------------------ writes that fail


def _inject_failing_partial(monkeypatch, suffix: str, target: str) -> None:
    """The partial of every output ending in `suffix` becomes a link to `target`: /dev/full (every write is ENOSPC,
    the kernel's own full disk), a file under /sys (EACCES even for root) or under /proc (ENOENT)."""
    real = outputs.partial_path

    def failing(path: Path) -> Path:
        partial = real(path)
        if path.suffix == suffix and not partial.is_symlink():
            partial.symlink_to(target)
        return partial

    monkeypatch.setattr(outputs, "partial_path", failing)


FAILING_TARGETS = [("/dev/full", "No space left on device"), ("/sys/vidprune-test.out", "Permission denied"),
                   ("/proc/vidprune-test/out", "No such file or directory")]


@pytest.mark.parametrize(("target", "reason"), FAILING_TARGETS)
@pytest.mark.parametrize("failing", [".mp4", ".json"])
def test_a_write_that_fails_is_one_line_exit_1_and_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, failing,
                                                                   target, reason):
    _inject_failing_partial(monkeypatch, failing, target)
    out = tmp_path / "clip.mp4"
    line = one_line(run("generate", "--prompt", "a red circle", "--model", tiny_model_dir, *SMALL, "--out", out), 1)
    assert f"cannot write {out.with_suffix(failing)}" in line and reason in line
    assert leftovers(tmp_path) == []  # no MP4, no sidecar, no partial: the MP4 never goes without its sidecar


def test_an_mp4_that_does_not_decode_never_reaches_its_path(tmp_path, monkeypatch):
    """ffmpeg exiting 0 over a truncated file (what imageio let through on a full disk) is caught by decoding it."""
    real_run = subprocess.run

    def truncated_before_decoding(command, *args, **kwargs):  # the encoder exited 0, the file on disk is cut
        written = Path(command[command.index("-i") + 1])
        written.write_bytes(written.read_bytes()[: written.stat().st_size // 2])
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(outputs.subprocess, "run", truncated_before_decoding)
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(OutputError, match="does not decode"):
        outputs.write_video(frames, tmp_path / "clip.mp4", fps=8)
    assert leftovers(tmp_path) == []


def test_a_written_mp4_decodes_to_its_frames(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    outputs.write_video(frames, tmp_path / "clip.mp4", fps=8)
    decoded = np.stack(list(iio.imiter(tmp_path / "clip.mp4")))
    assert decoded.shape == frames.shape
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_a_failed_group_keeps_the_files_it_would_have_replaced(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old a")
    _inject_failing_partial(monkeypatch, ".json", "/dev/full")
    with pytest.raises(OutputError, match="b.json: No space left on device"):
        with atomic_files(tmp_path / "a.txt", tmp_path / "b.json") as (a, b):
            a.write_text("new a")
            b.write_text("{}")
    assert (tmp_path / "a.txt").read_text() == "old a" and leftovers(tmp_path) == ["a.txt"]


def test_partials_are_unique_per_process_and_a_killed_runs_partial_is_cleared(tmp_path):
    path = tmp_path / "clip.mp4"
    other = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from vidgen_prune.outputs "
                            "import partial_path; print(partial_path(Path(sys.argv[1])))", str(path)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other != str(partial_path(path)) and Path(other).parent == tmp_path and Path(other).suffix == ".mp4"
    Path(other).write_bytes(b"half a video")  # its process has exited: a run killed mid-write
    outputs.write_video(np.zeros((1, 16, 16, 3), np.uint8), path, fps=8)
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_visualize_masks_writes_its_png_and_mp4_together_or_not_at_all(tiny_model_dir, tmp_path, monkeypatch):
    _inject_failing_partial(monkeypatch, ".png", "/dev/full")
    png = tmp_path / "masks.png"
    line = one_line(run("visualize-masks", "--prompt", "a red circle", "--model", tiny_model_dir, "--layer", "1",
                        "--step", "0", *SIZE, "--out", png), 1)
    assert f"cannot write {png}: No space left on device" in line
    assert leftovers(tmp_path) == []


def test_bench_files_are_one_group(tmp_path, monkeypatch):
    from vidgen_prune.bench import BenchResult, make_spec, write_outputs

    spec = make_spec(None, {"methods": ["tape"], "reductions": [0.3], "seeds": [0]}, {}, {}, None)
    result = BenchResult(records=[], aggregates=[])
    _inject_failing_partial(monkeypatch, ".md", "/dev/full")
    with pytest.raises(OutputError, match="summary.md: No space left on device"):
        write_outputs(result, spec, tmp_path)
    assert leftovers(tmp_path) == []  # not even bench.json, which a resume would read


def test_a_failed_router_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from vidgen_prune.router_training import LOSSES_FILE, STATE_FILE, write_checkpoint

    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    (tmp_path / STATE_FILE).write_bytes(b"previous state")
    (tmp_path / LOSSES_FILE).write_text("previous losses")
    _inject_failing_partial(monkeypatch, ".csv", "/dev/full")
    with pytest.raises(OutputError, match=f"{LOSSES_FILE}: No space left on device"):
        write_checkpoint(net, optimizer, [{"step": 1, "distill": 0.1, "ratio": 0.0, "mean_ratio": 0.7,
                                           "elapsed_s": 1.0}], {"step": 1}, tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == b"previous state"
    assert leftovers(tmp_path) == [LOSSES_FILE, STATE_FILE]


TMPFS_DRIVER = """
import json, os, subprocess, sys
from typer.testing import CliRunner
import vidgen_prune.engine as engine
from vidgen_prune.cli import app

model, full, readonly = sys.argv[1:4]
small = {small}
filler = os.open(os.path.join(full, "filler"), os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(filler, b"0" * 4096)
except OSError:  # the disk is full
    os.close(filler)
results = {{}}
results["full"] = CliRunner().invoke(app, ["generate", "--prompt", "a red circle", "--model", model, *small,
                                          "--out", os.path.join(full, "clip.mp4")])
generate = engine.generate

def generate_then_turn_read_only(*args, **kwargs):
    result = generate(*args, **kwargs)
    subprocess.run(["mount", "-o", "remount,ro", readonly], check=True)
    return result

engine.generate = generate_then_turn_read_only
results["readonly"] = CliRunner().invoke(app, ["generate", "--prompt", "a red circle", "--model", model, *small,
                                              "--out", os.path.join(readonly, "clip.mp4")])
print(json.dumps({{name: {{"code": r.exit_code, "output": r.output,
                           "files": sorted(os.listdir(full if name == "full" else readonly))}}
                  for name, r in results.items()}}))
"""


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no unprivileged mount namespace here to mount a small tmpfs")
def test_a_real_full_tmpfs_and_one_turned_read_only_leave_nothing(tiny_model_dir, tmp_path):
    """The same two cases on real filesystems: a 256 KiB tmpfs filled to the last block (ffmpeg gets ENOSPC) and a
    tmpfs remounted read-only between the generation and its write (EROFS), in a user and mount namespace."""
    full, readonly = tmp_path / "full", tmp_path / "readonly"
    full.mkdir()
    readonly.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(TMPFS_DRIVER.format(small=json.dumps(SMALL)))
    script = (f"mount -t tmpfs -o size=256k tmpfs {full} && mount -t tmpfs -o size=1m tmpfs {readonly} && "
              f"exec {sys.executable} {driver} {tiny_model_dir} {full} {readonly}")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, reason in (("full", "No space left on device"), ("readonly", "Read-only file system")):
        result = results[name]
        lines = [line for line in result["output"].strip().splitlines() if line.strip()]
        assert result["code"] == 1 and len(lines) == 1, result
        # the sidecar is written first, so on a full disk it may be the file that fails: either names its path
        assert "cannot write" in lines[0] and "/clip." in lines[0] and reason in lines[0], result
        assert result["files"] == (["filler"] if name == "full" else []), result


# ------------------------------------------------------------------------------ NaN and Inf


def _damaged_model(tiny_model_dir: Path, folder: Path, component: str, tensor: str, index) -> Path:
    """A copy of the tiny model with one NaN written into `component`'s weight `tensor` at `index`."""
    from safetensors.torch import load_file, save_file

    model = folder / "damaged_model"
    shutil.copytree(tiny_model_dir, model)
    weights = next((model / component).glob("*.safetensors"))
    tensors = load_file(weights)
    tensors[tensor][index] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    return model


@pytest.mark.parametrize(
    ("component", "tensor", "stage"),
    [("transformer", "proj_out.weight", "the transformer output at denoising step 1 of 2"),
     ("vae", "decoder.conv_out.weight", "the VAE decode produced NaN")],
)
def test_weights_that_produce_nan_fail_naming_the_stage_and_write_nothing(tiny_model_dir, tmp_path, component,
                                                                          tensor, stage):
    model = _damaged_model(tiny_model_dir, tmp_path, component, tensor, (0, 0))
    out = tmp_path / "out" / "clip.mp4"
    line = one_line(run("generate", "--prompt", "a red circle", "--model", model, *SMALL, "--out", out), 1)
    assert "NonFiniteOutput" in line and stage in line
    assert leftovers(tmp_path / "out") == []


def test_a_nan_item_of_a_batch_fails_alone(tiny_model_dir, tmp_path):
    """NaN in the text embedding of "blue" only: that prompt's generation is NaN, the others are fine."""
    from transformers import AutoTokenizer

    blue = AutoTokenizer.from_pretrained(tiny_model_dir / "tokenizer").convert_tokens_to_ids("blue")
    model = _damaged_model(tiny_model_dir, tmp_path, "text_encoder", "shared.weight", blue)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    out_dir = tmp_path / "out"
    result = run("generate", "--prompts", prompts, "--out-dir", out_dir, "--model", model, *SMALL)
    assert result.exit_code == 1, result.output
    failed = [line for line in lines_of(result) if line.startswith("failed:")]
    assert len(failed) == 1 and "0001-a-blue-square" in failed[0] and "NonFiniteOutput" in failed[0]
    written = [name for name in leftovers(out_dir) if not name.startswith("manifest")]
    assert written == ["0000-a-red-circle.json", "0000-a-red-circle.mp4", "0002-a-green-triangle.json",
                       "0002-a-green-triangle.mp4"]


# ------------------------------------------------------------------------------ input refused before loading


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--guidance", "nan"], "--guidance must be a finite number"),
        (["--guidance", "inf"], "--guidance must be a finite number"),
        (["--guidance", "-1"], "--guidance must be >= 0"),
        (["--alpha", "nan"], "--alpha must be a finite number"),
        (["--schedule-delta", "inf"], "--schedule-delta must be a finite number"),
        (["--reduction", "nan"], "--reduction must be a finite number"),
        (["--seed", "-1"], "--seed must be in [0, 2**63)"),
        (["--seed", str(2**63)], "--seed must be in [0, 2**63)"),
        (["--seed", str(2**70)], "--seed must be in [0, 2**63)"),
        (["--device", "tpu"], "--device 'tpu' is not a torch device"),
        (["--device", "meta"], "--device meta holds no weights"),
    ],
)
def test_out_of_range_numbers_and_devices_are_refused_before_loading(no_loading, tmp_path, flags, fragment):
    out = tmp_path / "clip.mp4"
    line = one_line(run("generate", "--prompt", "a red circle", *flags, "--out", out), 2)
    assert fragment in line
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("out", "fragment"),
    [("clip.avi", "--out must be an .mp4 path"), ("clip", "--out must be an .mp4 path"),
     ("clip.json", "--out must be an .mp4 path"), ("folder.mp4", "output path is a folder"),
     ("sidecar_is_a_folder.mp4", "output path is a folder"), ("/proc/clip.mp4", "output folder is not writable"),
     ("/proc/sub/clip.mp4", "output folder is not writable"), ("/sys/clip.mp4", "output folder is not writable")],
)
def test_bad_out_paths_are_refused_before_loading(no_loading, tmp_path, monkeypatch, out, fragment):
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "sidecar_is_a_folder.json").mkdir()
    monkeypatch.chdir(tmp_path)
    before = leftovers(tmp_path)
    assert fragment in one_line(run("generate", "--prompt", "a red circle", "--out", out), 2)
    assert leftovers(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_triton_kernels_without_cuda_are_refused_before_loading(no_loading, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    line = one_line(run("generate", "--prompt", "a red circle", "--kernels", "triton", "--out", tmp_path / "c.mp4"), 2)
    assert "--kernels triton" in line and leftovers(tmp_path) == []
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter (tests) can run them
    assert build_configs({"prompt": "x"}, {"kernels": "triton"}, None)[1].kernels == "triton"


def test_a_bench_seed_out_of_range_is_refused_before_loading(no_loading, tmp_path):
    line = one_line(run("bench", "--methods", "tape", "--seeds", f"0,{2**64}", "--out", tmp_path / "results"), 2)
    assert "--seeds must be in [0, 2**63)" in line and leftovers(tmp_path) == []


def test_a_jsonl_seed_out_of_range_is_refused_with_its_line_before_loading(no_loading, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle", "seed": 3}\n{"prompt": "a blue square", "seed": %d}\n' % 2**70)
    line = one_line(run("generate", "--prompts", prompts, "--out-dir", tmp_path / "out"), 2)
    assert "line 2: --seed must be in [0, 2**63)" in line and "line 1" not in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ presets and specs, typed


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("generate:\n  steps: abc\n", 'generate.steps must be an integer, got "abc"'),
        ("generate:\n  guidance: '5'\n", 'generate.guidance must be a number, got "5"'),
        ("generate:\n  seed: 1.5\n", "generate.seed must be an integer, got 1.5"),
        ("generate:\n  steps: true\n", "generate.steps must be an integer, got true"),
        ("generate: 5\n", "generate must be a mapping of GenerateConfig keys"),
        ("prune:\n  alpha: high\n", 'prune.alpha must be a number, got "high"'),
        ("prune:\n  fbcache_threshold: 1e-3\n", "YAML reads 1e-3 as text"),
        ("prune:\n  evit_layers: [0.2, x]\n", "prune.evit_layers must be a list of numbers"),
        ("prune:\n  cache: 3\n", "prune.cache must be a string or null, got 3"),
        ("prune:\n  fbcache_threshold: .nan\n", "--fbcache-threshold must be a finite number"),
        ("generate:\n  seed: %d\n" % 2**70, "--seed must be in [0, 2**63)"),
    ],
)
def test_wrong_typed_preset_values_name_the_file_and_key(no_loading, tmp_path, content, fragment):
    preset = tmp_path / "mine.yaml"
    preset.write_text(content)
    line = one_line(run("generate", "--prompt", "a red circle", "--preset", preset, "--out", tmp_path / "c.mp4"), 2)
    assert fragment in line and ("must be a finite" in line or "--seed" in line or str(preset) in line)
    assert leftovers(tmp_path) == ["mine.yaml"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("generate:\n  steps: x\n", 'generate.steps must be an integer, got "x"'),
        ("generate: 5\n", "generate must be a mapping of GenerateConfig keys, got 5"),
        ("prune:\n  unknown_knob: 1\n", "unknown prune keys unknown_knob"),
        ("methods: tape\n", 'methods must be a list of strings, got "tape"'),
        ("seeds: [0, one]\n", "seeds must be a list of integers"),
        ("warmup: many\n", 'warmup must be an integer, got "many"'),
        ("profile_latent: [1, 2]\n", "profile_latent must be a list of 3 integers"),
        ("held_out: two\n", "held_out must be an integer"),
    ],
)
def test_wrong_typed_bench_spec_values_name_the_file_and_key(no_loading, tmp_path, content, fragment):
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    line = one_line(run("bench", "--spec", spec, "--out", tmp_path / "results"), 2)
    assert fragment in line and f"--spec {spec}" in line
    assert leftovers(tmp_path) == ["spec.yaml"]


# ------------------------------------------------------------------------------ every preset key takes effect


def _value_for(key: str, tmp_path: Path, model: Path):
    """A valid value other than the default for each GenerateConfig / PruneConfig field, and the keys that must go
    with it for the run to be valid."""
    values = {
        "prompt": "a blue square moving up", "negative_prompt": "blurry", "model": str(model), "steps": 3,
        "frames": 9, "height": 48, "width": 80, "guidance": 3.5, "max_sequence_length": 12, "seed": 7, "fps": 12,
        "device": "cpu:0", "dtype": "bfloat16", "out": str(tmp_path / "from_preset.mp4"),
        "method": "evit", "reduction": 0.4, "alpha": 0.7, "reselect_every": 3, "schedule": "constant",
        "schedule_delta": 0.05, "schedule_stages": 3, "evit_layers": [0.25, 0.75], "score_queries": 64,
        "kernels": "torch", "cache": "fbcache", "fbcache_threshold": 0.1, "pab_skip": 3, "taylorseer_interval": 4,
        "router": str(REPO / "vidgen_prune" / "tiny" / "router"), "restore": "similar",
        "image": str(_an_image(tmp_path)), "offload": "group", "attention_backend": "_native_math", "compile": True,
        "lora": [str(_a_file(tmp_path, "style_lora.safetensors")) + ":0.5"], "vae_tiling": True,
    }
    companions = {"router": {"method": "router"}}
    assert key in values, f"give the new config field {key!r} a valid non-default value here"
    return values[key], companions.get(key, {})


def _a_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"")
    return path


def _an_image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "first_frame.png"
    Image.new("RGB", (48, 80), (200, 30, 30)).save(path)
    return path


def _section(key: str) -> str:
    return "generate" if key in {f for f in GenerateConfig.__dataclass_fields__} else "prune"


def _write_preset(tmp_path: Path, key: str, value, companions: dict) -> Path:
    import yaml

    sections: dict[str, dict] = {"generate": {}, "prune": {}}
    sections[_section(key)][key] = value
    for other, other_value in companions.items():
        sections[_section(other)][other] = other_value
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump(sections))
    return preset


STAND_IN_PIPELINE = SimpleNamespace(tokenizer=None, transformer=None)  # what a stubbed load returns


class _Reached(Exception):
    """Raised by the stubbed engine once it has the configs a command built."""


@pytest.fixture
def engine_stub(monkeypatch):
    """Commands run up to the engine's door: loading returns a stand-in, the pruner checks and the family's input
    rules pass (an --image for a text-to-video model would stop there), and the first generation records the
    configs it was given and stops the run."""
    seen = []

    def record(pipe, gen, prune, *args, **kwargs):
        seen.append((gen, prune))
        raise _Reached

    monkeypatch.setattr("vidgen_prune.engine.load_pipeline", lambda *a, **k: STAND_IN_PIPELINE)
    monkeypatch.setattr("vidgen_prune.pruning.check_pruner", lambda *a, **k: None)
    monkeypatch.setattr("vidgen_prune.models.denoisers", lambda pipe: [])
    monkeypatch.setattr("vidgen_prune.models.WanAdapter.check_inputs", lambda self, gen, info: None)
    monkeypatch.setattr("vidgen_prune.engine.generate", record)
    return seen


def _as_config_value(key: str, value):
    """A YAML value as its config field holds it: lists become tuples, paths Paths."""
    if key in ("out", "image"):
        return Path(value)
    return tuple(value) if isinstance(value, list) else value


GENERATE_KEYS = list(GenerateConfig.__dataclass_fields__)
PRUNE_KEYS = list(PruneConfig.__dataclass_fields__)


@pytest.mark.parametrize("key", GENERATE_KEYS + PRUNE_KEYS)
def test_every_preset_key_reaches_generate(engine_stub, tiny_model_dir, tmp_path, key):
    value, companions = _value_for(key, tmp_path, tiny_model_dir)
    preset = _write_preset(tmp_path, key, value, companions)
    prompt = [] if key == "prompt" else ["--prompt", "a red circle"]
    out = [] if key == "out" else ["--out", tmp_path / "clip.mp4"]
    result = run("generate", *prompt, "--preset", preset, *out)
    assert result.exit_code == 1 and engine_stub, result.output  # stopped at the engine, nothing refused
    gen, prune = engine_stub[0]
    reached = getattr(gen if _section(key) == "generate" else prune, key)
    assert reached == _as_config_value(key, value)


@pytest.mark.parametrize("key", GENERATE_KEYS + PRUNE_KEYS)
def test_every_preset_key_reaches_visualize_masks(engine_stub, monkeypatch, tiny_model_dir, tmp_path, key):
    pngs = []

    def views(pipe, gen, prunes, layer, step, causal=None):
        engine_stub.append((gen, prunes[0]))
        return []

    def write(views, png, *args):
        pngs.append(png)
        return png.with_suffix(".mp4")

    monkeypatch.setattr("vidgen_prune.viz.check_position", lambda *a, **k: None)
    monkeypatch.setattr("vidgen_prune.viz.mask_views", views)
    monkeypatch.setattr("vidgen_prune.viz.write_mask_files", write)
    monkeypatch.setattr("vidgen_prune.viz.TokenGeometry.of", classmethod(lambda cls, pipe: None))
    value, companions = _value_for(key, tmp_path, tiny_model_dir)
    preset = _write_preset(tmp_path, key, value, companions)
    prompt = [] if key == "prompt" else ["--prompt", "a red circle"]
    result = run("visualize-masks", *prompt, "--preset", preset, "--layer", "1", "--step", "0",
                 *([] if key == "out" else ["--out", tmp_path / "masks.png"]), "--json")
    assert result.exit_code == 0 and engine_stub, result.output
    gen, prune = engine_stub[0]
    if key == "out":  # a preset's generate.out names the PNG (and the MP4 beside it)
        assert pngs == [tmp_path / "from_preset.png"]
    else:
        assert getattr(gen if _section(key) == "generate" else prune, key) == _as_config_value(key, value)


BENCH_AXES = {"prompt": "prompts", "seed": "seeds", "method": "methods", "reduction": "reductions",
              "cache": "methods"}


@pytest.mark.parametrize("key", [k for k in GENERATE_KEYS + PRUNE_KEYS if k != "out"])
def test_every_preset_key_reaches_bench(engine_stub, monkeypatch, tiny_model_dir, tmp_path, key):
    from vidgen_prune.bench import Bench

    def record(self, pipe=None):
        engine_stub.append((self.spec, None))
        raise _Reached

    monkeypatch.setattr(Bench, "run", record)
    value, companions = _value_for(key, tmp_path, tiny_model_dir)
    preset = _write_preset(tmp_path, key, value, companions)
    prompt = ["--prompt", "a red circle"] if key == "model" else []  # another model has no held-out prompts
    result = run("bench", "--preset", preset, *prompt, "--out", tmp_path / "results")
    assert result.exit_code == 1 and engine_stub, result.output
    spec = engine_stub[0][0]
    if key in BENCH_AXES:  # a bench varies these per run: the preset's value is the axis' one value
        expected = {"method": "evit", "cache": "fbcache"}.get(key, value)
        assert getattr(spec, BENCH_AXES[key]) == (expected,)
    else:
        assert getattr(spec.gen if _section(key) == "generate" else spec.prune, key) == _as_config_value(key, value)


def test_a_preset_out_is_refused_by_bench(no_loading, tmp_path):
    preset = _write_preset(tmp_path, "out", str(tmp_path / "x.mp4"), {})
    assert "generate.out" in one_line(run("bench", "--preset", preset, "--out", tmp_path / "results"), 2)


@pytest.mark.parametrize("key", [k for k in GENERATE_KEYS if k not in ("prompt", "out", "image")])  # text-to-video only
def test_every_preset_generate_key_reaches_train_router(monkeypatch, tiny_model_dir, tmp_path, key):
    """train-router takes the model's preset (no --preset): its generate section sets the teacher trajectories."""
    seen = []

    def record(pipe, config, first_step):
        seen.append(config)
        raise _Reached

    value, companions = _value_for(key, tmp_path, tiny_model_dir)
    preset = _write_preset(tmp_path, key, value, companions)
    monkeypatch.setattr("vidgen_prune.presets.default_preset", lambda model, causal=False: str(preset))
    monkeypatch.setattr("vidgen_prune.engine.load_pipeline", lambda *a, **k: STAND_IN_PIPELINE)
    monkeypatch.setattr("vidgen_prune.commands.train_router._train_with_progress", record)
    prompts = tmp_path / "train.txt"
    prompts.write_text("a red circle\n")
    result = run("train-router", "--prompts", prompts, "--out", tmp_path / "router")
    assert result.exit_code == 1 and seen, result.output
    assert getattr(seen[0].sampling, key) == _as_config_value(key, value)
    if key == "seed":
        assert seen[0].seed == value  # the router's own initialisation and draws too


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--method", "tome", "method"), ("--reduction", "0.2", "reduction"), ("--seed", "3", "seed"),
     ("--dtype", "float16", "dtype"), ("--steps", "4", "steps")],
)
def test_a_flag_overrides_the_preset(engine_stub, tmp_path, flag, value, field):
    preset = tmp_path / "preset.yaml"
    preset.write_text("generate:\n  seed: 7\n  dtype: bfloat16\n  steps: 3\nprune:\n  method: evit\n  reduction: 0.5\n")
    result = run("generate", "--prompt", "a red circle", "--preset", preset, flag, value, "--out", tmp_path / "c.mp4")
    assert result.exit_code == 1 and engine_stub, result.output
    gen, prune = engine_stub[0]
    assert str(getattr(gen if hasattr(gen, field) else prune, field)) == value
    if field != "seed":
        assert gen.seed == 7  # the preset's other keys stand
    if field != "method":
        assert prune.method == "evit"


def test_without_flags_generate_takes_the_embedded_preset_and_else_tape_at_0_3(engine_stub, tmp_path):
    result = run("generate", "--prompt", "a red circle", "--out", tmp_path / "c.mp4")
    assert result.exit_code == 1 and engine_stub, result.output
    gen, prune = engine_stub[0]  # the embedded model's preset: the restoration bench's choice
    assert (prune.method, prune.reduction, prune.restore) == ("stavit", 0.3, "neighbours")
    assert (gen.seed, gen.device, gen.dtype) == (0, "cpu", "float32")
    preset = tmp_path / "no-prune.yaml"  # a preset that says nothing of pruning: the CLI's own defaults
    preset.write_text("generate:\n  steps: 3\n")
    result = run("generate", "--prompt", "a red circle", "--preset", preset, "--out", tmp_path / "c.mp4")
    assert result.exit_code == 1 and len(engine_stub) == 2, result.output
    gen, prune = engine_stub[1]
    assert (prune.method, prune.reduction, prune.restore, gen.steps) == ("tape", 0.3, "none", 3)


# ------------------------------------------------------------------------------ batch


def test_a_bom_and_crlf_prompt_file_reads_as_plain_utf8(tmp_path):
    build = lambda gen, prune: build_configs(gen, {"method": "tape"} | prune, None)  # noqa: E731
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_bytes("\ufeff".encode() + b'{"prompt": "a red circle", "seed": 5, "overrides": {"steps": 3}}\r\n'
                      b'{"prompt": "a blue square"}\r\n')
    first, second = read_prompt_file(jsonl, build)
    assert (first.gen.prompt, first.gen.seed, first.gen.steps, second.gen.prompt) == ("a red circle", 5, 3,
                                                                                       "a blue square")
    text = tmp_path / "prompts.txt"
    text.write_bytes("\ufeffa red circle\r\n\r\na blue square\r\n".encode())
    assert [item.gen.prompt for item in read_prompt_file(text, build)] == ["a red circle", "a blue square"]


HOLD_LOCK = """
import sys, time
from vidgen_prune.batch import OutDirLock, World
lock = OutDirLock(sys.argv[1], World()).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock_in_another_process(out_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_live_run_on_an_out_dir_is_refused_naming_the_holder(no_loading, tmp_path):
    out_dir = tmp_path / "out"
    holder = _hold_lock_in_another_process(out_dir)
    try:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a red circle\n")
        line = one_line(run("generate", "--prompts", prompts, "--out-dir", out_dir), 2)
        assert f"in use by another vidprune run (PID {holder.pid})" in line
        assert leftovers(out_dir) == []
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out_dir = tmp_path / "out"
    holder = _hold_lock_in_another_process(out_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with OutDirLock(out_dir, World()).acquire() as lock:
        assert lock.locked
        assert json.loads((out_dir / ".vidprune.rank0.lock").read_text())["pid"] == os.getpid()


def test_ranks_of_one_torchrun_job_share_the_folder_and_another_job_is_refused(tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    rank0 = OutDirLock(out_dir, World(0, 2, 0)).acquire()
    rank1 = OutDirLock(out_dir, World(1, 2, 1)).acquire()  # same job: admitted
    assert rank0.locked and rank1.locked
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    for world in (World(1, 2, 1), World(2, 3, 0)):  # its own rank's file is held; another rank's file is job a's
        with pytest.raises(ValueError, match=f"PID {os.getpid()}"):
            OutDirLock(out_dir, world).acquire()
    rank0.release()
    rank1.release()
    assert OutDirLock(out_dir, World(2, 3, 0)).acquire().locked  # job a gone: job b's rank takes the folder


def test_a_filesystem_without_locks_runs_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = OutDirLock(tmp_path / "out", World()).acquire()
    assert not lock.locked


# ------------------------------------------------------------------------------ unknown words


def test_words_outside_the_vocabulary_are_named_in_one_warning_and_the_run_goes_on(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("generate", "--prompt", "a Red zebra circle, moving 🦓", "--model", tiny_model_dir, *SMALL,
                 "--out", out, "--json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), result.stderr
    assert all(word in warnings[0] for word in ("'Red' (known as 'red')", "'zebra'", "'circle,' (known as "
                                                "'circle')", "'🦓'"))
    assert "'a'" not in warnings[0] and "'moving'" not in warnings[0]
    assert out.exists() and out.with_suffix(".json").exists()


def test_known_words_and_subword_tokenizers_give_no_warning(tiny_model_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from vidgen_prune.vocabulary import unknown_words

    assert unknown_words(AutoTokenizer.from_pretrained(tiny_model_dir / "tokenizer"), "a red circle moving left") == []
    bpe = Tokenizer(models.BPE({"<unk>": 0, "a": 1, "b": 2}, [], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    assert unknown_words(PreTrainedTokenizerFast(tokenizer_object=bpe), "zebra") == []  # not word-level


# ------------------------------------------------------------------------------ threads


ENTRY_POINTS = {
    "console script": "import vidgen_prune.cli",  # what `vidprune` (vidgen_prune.cli:app) imports
    "python -m": "import runpy; sys.argv = ['vidprune', '--help']\ntry:\n    runpy.run_module('vidgen_prune', "
                 "run_name='__main__')\nexcept SystemExit:\n    pass",
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_the_cli_chooses_the_openmp_wait_policy_before_torch_loads(entry, given):
    code = "import os, sys\n" + ENTRY_POINTS[entry] + textwrap.dedent("""
        assert "torch" not in sys.modules, "torch loaded before the policy was set"
        from vidgen_prune.threads import another_task_running
        print(os.environ.get("OMP_WAIT_POLICY", "unset"), another_task_running())
    """)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": given} if given
                                                                            else {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    policy, busy = done.stdout.strip().splitlines()[-1].split()
    if given:
        assert policy == given  # the user's choice stands
    else:  # chosen from what ran at import time (the decision itself: the test below)
        assert policy in ("PASSIVE", "unset") and busy in ("True", "False")


@pytest.mark.parametrize(("loadavg", "busy"), [("0.30 0.20 0.10 1/93 4242\n", False),
                                               ("1.90 1.20 0.80 3/95 4242\n", True),
                                               (None, True), ("garbled\n", True)])
def test_the_wait_policy_is_passive_only_beside_another_running_task_and_never_over_the_users(tmp_path, loadavg,
                                                                                           busy):
    from vidgen_prune.threads import another_task_running, choose_wait_policy

    path = tmp_path / "loadavg"
    if loadavg is not None:
        path.write_text(loadavg)
    assert another_task_running(str(path)) is busy
    environ: dict = {}
    choose_wait_policy(environ, busy)
    assert environ == ({"OMP_WAIT_POLICY": "PASSIVE"} if busy else {})
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    choose_wait_policy(environ, True)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}


