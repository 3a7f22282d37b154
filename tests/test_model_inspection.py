"""A model is judged from its JSON files before any weight is read: unsupported or broken ones exit 2, one line."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from vidgen_prune.cli import app
from vidgen_prune.models import inspect_model

SMALL = ["--steps", "2", "--frames", "5", "--height", "32", "--width", "32"]

OPENED: list[str] = []  # every file opened while RECORDING (an audit hook cannot be removed, so it is gated)
RECORDING = [False]


def _audit(event, args):
    if RECORDING[0] and event == "open" and isinstance(args[0], str):
        OPENED.append(args[0])


sys.addaudithook(_audit)


def unsupported_folder(folder):
    """An Allegro pipeline's layout (a diffusers video model vidprune has no adapter for), with a weights file."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "AllegroPipeline", "transformer": ["diffusers", "AllegroTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLAllegro"],
    }))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "AllegroTransformer3DModel"}))
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 4096)
    return folder


def run(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_one_line_exit_2(result, fragment: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output


COMMANDS = {
    "generate": lambda model, tmp: ["generate", "--prompt", "a red circle", "--model", model, *SMALL, "--out",
                                    tmp / "clip.mp4"],
    "batch": lambda model, tmp: ["generate", "--prompts", _prompt_file(tmp), "--out-dir", tmp / "out", "--model", model,
                                 *SMALL],
    "bench": lambda model, tmp: ["bench", "--prompt", "a red circle", "--methods", "dense,tape", "--reductions", "0.3",
                                 "--model", model, *SMALL, "--out", tmp / "bench"],
    "train-router": lambda model, tmp: ["train-router", "--prompts", _prompt_file(tmp), "--out", tmp / "router",
                                        "--model", model, "--frames", "5", "--height", "32", "--width", "32"],
    "visualize-masks": lambda model, tmp: ["visualize-masks", "--prompt", "a red circle", "--layer", "1", "--step", "0",
                                           "--model", model, *SMALL, "--out", tmp / "masks.png"],
}


def _prompt_file(tmp):
    path = tmp / "prompts.txt"
    path.write_text("a red circle\n")
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unsupported_architecture_is_refused_before_any_weight_is_read(tmp_path, command):
    folder = unsupported_folder(tmp_path / "allegro")
    OPENED.clear()
    RECORDING[0] = True
    try:
        result = run(*COMMANDS[command](folder, tmp_path))
    finally:
        RECORDING[0] = False
    assert_one_line_exit_2(result, "AllegroPipeline with AllegroTransformer3DModel is not supported; supported "
                                   "families: wan (WanPipeline")
    assert not [path for path in OPENED if path.endswith((".safetensors", ".bin"))], OPENED
    assert {p.name for p in tmp_path.iterdir()} <= {"allegro", "prompts.txt"}  # nothing written


def test_broken_model_folders_are_refused_with_one_line(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_exit_2(run(*COMMANDS["generate"](empty, tmp_path)), "not a diffusers pipeline folder")

    bad_json = tmp_path / "bad_json"
    shutil.copytree(tiny_model_dir, bad_json)
    (bad_json / "model_index.json").write_text("{not json")
    assert_one_line_exit_2(run(*COMMANDS["generate"](bad_json, tmp_path)), "model_index.json is not valid JSON")

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_one_line_exit_2(run(*COMMANDS["generate"](truncated, tmp_path)), "truncated or corrupt")

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert_one_line_exit_2(run(*COMMANDS["generate"](no_weights, tmp_path)), "no weight files")

    no_transformer = tmp_path / "no_transformer"
    shutil.copytree(tiny_model_dir, no_transformer)
    index = json.loads((no_transformer / "model_index.json").read_text())
    index["transformer"] = [None, None]
    (no_transformer / "model_index.json").write_text(json.dumps(index))
    assert_one_line_exit_2(run(*COMMANDS["generate"](no_transformer, tmp_path)), "has no transformer to prune")
    assert not (tmp_path / "clip.mp4").exists()


def test_an_unknown_hub_id_is_bad_input(tmp_path, monkeypatch):
    import huggingface_hub

    class RepositoryNotFoundError(Exception):
        pass

    def no_such_repo(repo, filename, **kwargs):
        raise RepositoryNotFoundError(f"404 Client Error for {repo}\nRepository Not Found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_such_repo)
    result = run(*COMMANDS["generate"]("nosuch-org/nosuch-model", tmp_path))
    assert_one_line_exit_2(result, "--model nosuch-org/nosuch-model: not a local folder")
    assert "no such repository on the hub" in result.output


def test_inspection_reads_the_pipeline_and_its_denoisers(tiny_model_dir):
    info = inspect_model(str(tiny_model_dir))
    assert (info.pipeline_class, info.transformer_class, info.denoisers) == (
        "WanPipeline", "WanTransformer3DModel", ("transformer",))
    assert info.adapter.num_blocks(info) == 6
