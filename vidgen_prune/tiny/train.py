"""Train the embedded tiny text-to-video model on procedural videos, from a seed (CPU by default).

    python -m vidgen_prune.tiny.train --out vidgen_prune/tiny/weights --seed 0 [--device cuda]

Stages:
  1. VAE: reconstruction (L1 + MSE of the decoded posterior mean, object pixels weighted x10) plus a small KL
     term, on random 48x48 crops of 9-frame clips: the first frame alone, then two chunks of 4 through the
     causal cache, as in decoding (trained on 5 frames only, chunks after the second came out garbled).
  2. Cache: encode ``--videos`` training videos of ``--size`` pixels square (posterior means), measure
     per-channel latent mean/std and write them into the VAE config (the pipeline de-normalises with them
     before decoding), and note which latent cells the object touches.
  3. Transformer: rectified flow in diffusers' Wan convention: x_t = (1 - s) x0 + s noise, the model predicts
     the velocity noise - x0 at timestep s * 1000, which UniPC's ``flow_prediction`` turns back into
     x0 = x_t - s v. Captions are replaced by the empty string with probability ``--text-dropout`` for
     classifier-free guidance. The UMT5 text encoder stays at its seeded random initialisation (frozen);
     prompt embeddings are computed once through ``WanPipeline.encode_prompt`` so training sees exactly what
     generation sees (``--text-length`` positions, zero-padded: the preset's ``max_sequence_length``). Latent
     cells on the object weigh ``--object-weight`` times as much in the loss. Weights are an EMA of the
     transformer; the whole pipeline is saved with it every ``--save-every`` steps.

``--init-from DIR --vae-steps 0`` continues stage 3 from a trained pipeline (its VAE and latent statistics kept),
on freshly rendered videos; add ``--fresh-transformer`` to keep only its text encoder and VAE. Wan's rotary
positions are relative, so the transformer can learn at a small ``--size`` (64: 320 tokens per video, about
seven times cheaper a step than 128) and then be continued at the full size; the README has the recipe.

Writes a full pipeline folder (``model_index.json`` + safetensors) to ``--out`` plus ``train_log.csv`` (one
row per logged step and stage) and ``train_summary.json`` (config, wall times, final losses).
Only training captions are used (``prompts.training_specs``); held-out prompts are never rendered here.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import WanPipeline
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vidgen_prune.tiny import GENERATION_DEFAULTS
from vidgen_prune.tiny.pipeline import TinyConfig, build_pipeline
from vidgen_prune.tiny.prompts import training_specs
from vidgen_prune.tiny.synthetic import background_image, render_batch, sample_specs, to_model_range


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    config, pipe = _initial_pipeline(args)
    pipe.to(args.device)
    log = _CsvLog(out / "train_log.csv")
    wall: dict[str, float] = {}

    start = time.perf_counter()
    vae_loss = train_vae(pipe.vae, rng, args, log) if args.vae_steps else None
    wall["vae_s"] = time.perf_counter() - start
    pipe.vae.save_pretrained(out / "vae")  # inspectable while stage 3 runs; rewritten with latent statistics below

    start = time.perf_counter()
    specs, latents, on_object = encode_training_set(pipe.vae, config, rng, args)  # (N, z, F', H', W'), (N, F', H', W')
    if args.vae_steps:  # a VAE trained here gets its latent statistics; a VAE kept as it was keeps its own
        flat = latents.transpose(0, 1).reshape(config.vae_z_dim, -1)  # (z, N*F'*H'*W')
        config = replace(config, latents_mean=tuple(flat.mean(1).tolist()), latents_std=tuple(flat.std(1).tolist()))
        pipe.vae.register_to_config(latents_mean=list(config.latents_mean), latents_std=list(config.latents_std))
    wall["encode_s"] = time.perf_counter() - start

    start = time.perf_counter()
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    normalised = (latents - mean) / std  # (N, z, F', H', W')
    transformer_loss = train_transformer(pipe, specs, normalised, on_object, rng, args, log)
    wall["transformer_s"] = time.perf_counter() - start

    summary = {
        "args": vars(args),
        "config": config.to_dict(),
        "wall_s": wall,
        "final_loss": {"vae": vae_loss, "transformer": transformer_loss},
        "generation_defaults": GENERATION_DEFAULTS,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"wall_s": wall, "final_loss": summary["final_loss"]}, indent=2))


def _initial_pipeline(args: argparse.Namespace) -> tuple[TinyConfig, WanPipeline]:
    """A seeded random pipeline, or with ``--init-from`` a trained one's text encoder, VAE (with its latent
    statistics) and, unless ``--fresh-transformer``, transformer, loaded into fresh modules so the saved configs
    do not record the folder read from."""
    if not args.init_from:
        config = TinyConfig()
        return config, build_pipeline(config, seed=args.seed)
    trained = WanPipeline.from_pretrained(args.init_from)
    stats = trained.vae.config
    config = replace(TinyConfig(), latents_mean=tuple(stats.latents_mean), latents_std=tuple(stats.latents_std))
    pipe = build_pipeline(config, seed=args.seed)
    kept = ("text_encoder", "vae") if args.fresh_transformer else ("text_encoder", "vae", "transformer")
    for name in kept:
        getattr(pipe, name).load_state_dict(getattr(trained, name).state_dict())
    return config, pipe


# --------------------------------------------------------------------------------------------------- stage 1: VAE

def train_vae(vae, rng: np.random.Generator, args: argparse.Namespace, log: _CsvLog) -> float:
    """Returns the mean reconstruction + KL loss over the last 50 steps."""
    specs = training_specs()
    vae.train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    size, frames = GENERATION_DEFAULTS["height"], 9
    recent: list[float] = []
    with _progress() as progress:
        task = progress.add_task("stage 1: VAE", total=args.vae_steps)
        start = time.perf_counter()
        for step in range(args.vae_steps):
            lr = _set_cosine_lr(optimiser, args.vae_lr, step, args.vae_steps, warmup=20)
            batch_specs = sample_specs(rng, specs, args.vae_batch)
            videos = render_batch(batch_specs, int(rng.integers(2**31)), frames, size, size)  # (B, 9, H, W, 3)
            top, left = rng.integers(0, size - args.vae_crop + 1, size=2)
            crop = videos[:, :, top : top + args.vae_crop, left : left + args.vae_crop]  # (B, 9, c, c, 3)
            clip = torch.from_numpy(to_model_range(crop)).to(args.device)  # (B, 3, 9, c, c)
            on_object = torch.from_numpy(_on_object(crop, batch_specs))[:, None].to(args.device)  # (B, 1, 9, c, c)
            posterior = vae.encode(clip).latent_dist
            # decode the posterior mean: with sampling, the unit initial variance drowns the small initial means
            # and reconstruction stalled (MSE 0.10 after 250 steps); the transformer only ever sees means anyway
            reconstruction = vae.decode(posterior.mode(), return_dict=False)[0]  # (B, 3, 9, c, c)
            # KL per latent element to N(0, 1): keeps the latent scale tame without costing detail
            kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
            # L1 keeps pulling on the small errors MSE stops caring about: sharper edges, truer flat colours
            error = reconstruction - clip  # (B, 3, 9, c, c)
            reconstruction_loss = _object_weighted_mean(error.abs() + error.pow(2), on_object, args.vae_object_weight)
            loss = reconstruction_loss + args.vae_kl * kl
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            recent = (recent + [loss.item()])[-50:]
            if step % 10 == 0 or step == args.vae_steps - 1:
                log.write(_log_row("vae", step, float(np.mean(recent)), lr, start))
            progress.update(task, advance=1, description=f"stage 1: VAE loss {np.mean(recent):.4f}")
    vae.eval()
    return float(np.mean(recent))


def _on_object(videos: np.ndarray, specs) -> np.ndarray:
    """Which pixels of rendered ``videos`` (B, F, H, W, 3) show the object rather than the background; (B, F, H, W).

    Both losses weight these pixels up: the object covers ~5 % of a frame; unweighted, the VAE learned the
    background first and returned objects faint and off-colour (red came back purple), which is exactly what
    prompt adherence is judged on.
    """
    height, width = videos.shape[2:4]
    backgrounds = np.stack([background_image(spec.background, height, width) for spec in specs])  # (B, H, W, 3)
    return np.abs(videos - backgrounds[:, None]).max(axis=-1) > 8


def _object_weighted_mean(values: torch.Tensor, on_object: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Mean of ``values`` with the elements on the object (bool, broadcastable) weighted ``object_weight`` times
    a background element, normalised by the mean weight so the loss keeps its scale at any weight."""
    weight = 1.0 + (object_weight - 1.0) * on_object.float()
    return (values * weight).mean() / weight.mean()


