"""The `vidprune` command line: a thin Typer app; each command lives in `vidgen_prune/commands/`."""

from __future__ import annotations

import typer

from . import threads  # noqa: F401 - before any module that imports torch: it sets the OpenMP wait policy
from .commands.bench import bench
from .commands.generate import generate
from .commands.train_router import train_router
from .commands.visualize_masks import visualize_masks

app = typer.Typer(
    name="vidprune",
    help="Faster diffusion-transformer video generation by token pruning, with the quality cost measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Exit codes: 0 ok, 1 runtime failure, 2 bad input (refused before any compute, no output written)."""


app.command()(generate)
app.command()(bench)
app.command("train-router")(train_router)
app.command("visualize-masks")(visualize_masks)

if __name__ == "__main__":
    app()
