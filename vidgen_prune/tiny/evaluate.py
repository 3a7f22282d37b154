"""Held-out prompt adherence of the embedded tiny model, scored by ``vidgen_prune.tiny.checker``.

    python -m vidgen_prune.tiny.evaluate                 # all held-out prompts, GENERATION_DEFAULTS
    python -m vidgen_prune.tiny.evaluate --limit 10 --json results.json

Each prompt of ``prompts.HELD_OUT_PROMPTS`` (combinations never rendered for training) is generated dense
with seed = its index, and the checker reports colour / shape / motion / background correctness.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vidgen_prune.tiny import EMBEDDED_MODEL_DIR, GENERATION_DEFAULTS
from vidgen_prune.tiny.checker import detect, score_video
from vidgen_prune.tiny.prompts import HELD_OUT_PROMPTS

ATTRIBUTES = ("colour", "shape", "motion", "background")


def load_embedded_pipeline(model_dir: Path = EMBEDDED_MODEL_DIR):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_frames(pipe, prompt: str, seed: int, **overrides) -> np.ndarray:
    """One dense generation as uint8 (F, H, W, 3); ``overrides`` replace keys of GENERATION_DEFAULTS."""
    settings = {**GENERATION_DEFAULTS, **overrides}
    output = pipe(
        prompt,
        num_frames=settings["frames"],
        height=settings["height"],
        width=settings["width"],
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance"],
        max_sequence_length=settings["max_sequence_length"],
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return np.rint(output.frames[0] * 255.0).clip(0, 255).astype(np.uint8)  # (F, H, W, 3)


def evaluate(pipe, prompts: tuple[str, ...] = HELD_OUT_PROMPTS, **overrides) -> dict:
    rows = []
    for index, prompt in enumerate(prompts):
        start = time.perf_counter()
        frames = generate_frames(pipe, prompt, seed=index, **overrides)
        seconds = time.perf_counter() - start
        rows.append({"prompt": prompt, "seed": index, "seconds": round(seconds, 2), **score_video(frames, prompt),
                     "seen": detect(frames).__dict__})
    accuracy = {name: float(np.mean([row[name] for row in rows])) for name in ATTRIBUTES}
    return {"prompts": len(rows), "accuracy": accuracy, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="pipeline folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out prompts")
    parser.add_argument("--steps", type=int, default=GENERATION_DEFAULTS["steps"])
    parser.add_argument("--guidance", type=float, default=GENERATION_DEFAULTS["guidance"])
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args(argv)
    pipe = load_embedded_pipeline(args.model)
    result = evaluate(pipe, HELD_OUT_PROMPTS[: args.limit], steps=args.steps, guidance=args.guidance)
    for row in result["rows"]:
        marks = " ".join(f"{name}={'ok' if row[name] else 'NO'}" for name in ATTRIBUTES)
        print(f"{row['prompt']:<55} {marks}  seen={row['seen']}")
    print(f"held-out prompts: {result['prompts']}  steps={args.steps} guidance={args.guidance}")
    for name in ATTRIBUTES:
        print(f"  {name:<10} {100.0 * result['accuracy'][name]:5.1f} %")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