@torch.no_grad()
def encode_training_set(vae, config: TinyConfig, rng: np.random.Generator, args: argparse.Namespace):
    """Render ``args.videos`` training videos (every spec in turn, fresh random geometry) at ``args.size`` and
    encode them; also returns which latent cells the object touches, (N, F', H', W') bool."""
    all_specs = training_specs()
    order = rng.permutation(args.videos) % len(all_specs)
    specs = [all_specs[i] for i in order]
    frames = GENERATION_DEFAULTS["frames"]
    latents, masks = [], []
    with _progress() as progress:
        task = progress.add_task("stage 2: encode latents", total=len(specs))
        for begin in range(0, len(specs), 8):
            batch = specs[begin : begin + 8]
            videos = render_batch(batch, int(rng.integers(2**31)), frames, args.size, args.size)
            clip = torch.from_numpy(to_model_range(videos)).to(args.device)  # (B, 3, F, H, W)
            latents.append(vae.encode(clip).latent_dist.mode().cpu())  # (B, z, F', H/4, W/4)
            masks.append(_latent_object_mask(torch.from_numpy(_on_object(videos, batch)), config))
            progress.update(task, advance=len(batch))
    return specs, torch.cat(latents), torch.cat(masks)


def _latent_object_mask(on_object: torch.Tensor, config: TinyConfig) -> torch.Tensor:
    """Pixel mask (B, F, H, W) -> latent-cell mask (B, F', H', W'): a cell is on the object if any pixel it
    encodes is. As in the causal VAE, latent frame 0 holds frame 0 alone and each later one the next
    ``temporal_factor`` frames."""
    t, s = config.temporal_factor, config.spatial_factor
    batch, frames, height, width = on_object.shape
    first = on_object[:, :1]  # (B, 1, H, W)
    rest = on_object[:, 1:].reshape(batch, (frames - 1) // t, t, height, width).any(dim=2)  # (B, F'-1, H, W)
    per_frame = torch.cat([first, rest], dim=1)  # (B, F', H, W)
    return per_frame.reshape(batch, -1, height // s, s, width // s, s).any(dim=5).any(dim=3)


# ------------------------------------------------------------------------------------------- stage 3: transformer

def train_transformer(pipe, specs, latents: torch.Tensor, on_object: torch.Tensor, rng: np.random.Generator, args,
                      log: _CsvLog) -> float:
    """Leaves the EMA transformer in ``pipe`` (saved to ``args.out``); returns the mean loss of the last 100 steps.

    The squared error of latent cells on the object weighs ``args.object_weight`` times a background cell's
    (normalised per batch): the object is ~5 % of the cells but everything the caption says about it."""
    captions = sorted({spec.caption for spec in specs})
    encode = dict(do_classifier_free_guidance=False, max_sequence_length=args.text_length)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(captions, **encode)
        empty, _ = pipe.encode_prompt([""], **encode)
    # embeds: (C, L, text_dim); empty: (1, L, text_dim), all zeros: the empty caption has no tokens
    caption_index = torch.tensor([captions.index(spec.caption) for spec in specs])  # (N,)
    transformer = pipe.transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    pipe.register_modules(transformer=ema)  # what gets saved (and generates) is the EMA
    optimiser = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    recent: list[float] = []
    with _progress() as progress:
        task = progress.add_task("stage 3: transformer", total=args.steps)
        start = time.perf_counter()
        for step in range(args.steps):
            lr = _set_cosine_lr(optimiser, args.lr, step, args.steps, warmup=100)
            pick = torch.from_numpy(rng.integers(0, len(specs), size=args.batch))  # (B,)
            x0 = latents[pick].to(args.device)  # (B, z, F', h, w)
            text = embeds[caption_index[pick].to(embeds.device)].clone()  # (B, L, text_dim)
            # every random draw on the CPU generator: the same seed trains the same model on any device
            dropped = (torch.rand(args.batch, generator=generator) < args.text_dropout).to(text.device)  # (B,)
            text[dropped] = empty[0]
            # sigmas drawn as UniPC spends its steps: uniform, then shifted towards noise by flow_shift
            uniform = torch.rand(args.batch, generator=generator)  # (B,)
            shift = pipe.scheduler.config.flow_shift
            sigma = (shift * uniform / (1.0 + (shift - 1.0) * uniform)).to(args.device)  # (B,)
            noise = torch.randn(x0.shape, generator=generator).to(args.device)  # (B, z, F', h, w)
            s = sigma.view(-1, 1, 1, 1, 1)
            noisy = (1.0 - s) * x0 + s * noise  # (B, z, F', h, w)
            velocity = transformer(noisy, sigma * 1000.0, text, return_dict=False)[0]  # (B, z, F', h, w)
            cells = on_object[pick].unsqueeze(1).to(args.device)  # (B, 1, F', h, w)
            loss = _object_weighted_mean((velocity - (noise - x0)).pow(2), cells, args.object_weight)
            _optimise_with_ema(transformer, ema, optimiser, loss, step, args.ema)
            recent = (recent + [loss.item()])[-100:]
            if step % 10 == 0 or step == args.steps - 1:
                log.write(_log_row("transformer", step, float(np.mean(recent)), lr, start))
            progress.update(task, advance=1, description=f"stage 3: transformer loss {np.mean(recent):.4f}")
            if (step + 1) % args.save_every == 0 or step == args.steps - 1:
                # a usable pipeline on disk all along: a long run stopped early still leaves its latest EMA
                pipe.save_pretrained(args.out, safe_serialization=True)
    return float(np.mean(recent))


# ----------------------------------------------------------------------------------------------------- helpers

def _optimise_with_ema(transformer, ema, optimiser, loss: torch.Tensor, step: int, ema_decay: float) -> None:
    """One optimiser step on ``loss`` (gradients clipped to norm 1), then ``ema`` follows ``transformer``; a short
    EMA warm-up: early weights are noise, so the decay ramps up to ``ema_decay``."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
    optimiser.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), transformer.parameters()):
            ema_param.lerp_(param, 1.0 - decay)


class _CsvLog:
    """Appends and flushes each row, so progress can be followed (and survives a crash) while training runs."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=["stage", "step", "loss", "lr", "elapsed_s"])
        self._writer.writeheader()

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._handle.flush()


def _set_cosine_lr(optimiser: torch.optim.Optimizer, peak: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then a cosine decay to 10 % of the peak; sets and returns the step's learning rate."""
    if step < warmup:
        lr = peak * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        lr = peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    for group in optimiser.param_groups:
        group["lr"] = lr
    return lr


def _log_row(stage: str, step: int, loss: float, lr: float, start: float) -> dict:
    return {"stage": stage, "step": step, "loss": round(loss, 6), "lr": lr,
            "elapsed_s": round(time.perf_counter() - start, 1)}


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn())


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the pipeline, train_log.csv, train_summary.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, ...)")
    parser.add_argument("--init-from", default=None,
                        help="trained pipeline folder to continue from (with --vae-steps 0 its VAE is kept as is)")
    parser.add_argument("--fresh-transformer", action="store_true",
                        help="with --init-from: keep its text encoder and VAE, start the transformer from the seed")
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--vae-batch", type=int, default=4)
    parser.add_argument("--vae-crop", type=int, default=48, help="square crop side of VAE training clips")
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-object-weight", type=float, default=10.0, help="loss weight of object pixels")
    parser.add_argument("--vae-kl", type=float, default=1e-4, help="weight of the per-element KL term")
    parser.add_argument("--size", type=int, default=GENERATION_DEFAULTS["height"],
                        help="side of the square training videos the transformer learns from")
    parser.add_argument("--videos", type=int, default=400, help="training videos to encode and cache")
    parser.add_argument("--steps", type=int, default=320, help="transformer optimiser steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--object-weight", type=float, default=1.0, help="loss weight of latent cells on the object")
    parser.add_argument("--text-dropout", type=float, default=0.1)
    parser.add_argument("--text-length", type=int, default=GENERATION_DEFAULTS["max_sequence_length"],
                        help="text positions per prompt (zero-padded), as generation passes them")
    parser.add_argument("--save-every", type=int, default=250, help="save the pipeline every N transformer steps")
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16:  # the VAE halves twice and the transformer patches 2x2, as in generate
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    return args


if __name__ == "__main__":
    main()
