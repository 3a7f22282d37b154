"""Held-out prompt adherence of the embedded tiny model, scored by ``vidgen_prune.tiny.checker``.

    python -m vidgen_prune.tiny.evaluate                 # all held-out prompts, GENERATION_DEFAULTS
    python -m vidgen_prune.tiny.evaluate --limit 10 --json results.json
    python -m vidgen_prune.tiny.evaluate --vae-round-trip   # the ceiling: rendered videos through the VAE only

Each prompt of ``prompts.HELD_OUT_PROMPTS`` (combinations never rendered for training) is generated dense
with seed = its index, and the checker reports colour / shape / motion / background correctness.
With ``--vae-round-trip`` the prompt's own rendered video is encoded and decoded instead: what the VAE alone
keeps, an upper bound for anything the transformer generates.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vidgen_prune.config import GenerateConfig, PruneConfig
from vidgen_prune.engine import generate
from vidgen_prune.tiny import EMBEDDED_MODEL_DIR, GENERATION_DEFAULTS
from vidgen_prune.tiny.checker import ATTRIBUTES, detect, score_video
from vidgen_prune.tiny.prompts import HELD_OUT_PROMPTS, parse_caption
from vidgen_prune.tiny.synthetic import render_batch, to_model_range


def load_embedded_pipeline(model_dir: Path = EMBEDDED_MODEL_DIR):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_frames(pipe, prompt: str, seed: int, **overrides) -> np.ndarray:
    """One dense generation through the engine as uint8 (F, H, W, 3); ``overrides`` replace GENERATION_DEFAULTS keys."""
    gen = GenerateConfig(prompt=prompt, seed=seed, **{**GENERATION_DEFAULTS, **overrides})
    return generate(pipe, gen, PruneConfig()).frames


@torch.no_grad()
def round_trip_frames(pipe, prompt: str, seed: int, **overrides) -> np.ndarray:
    """The prompt's rendered video through the VAE (encode, posterior mean, decode) as uint8 (F, H, W, 3)."""
    settings = {**GENERATION_DEFAULTS, **overrides}
    video = render_batch([parse_caption(prompt)], seed, settings["frames"], settings["height"], settings["width"])
    latents = pipe.vae.encode(torch.from_numpy(to_model_range(video))).latent_dist.mode()
    decoded = pipe.vae.decode(latents, return_dict=False)[0][0].clamp(-1.0, 1.0)  # (3, F, H, W)
    return np.rint((decoded.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).astype(np.uint8)


def evaluate(pipe, prompts: tuple[str, ...] = HELD_OUT_PROMPTS, frames_of=generate_frames, **overrides) -> dict:
    """Checker scores of ``frames_of(pipe, prompt, seed, **overrides)`` for each prompt, seed = its index."""
    rows = []
    for index, prompt in enumerate(prompts):
        start = time.perf_counter()
        frames = frames_of(pipe, prompt, seed=index, **overrides)
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
    parser.add_argument("--size", type=int, default=GENERATION_DEFAULTS["height"], help="frame side in pixels")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    parser.add_argument("--vae-round-trip", action="store_true", help="score rendered videos through the VAE only")
    args = parser.parse_args(argv)
    pipe = load_embedded_pipeline(args.model)
    frames_of = round_trip_frames if args.vae_round_trip else generate_frames
    result = evaluate(pipe, HELD_OUT_PROMPTS[: args.limit], frames_of, steps=args.steps, guidance=args.guidance,
                      height=args.size, width=args.size)
    for row in result["rows"]:
        marks = " ".join(f"{name}={'ok' if row[name] else 'NO'}" for name in ATTRIBUTES)
        print(f"{row['prompt']:<55} {marks}  seen={row['seen']}")
    print(f"held-out prompts: {result['prompts']}  steps={args.steps} guidance={args.guidance} size={args.size}")
    for name in ATTRIBUTES:
        print(f"  {name:<10} {100.0 * result['accuracy'][name]:5.1f} %")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
