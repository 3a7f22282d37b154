"""Where a default dense generation's time goes: text encoding, transformer, VAE decode, the rest.

Loads each pipeline folder (default: the embedded model), warms it up once, then generates the embedded model's
default video densely in rounds that alternate the folders' order, so a drifting machine load hits them alike.
Prints each run and the medians; the non-transformer share is 1 − transformer time / pipeline time.

    OMP_NUM_THREADS=1 python benchmarks/time_split.py [FOLDER ...] --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def timed(obj, name: str, totals: dict, key: str) -> None:
    """Wrap obj.name so that its wall time adds up in totals[key]."""
    call = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    setattr(obj, name, wrapper)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=[None], help="pipeline folders (default: the embedded model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", default="a red circle moving right on a black background")
    args = parser.parse_args(argv)

    import torch

    from vidgen_prune.config import GenerateConfig, PruneConfig
    from vidgen_prune.engine import generate, load_pipeline
    from vidgen_prune.tiny import GENERATION_DEFAULTS

    torch.set_num_threads(1)
    gen = GenerateConfig(prompt=args.prompt, seed=0, **GENERATION_DEFAULTS)
    totals: dict[str, float] = {}
    pipes = {}
    for folder in args.folders:
        pipe = load_pipeline(folder)
        timed(pipe, "encode_prompt", totals, "text_s")
        timed(pipe.vae, "decode", totals, "vae_decode_s")
        generate(pipe, gen, PruneConfig())  # warm-up
        pipes[folder or "embedded"] = pipe
    rows: dict[str, list[dict]] = {name: [] for name in pipes}
    for round_index in range(args.rounds):
        for name in (list(pipes) if round_index % 2 == 0 else list(pipes)[::-1]):
            totals.clear()
            result = generate(pipes[name], gen, PruneConfig())
            row = {"total_s": result.total_s, "transformer_s": result.transformer_s, **totals}
            row["rest_s"] = row["total_s"] - row["transformer_s"] - row["text_s"] - row["vae_decode_s"]
            row["non_transformer_share"] = 1.0 - result.transformer_s / result.total_s
            rows[name].append(row)
            print(name, json.dumps({key: round(value, 3) for key, value in row.items()}), flush=True)
    for name, runs in rows.items():
        medians = {key: round(statistics.median(run[key] for run in runs), 4) for key in runs[0]}
        print("median", name, json.dumps(medians))


if __name__ == "__main__":
    main()
