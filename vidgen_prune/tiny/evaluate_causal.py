"""Held-out adherence and chunk-boundary jumps of the embedded causal model.

    python -m vidgen_prune.tiny.evaluate_causal                      # the shipped causal transformer
    python -m vidgen_prune.tiny.evaluate_causal --transformer runs/c1  # a candidate transformer folder
    python -m vidgen_prune.tiny.evaluate_causal --mode zero-shot     # the bidirectional transformer, run causally
    python -m vidgen_prune.tiny.evaluate_causal --mode bidirectional # the ordinary dense pipeline, same boundaries

Each of ``prompts.HELD_OUT_PROMPTS`` is generated with seed = its index and scored by the checker, as
``vidgen_prune.tiny.evaluate`` does; each video's frame-to-frame change across the chunk boundaries is set against
the change inside chunks (``metrics.boundary``), averaged over prompts. ``--mode bidirectional`` measures the same
boundary frames on videos that have no chunks, the VAE's own share of any jump.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vidgen_prune.causal.config import CausalConfig
from vidgen_prune.causal.sampler import generate_causal
from vidgen_prune.config import GenerateConfig
from vidgen_prune.metrics.boundary import boundary_jump, chunk_first_frames
from vidgen_prune.presets import EMBEDDED_CAUSAL_PRESET, load_preset
from vidgen_prune.tiny import GENERATION_DEFAULTS
from vidgen_prune.tiny.checker import ATTRIBUTES
from vidgen_prune.tiny.evaluate import evaluate, generate_frames
from vidgen_prune.tiny.prompts import HELD_OUT_PROMPTS

MODES = ("causal", "zero-shot", "bidirectional")


def main(argv: list[str] | None = None) -> None:
    preset = load_preset(EMBEDDED_CAUSAL_PRESET)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="causal")
    parser.add_argument("--transformer", default=None, help="causal transformer folder (default: the shipped one)")
    parser.add_argument("--chunk-frames", type=int, default=preset["causal"]["chunk_frames"])
    parser.add_argument("--chunk-steps", type=int, default=preset["causal"]["chunk_steps"])
    parser.add_argument("--steps", type=int, default=GENERATION_DEFAULTS["steps"], help="--mode bidirectional")
    parser.add_argument("--guidance", type=float, default=preset["generate"]["guidance"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out prompts")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args(argv)
    causal = CausalConfig(**{**preset["causal"], "chunk_frames": args.chunk_frames, "chunk_steps": args.chunk_steps})

    from vidgen_prune.causal.pipeline import load_causal_pipeline
    from vidgen_prune.engine import load_pipeline

    if args.mode == "causal":
        pipe = load_causal_pipeline(None, causal_transformer=args.transformer)
    else:
        pipe = load_pipeline(None)  # the bidirectional transformer
    latent_frames = (GENERATION_DEFAULTS["frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    starts = chunk_first_frames([len(c) for c in causal.chunks(latent_frames)], pipe.vae_scale_factor_temporal)
    jumps = []

    def frames_of(pipe, prompt: str, seed: int, **overrides) -> np.ndarray:
        if args.mode == "bidirectional":
            frames = generate_frames(pipe, prompt, seed, steps=args.steps, **overrides)
        else:
            settings = {**GENERATION_DEFAULTS, **overrides, "steps": causal.chunk_steps}
            frames = generate_causal(pipe, GenerateConfig(prompt=prompt, seed=seed, **settings), causal).frames
        jumps.append(boundary_jump(frames, starts))
        return frames

    result = evaluate(pipe, HELD_OUT_PROMPTS[: args.limit], frames_of, guidance=args.guidance)
    for row, jump in zip(result["rows"], jumps):
        row["boundary_jump"] = jump
    result["boundary_jump"] = {key: float(np.mean([jump[key] for jump in jumps])) for key in jumps[0]}
    result["settings"] = {"mode": args.mode, "transformer": args.transformer, "causal": vars(causal),
                          "boundary_frames": starts, "steps": args.steps if args.mode == "bidirectional" else None}
    for row in result["rows"]:
        marks = " ".join(f"{name}={'ok' if row[name] else 'NO'}" for name in ATTRIBUTES)
        print(f"{row['prompt']:<55} {marks}  jump={row['boundary_jump']['ratio']:.2f}")
    print(f"held-out prompts: {result['prompts']}  mode={args.mode} chunk_frames={causal.chunk_frames} "
          f"chunk_steps={causal.chunk_steps} boundary frames {starts}")
    for name in ATTRIBUTES:
        print(f"  {name:<10} {100.0 * result['accuracy'][name]:5.1f} %")
    jump = result["boundary_jump"]
    print(f"  frame change across boundaries {jump['boundary']:.4f}, within chunks {jump['within']:.4f}, "
          f"mean per-video ratio {jump['ratio']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
