"""Train the embedded model's causal transformer: block-causal attention, from the bidirectional weights.

    python -m vidgen_prune.tiny.train_causal --out vidgen_prune/tiny/causal --seed 0 --threads 1

The text encoder, VAE and starting transformer come from ``--init-from`` (the embedded pipeline); only the
transformer is trained and saved (``config.json`` + safetensors, with ``train_log.csv`` and
``train_summary.json`` beside it). Generation (``vidgen_prune.causal.sampler``) runs chunks of
``--chunk-frames`` latent frames: a chunk attends to the clean chunks before it (written into the KV cache by a
pass at timestep 0) and to itself. Each training sample imitates that with one sequence under the block-causal
mask of ``vidgen_prune.causal.mask``:

- a clean prefix of k chunks (k uniform in 0 .. chunks-1), labelled timestep 0: what the cache holds at chunk k;
- every later chunk noised to its own level (diffusion forcing: independent levels, drawn as UniPC spends its
  steps), and attending to the (noisy) chunks before it. Chunk k sees exactly what generation shows it; the
  later ones add noisy-context samples at no extra sequence length (a second, noisy copy of the video, as in
  CausVid's teacher forcing, would double every step's tokens).

The loss is train.py's rectified-flow velocity error on the noisy chunks, object cells weighted
``--object-weight`` times, captions dropped with ``--text-dropout`` for guidance, an EMA of the weights saved.
Steps run at ``--size`` (64: 320 tokens, cheap) with every ``--full-size-every``-th step at the model's own
128x128: a transformer trained at 64 alone tiles its scene at 128 (README, "How it was trained").
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import WanPipeline, WanTransformer3DModel

from vidgen_prune.causal.attention import apply_causal, remove_causal
from vidgen_prune.causal.mask import block_causal_frame_mask, token_mask
from vidgen_prune.tiny import EMBEDDED_MODEL_DIR, GENERATION_DEFAULTS
from vidgen_prune.tiny.pipeline import TinyConfig
from vidgen_prune.tiny.train import (
    _CsvLog,
    _log_row,
    _object_weighted_mean,
    _optimise_with_ema,
    _progress,
    _set_cosine_lr,
    encode_training_set,
)


class _TrainingSet:
    """Normalised latents (N, z, F', h, w), object cells (N, F', h, w) and caption index (N,) of one frame size."""

    def __init__(self, pipe, size: int, videos: int, rng: np.random.Generator, captions: list[str], device: str):
        stats = pipe.vae.config
        config = TinyConfig(latents_mean=tuple(stats.latents_mean), latents_std=tuple(stats.latents_std))
        request = argparse.Namespace(videos=videos, size=size, device=device)
        specs, latents, self.on_object = encode_training_set(pipe.vae, config, rng, request)
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
        self.latents = (latents - mean) / std
        self.caption_index = torch.tensor([captions.index(spec.caption) for spec in specs])
        self.size = size


def chunk_noise_levels(batch: int, chunks: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """(B, chunks) sigmas: a clean prefix of k chunks (0), k uniform in 0..chunks-1, then independent shifted
    uniform levels, as UniPC's flow-shifted schedule spends its steps."""
    uniform = torch.rand(batch, chunks, generator=generator)  # (B, chunks)
    sigma = shift * uniform / (1.0 + (shift - 1.0) * uniform)
    prefix = torch.randint(0, chunks, (batch, 1), generator=generator)  # (B, 1)
    return torch.where(torch.arange(chunks)[None] < prefix, torch.zeros_like(sigma), sigma)


