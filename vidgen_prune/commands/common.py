"""What every command shares: option aliases, error handling with documented exit codes, result rendering."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..pruning import METHODS

console = Console(stderr=True)

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT = 0, 1, 2

Prompt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text prompt (or the preset's).")]
NegativePrompt = Annotated[Optional[str], typer.Option(help="Negative prompt (CFG's unconditional pass).")]
Model = Annotated[
    Optional[str], typer.Option(help="diffusers pipeline folder or hub id; default: the embedded tiny Wan model.")
]
# flags whose value a preset may also set are None when not given, so that the preset's value stands; the
# command's own default (written in the help) sits below the preset
Method = Annotated[Optional[str], typer.Option(help=f"Pruning method: {', '.join(METHODS)} (default tape).")]
Reduction = Annotated[
    Optional[float], typer.Option(help="Mean fraction of token·block computations skipped, in [0, 0.95) (default 0.3).")
]
Alpha = Annotated[Optional[float], typer.Option(help="TAPE smoothing weight α (Eq. 2); smaller smooths more.")]
ReselectEvery = Annotated[Optional[int], typer.Option(help="TAPE: dense rescoring block every R blocks.")]
Schedule = Annotated[Optional[str], typer.Option(help="TAPE timestep budget: highlow, constant or lowhigh.")]
ScheduleDelta = Annotated[Optional[float], typer.Option(help="HighLow/LowHigh swing δ around the mean rate.")]
Kernels = Annotated[Optional[str], typer.Option(help="auto (Triton on CUDA), triton or torch.")]
Restore = Annotated[
    Optional[str],
    typer.Option(help="Skipped tokens' update: none, similar (best-matching kept token of the frame) or neighbours "
                      "(mean of the kept 3×3×3 space-time neighbours)."),
]
RouterDir = Annotated[
    Optional[str], typer.Option(help="--method router: a train-router output folder; default: the embedded model's.")
]
Steps = Annotated[Optional[int], typer.Option(help="Denoising steps.")]
Frames = Annotated[Optional[int], typer.Option(help="Frames (the family's rule: Wan 4k+1, LTX-Video 8k+1).")]
Height = Annotated[Optional[int], typer.Option(help="Height in pixels (Wan: a multiple of 16, LTX-Video: 32).")]
Width = Annotated[Optional[int], typer.Option(help="Width in pixels (Wan: a multiple of 16, LTX-Video: 32).")]
Guidance = Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed, in [0, 2**63) (default 0).")]
Fps = Annotated[Optional[int], typer.Option(help="Frames per second of the MP4.")]
Device = Annotated[
    Optional[str], typer.Option(help="torch device: cpu, cuda, cuda:1, ... (default: cuda when available, else cpu).")
]
Dtype = Annotated[
    Optional[str],
    typer.Option(help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, else float32; the VAE stays float32)."),
]
Offload = Annotated[
    Optional[str],
    typer.Option(help="diffusers CPU offload: model (components move to the GPU as they run), group (one block at a "
                      "time, the next prefetched) or sequential (dense only)."),
]
AttentionBackend = Annotated[
    Optional[str], typer.Option(help="diffusers attention backend of the blocks: native, flash, _flash_3, sage, ...")
]
CompileBlocks = Annotated[Optional[bool], typer.Option("--compile", help="torch.compile each transformer block.")]
Lora = Annotated[
    Optional[list[str]],
    typer.Option(help="LoRA weights (file or folder), PATH or PATH:SCALE; repeatable; loaded with the pipeline's own "
                      "loader (needs peft)."),
]
ImagePath = Annotated[
    Optional[Path], typer.Option("--image", help="Image-to-video pipelines: the conditioning first frame.")
]
VaeTiling = Annotated[Optional[bool], typer.Option("--vae-tiling", help="Decode large frames tile by tile.")]
Preset = Annotated[
    Optional[str], typer.Option(help="Preset name (presets/*.yaml: wan2.1-1.3b, ltx-video, ...; for --causal "
                                   "tiny-wan-causal, self-forcing-1.3b) or YAML path; flags override; default: the "
                                   "model's own.")
]
OutPath = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output MP4 path (a .json sidecar goes beside).")]
OptionalPrompt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text prompt (or --prompts FILE).")]
PromptsFile = Annotated[
    Optional[Path],
    typer.Option(
        "--prompts",
        help="Prompt file: one prompt per line, or JSONL {prompt, negative, seed, overrides}; needs --out-dir. "
        "Under torchrun the ranks share the items (and --json prints one line per rank).",
    ),
]
OutDir = Annotated[
    Optional[Path],
    typer.Option(help="--prompts: folder for one MP4 + JSON per item and manifest.rank*.jsonl; re-running resumes."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout, for scripts.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr: progress, tracebacks.")]


def fail(message: str, code: int) -> None:
    one_line = " ".join(message.split())  # scripts read the first line; exceptions may carry several
    console.print(f"[red]error:[/red] {escape(one_line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def bad_input():
    """ValueError while validating input → one line and exit 2; nothing has been computed or written yet."""
    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        fail(str(error), EXIT_BAD_INPUT)


@contextmanager
def runtime_failure(verbose: bool = False):
    """Anything failing once work has started → one line and exit 1 (the traceback with --verbose)."""
    try:
        yield
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - the CLI boundary: report, don't crash
        if verbose:
            console.print_exception()
        fail(f"{type(error).__name__}: {error}", EXIT_RUNTIME)


def check_model(gen, prunes: list, info=None):
    """Refuse (ValueError) before any weight is read: a model folder or id that is not a supported pipeline, settings
    its family's rules forbid, a budget its depth cannot reach. Returns what the model's JSON files say (`info`, when
    given, is that already read)."""
    from ..compose import check_pruning_setup
    from ..models import inspect_model
    from ..pruning import check_method, make_pruner

    if gen.device == "meta":
        raise ValueError("--device meta holds no weights: it is for bench --profile's FLOP bound of a real-size model")
    info = info or inspect_model(gen.model)
    info.adapter.check_inputs(gen, info)
    for prune in prunes:
        check_pruning_setup(gen, prune)
        check_method(prune.method, info.adapter)
        make_pruner(prune).check_budget(info.adapter.num_blocks(info))
    return info


def load_checked_pipeline(gen, prunes: list, verbose: bool):
    """Check `gen`'s model before loading (exit 2), load it (a failure is exit 1), then refuse (exit 2) any pruning
    config the loaded model cannot run (a router trained for another model), and warn about prompt words the model
    cannot read."""
    with bad_input():
        check_model(gen, prunes)
    with runtime_failure(verbose):
        from ..engine import load_pipeline

        pipe = load_pipeline(gen.model, gen.device, gen.dtype, setup=gen)
    with bad_input():
        from ..models import denoisers
        from ..pruning import check_pruner

        for prune in prunes:
            for transformer in denoisers(pipe):
                check_pruner(prune, transformer)
    warn_unknown_words(pipe, {"prompt": gen.prompt, "negative prompt": gen.negative_prompt})
    return pipe


def warn_unknown_words(pipe, texts: dict[str, str]) -> None:
    """One warning line naming the words of `texts` (label → text) that the model's vocabulary lacks; the run goes
    on (they are read as its unknown token)."""
    from ..vocabulary import unknown_words

    found = {label: words for label, text in texts.items() if (words := unknown_words(pipe.tokenizer, text))}
    if found:
        listed = "; ".join(f"{label}: {', '.join(words)}" for label, words in found.items())
        console.print(f"[yellow]warning:[/yellow] words outside the model's vocabulary, read as unknown: "
                      f"{escape(listed)}", highlight=False, soft_wrap=True)


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


def print_json(data: dict) -> None:
    import json

    sys.stdout.write(json.dumps(data, default=str) + "\n")

Causal = Annotated[
    bool, typer.Option("--causal", help="Causal generation: chunk by chunk against a rolling KV cache, streamed to "
                       "the MP4 (default model: the embedded causal one).")
]
ChunkFrames = Annotated[Optional[int], typer.Option(help="--causal: latent frames per chunk (Self-Forcing: 3).")]
ChunkSteps = Annotated[Optional[int], typer.Option(help="--causal: denoising steps per chunk (Self-Forcing: 4).")]
KvWindow = Annotated[
    Optional[int], typer.Option(help="--causal: latent frames the KV cache keeps, sink frames included (default all).")
]
SinkFrames = Annotated[Optional[int], typer.Option(help="--causal: first latent frames the KV window never evicts.")]
TransformerWeights = Annotated[
    Optional[str], typer.Option(help="--causal: a Self-Forcing / CausVid transformer state dict with the original "
                                "Wan key names (.pt or .safetensors), loaded into --model's transformer.")
]
