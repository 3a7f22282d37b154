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

Prompt = Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")]
NegativePrompt = Annotated[Optional[str], typer.Option(help="Negative prompt (CFG's unconditional pass).")]
Model = Annotated[
    Optional[str], typer.Option(help="diffusers pipeline folder or hub id; default: the embedded tiny Wan model.")
]
Method = Annotated[str, typer.Option(help=f"Pruning method: {', '.join(METHODS)}.")]
Reduction = Annotated[float, typer.Option(help="Mean fraction of token·block computations skipped, in [0, 0.95).")]
Alpha = Annotated[Optional[float], typer.Option(help="TAPE smoothing weight α (Eq. 2); smaller smooths more.")]
ReselectEvery = Annotated[Optional[int], typer.Option(help="TAPE: dense rescoring block every R blocks.")]
Schedule = Annotated[Optional[str], typer.Option(help="TAPE timestep budget: highlow, constant or lowhigh.")]
ScheduleDelta = Annotated[Optional[float], typer.Option(help="HighLow/LowHigh swing δ around the mean rate.")]
Kernels = Annotated[Optional[str], typer.Option(help="auto (Triton on CUDA), triton or torch.")]
RouterDir = Annotated[
    Optional[str], typer.Option(help="--method router: a train-router output folder; default: the embedded model's.")
]
Steps = Annotated[Optional[int], typer.Option(help="Denoising steps.")]
Frames = Annotated[Optional[int], typer.Option(help="Frames (4k+1).")]
Height = Annotated[Optional[int], typer.Option(help="Height in pixels (multiple of 16).")]
Width = Annotated[Optional[int], typer.Option(help="Width in pixels (multiple of 16).")]
Guidance = Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Fps = Annotated[Optional[int], typer.Option(help="Frames per second of the MP4.")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")]
Dtype = Annotated[str, typer.Option(help="float32, bfloat16 or float16 (the VAE stays float32).")]
Preset = Annotated[
    Optional[str],
    typer.Option(help="Preset name (tiny-wan, wan2.1-1.3b, wan2.1-14b; for --causal tiny-wan-causal, "
                 "self-forcing-1.3b) or YAML path; flags override."),
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


def load_checked_pipeline(gen, prunes: list, verbose: bool):
    """Load `gen`'s pipeline (a failure is exit 1), then refuse (exit 2) any pruning config it cannot run."""
    with runtime_failure(verbose):
        from ..engine import load_pipeline

        pipe = load_pipeline(gen.model, gen.device, gen.dtype)
    with bad_input():
        from ..pruning import check_pruner

        for prune in prunes:
            check_pruner(prune, pipe.transformer)
    return pipe


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