def train(pipe, sets: dict[int, _TrainingSet], embeds: torch.Tensor, empty: torch.Tensor, args, log: _CsvLog):
    """Leaves the EMA transformer (block-causal processors removed) in ``pipe``; returns the last 100 steps' loss."""
    transformer = pipe.transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    state = apply_causal(transformer, "mask")
    optimiser = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    shift = pipe.scheduler.config.flow_shift
    full_size = GENERATION_DEFAULTS["height"]
    recent: list[float] = []
    with _progress() as progress:
        task = progress.add_task("causal transformer", total=args.steps)
        start = time.perf_counter()
        for step in range(args.steps):
            lr = _set_cosine_lr(optimiser, args.lr, step, args.steps, warmup=50)
            large = args.full_size_every > 0 and step % args.full_size_every == args.full_size_every - 1
            data = sets[full_size if large else args.size]
            batch = args.full_size_batch if large else args.batch
            pick = torch.from_numpy(rng.integers(0, len(data.latents), size=batch))  # (B,)
            x0 = data.latents[pick].to(args.device)  # (B, z, F', h, w)
            frames, tokens_per_frame = x0.shape[2], (x0.shape[3] // 2) * (x0.shape[4] // 2)
            chunk_of_frame = torch.arange(frames) // args.chunk_frames  # (F',)
            positions = torch.arange(frames)
            state.frame_positions = positions
            state.mask = token_mask(block_causal_frame_mask(
                positions, torch.zeros_like(positions), torch.ones(frames, dtype=torch.bool), args.chunk_frames),
                tokens_per_frame).to(args.device)  # (S, S)
            text = embeds[data.caption_index[pick]].clone()  # (B, L, text_dim)
            text[torch.rand(batch, generator=generator) < args.text_dropout] = empty[0]
            sigma = chunk_noise_levels(batch, int(chunk_of_frame[-1]) + 1, shift, generator)  # (B, chunks)
            sigma_frame = sigma[:, chunk_of_frame].to(args.device)  # (B, F')
            noise = torch.randn(x0.shape, generator=generator).to(args.device)  # (B, z, F', h, w)
            s = sigma_frame[:, None, :, None, None]  # (B, 1, F', 1, 1)
            noisy = (1.0 - s) * x0 + s * noise
            timestep = (sigma_frame * 1000.0).repeat_interleave(tokens_per_frame, dim=1)  # (B, S)
            velocity = transformer(noisy, timestep, text.to(args.device), return_dict=False)[0]  # (B, z, F', h, w)
            cells = data.on_object[pick].unsqueeze(1).to(args.device)  # (B, 1, F', h, w)
            error = (velocity - (noise - x0)).pow(2) * (s > 0)  # clean chunks are context, not targets
            loss = _object_weighted_mean(error, cells, args.object_weight) / (s > 0).float().mean()
            _optimise_with_ema(transformer, ema, optimiser, loss, step, args.ema)
            recent = (recent + [loss.item()])[-100:]
            if step % 10 == 0 or step == args.steps - 1:
                log.write(_log_row(f"causal{data.size}", step, float(np.mean(recent)), lr, start))
            progress.update(task, advance=1, description=f"causal transformer loss {np.mean(recent):.4f}")
            if (step + 1) % args.save_every == 0 or step == args.steps - 1:
                ema.save_pretrained(args.out, safe_serialization=True)
    remove_causal(transformer)
    pipe.register_modules(transformer=ema)
    return float(np.mean(recent))


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    pipe = WanPipeline.from_pretrained(args.init_from).to(args.device)
    # a fresh module with the same weights: the saved config must not record the folder it was read from
    start = WanTransformer3DModel.from_config({k: v for k, v in pipe.transformer.config.items() if k[0] != "_"})
    start.load_state_dict(pipe.transformer.state_dict())
    pipe.register_modules(transformer=start.to(args.device))
    from vidgen_prune.tiny.prompts import training_specs

    captions = sorted({spec.caption for spec in training_specs()})
    encode = dict(do_classifier_free_guidance=False, max_sequence_length=args.text_length)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(captions, **encode)  # (C, L, text_dim)
        empty, _ = pipe.encode_prompt([""], **encode)  # (1, L, text_dim): zeros, the empty caption has no tokens
    wall: dict[str, float] = {}
    start = time.perf_counter()
    sizes = {args.size: args.videos}
    if args.full_size_every > 0:
        sizes[GENERATION_DEFAULTS["height"]] = args.full_size_videos
    sets = {size: _TrainingSet(pipe, size, videos, rng, captions, args.device) for size, videos in sizes.items()}
    wall["encode_s"] = time.perf_counter() - start
    start = time.perf_counter()
    log = _CsvLog(out / "train_log.csv")
    loss = train(pipe, sets, embeds.to(args.device), empty.to(args.device), args, log)
    wall["transformer_s"] = time.perf_counter() - start
    summary = {"args": vars(args), "wall_s": wall, "final_loss": loss, "generation_defaults": GENERATION_DEFAULTS}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({"wall_s": wall, "final_loss": loss}, indent=2))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the transformer, train_log.csv, train_summary.json")
    parser.add_argument("--init-from", default=str(EMBEDDED_MODEL_DIR),
                        help="trained pipeline folder: its text encoder, VAE and starting transformer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-frames", type=int, default=1, help="latent frames per chunk, as generation runs")
    parser.add_argument("--size", type=int, default=64, help="side of most training videos")
    parser.add_argument("--videos", type=int, default=800, help="training videos at --size")
    parser.add_argument("--full-size-every", type=int, default=4,
                        help="every N-th step at the model's own 128x128 (0: never)")
    parser.add_argument("--full-size-videos", type=int, default=400, help="training videos at 128x128")
    parser.add_argument("--full-size-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--object-weight", type=float, default=5.0, help="loss weight of latent cells on the object")
    parser.add_argument("--text-dropout", type=float, default=0.1)
    parser.add_argument("--text-length", type=int, default=GENERATION_DEFAULTS["max_sequence_length"])
    parser.add_argument("--save-every", type=int, default=250)
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.chunk_frames < 1:
        parser.error(f"--chunk-frames must be at least 1, got {args.chunk_frames}")
    return args


if __name__ == "__main__":
    main()
