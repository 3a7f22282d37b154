"""Distil a narrower decoder for the embedded model's VAE: the same encoder and latent space, fewer channels.

    python -m vidgen_prune.tiny.distill_decoder --teacher runs/teacher --out runs/slim --decoder-base-dim 4

The student is an ``AutoencoderKLWan`` with the teacher's config but ``decoder_base_dim``: its encoder and
``quant_conv`` are the teacher's, copied bit for bit and never trained, so latents, their statistics and the
transformer trained on them stay valid; only ``post_quant_conv`` and the decoder learn. Targets:
  1. the teacher decoder's output on latents of two kinds: the teacher encoder's posterior means of rendered
     training videos (``--videos``), and latents the teacher pipeline generates dense from training captions
     (``--generated``): those are what the decoder decodes at inference;
  2. with ``--frame-weight`` > 0, the rendered frames themselves, for the encoded videos.
Clips are whole videos at the generation defaults (17 frames, 128x128), decoded as at inference (the same causal
chunks, the mid block's attention over the whole latent frame). Loss: L1 + MSE, pixels where the teacher's video
departs from its own temporal median (the moving object, ~5 % of pixels) weighted ``--object-weight`` times.
AdamW with a cosine learning rate. Held-out prompts are never rendered or generated here.

``--init-from DIR`` starts the student from an earlier run's decoder (same width, same encoder), to continue on
fresh targets (another ``--seed``) with a new learning-rate schedule.

Writes the teacher's pipeline with the student VAE to ``--out`` (``WanPipeline.from_pretrained`` loads it; saved
every ``--save-every`` steps), ``distill_log.csv`` (loss per logged step) and ``distill_summary.json`` (args, wall
times, final loss, PSNR of student against teacher frames on validation latents of both kinds that were not
trained on, decode times, and the digests that show the encoder is the teacher's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanPipeline

from vidgen_prune.metrics.fidelity import psnr
from vidgen_prune.tiny import GENERATION_DEFAULTS
from vidgen_prune.tiny.pipeline import zero_residual_branches
from vidgen_prune.tiny.prompts import training_specs
from vidgen_prune.tiny.synthetic import render_batch, to_model_range
from vidgen_prune.tiny.train import _CsvLog, _log_row, _object_weighted_mean, _progress, _set_cosine_lr

# |teacher - its temporal median| above this (in [-1, 1] units, ~13 of 255 levels) marks a moving-object pixel:
# the background is what most of the 17 frames show at a pixel, the object passes by
OBJECT_THRESHOLD = 0.1
ENCODER_PARTS = ("encoder", "quant_conv")  # the modules that make latents; the student must keep them exactly
BATCH = 4  # videos per encode / decode / generate call while building the targets


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    pipe = WanPipeline.from_pretrained(args.teacher).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    teacher = pipe.vae.eval().requires_grad_(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}

    start = time.perf_counter()
    train_set = build_targets(pipe, rng, args.videos, args.generated, args)
    validation = build_targets(pipe, rng, args.validation, args.validation, args)
    wall["targets_s"] = time.perf_counter() - start

    student = build_student(teacher, args.decoder_base_dim)
    if args.init_from:
        _continue_from(student, AutoencoderKLWan.from_pretrained(Path(args.init_from) / "vae"))
    student.to(args.device)
    pipe.register_modules(vae=student)  # what gets saved is the student, next to the teacher's other modules
    start = time.perf_counter()
    loss = train_decoder(pipe, student, train_set, rng, args, _CsvLog(out / "distill_log.csv"))
    wall["train_s"] = time.perf_counter() - start

    digests = {"teacher": encoder_digest(teacher), "student": encoder_digest(student)}
    if digests["teacher"] != digests["student"]:
        raise RuntimeError("the student's encoder changed during distillation")
    summary = {
        "args": vars(args),
        "wall_s": wall,
        "final_loss": loss,
        "validation_psnr_db": validation_psnr(student, validation, args.device),
        "decode_s": {"teacher": decode_seconds(teacher, validation, args.device),
                     "student": decode_seconds(student, validation, args.device)},
        "encoder_digest": digests,
        "decoder_parameters": {"teacher": _parameters(teacher.decoder), "student": _parameters(student.decoder)},
    }
    (out / "distill_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({key: summary[key] for key in ("wall_s", "final_loss", "validation_psnr_db", "decode_s")},
                     indent=2))


def build_student(teacher: AutoencoderKLWan, decoder_base_dim: int) -> AutoencoderKLWan:
    """The teacher's architecture with a ``decoder_base_dim``-wide decoder; encoder, quant_conv and (as a start)
    post_quant_conv copied from the teacher, the decoder's residual branches zeroed as ``build_vae`` does."""
    # without the config's private keys: the saved config must not name the folder the teacher came from
    public = {key: value for key, value in teacher.config.items() if not key.startswith("_")}
    student = AutoencoderKLWan.from_config({**public, "decoder_base_dim": decoder_base_dim}).eval()
    if teacher.config.is_residual:
        zero_residual_branches(student.decoder)
    for name in (*ENCODER_PARTS, "post_quant_conv"):
        getattr(student, name).load_state_dict(getattr(teacher, name).state_dict())
    for name in ENCODER_PARTS:
        getattr(student, name).requires_grad_(False)
    return student


def _continue_from(student: AutoencoderKLWan, earlier: AutoencoderKLWan) -> None:
    """Load an earlier student's post_quant_conv and decoder; its encoder must be the teacher's."""
    if encoder_digest(earlier) != encoder_digest(student):
        raise ValueError("--init-from: that VAE's encoder is not the teacher's")
    for name in ("post_quant_conv", "decoder"):
        getattr(student, name).load_state_dict(getattr(earlier, name).state_dict())


def encoder_digest(vae: AutoencoderKLWan) -> str:
    """SHA-256 of the encoder's and quant_conv's weights (names, shapes, bytes): equal digests, equal latents."""
    digest = hashlib.sha256()
    for part in ENCODER_PARTS:
        for name, value in sorted(getattr(vae, part).state_dict().items()):
            digest.update(f"{part}.{name}{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------------ targets

@torch.no_grad()
def build_targets(pipe: WanPipeline, rng: np.random.Generator, encoded: int, generated: int,
                  args: argparse.Namespace) -> dict:
    """``encoded`` rendered training videos encoded by the teacher plus ``generated`` dense generations from
    training captions, and the teacher's decode of each. Returns latents (N, z, F', h, w), teacher frames
    (N, 3, F, H, W) float16 in [-1, 1], object pixels (N, 1, F, H, W) bool, and the rendered frames of the first
    ``encoded`` videos, uint8 (encoded, F, H, W, 3)."""
    specs = training_specs()
    chosen = [specs[i] for i in rng.integers(0, len(specs), size=encoded + generated)]
    latents, rendered = [], []
    with _progress() as progress:
        task = progress.add_task("targets: encode and generate", total=len(chosen))
        for begin in range(0, encoded, BATCH):
            batch = chosen[begin : min(begin + BATCH, encoded)]
            videos = render_batch(batch, int(rng.integers(2**31)), args.frames, args.size, args.size)
            clips = torch.from_numpy(to_model_range(videos)).to(args.device)  # (B, 3, F, H, W)
            latents.append(pipe.vae.encode(clips).latent_dist.mode().cpu())  # (B, z, F', h, w)
            rendered.append(videos)
            progress.update(task, advance=len(batch))
        for begin in range(encoded, len(chosen), BATCH):
            batch = chosen[begin : begin + BATCH]
            latents.append(_generate_latents(pipe, [spec.caption for spec in batch], rng, args))
            progress.update(task, advance=len(batch))
    latents = torch.cat(latents)  # (N, z, F', h, w)
    frames = torch.cat([_decode(pipe.vae, latents[i : i + BATCH], args.device) for i in range(0, len(latents), BATCH)])
    return {"latents": latents, "teacher": frames.half(), "on_object": _moving_pixels(frames),
            "rendered": np.concatenate(rendered) if rendered else None}


def _generate_latents(pipe: WanPipeline, captions: list[str], rng: np.random.Generator,
                      args: argparse.Namespace) -> torch.Tensor:
    """Dense generations at the generation defaults, de-normalised as the pipeline does before it decodes."""
    generators = [torch.Generator().manual_seed(int(rng.integers(2**31))) for _ in captions]
    normalised = pipe(prompt=captions, negative_prompt="", num_frames=args.frames, height=args.size, width=args.size,
                      num_inference_steps=args.generation_steps, guidance_scale=GENERATION_DEFAULTS["guidance"],
                      max_sequence_length=GENERATION_DEFAULTS["max_sequence_length"], generator=generators,
                      output_type="latent", return_dict=False)[0]  # (B, z, F', h, w)
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    return normalised.cpu() * std + mean


def _decode(vae: AutoencoderKLWan, latents: torch.Tensor, device: str) -> torch.Tensor:
    """(B, z, F', h, w) -> (B, 3, F, H, W) on the CPU, clamped to [-1, 1] as generation's post-processing does."""
    return vae.decode(latents.to(device), return_dict=False)[0].clamp(-1.0, 1.0).cpu()


def _moving_pixels(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, F, H, W) -> (N, 1, F, H, W) bool: where a frame departs from the video's per-pixel temporal median."""
    background = frames.median(dim=2, keepdim=True).values  # (N, 3, 1, H, W)
    return (frames - background).abs().amax(dim=1, keepdim=True) > OBJECT_THRESHOLD


# ---------------------------------------------------------------------------------------------------- training

def train_decoder(pipe: WanPipeline, student: AutoencoderKLWan, targets: dict, rng: np.random.Generator,
                  args: argparse.Namespace, log: _CsvLog) -> float:
    """Trains ``student``'s post_quant_conv and decoder in place; returns the mean loss of the last 50 steps."""
    student.train()
    trainable = [*student.post_quant_conv.parameters(), *student.decoder.parameters()]
    optimiser = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    encoded = 0 if targets["rendered"] is None else len(targets["rendered"])
    recent: list[float] = []
    with _progress() as progress:
        task = progress.add_task("distil decoder", total=args.steps)
        start = time.perf_counter()
        for step in range(args.steps):
            lr = _set_cosine_lr(optimiser, args.lr, step, args.steps, warmup=20)
            pick = np.sort(rng.integers(0, len(targets["latents"]), size=args.batch))  # (B,), encoded ones first
            decoded = student.decode(targets["latents"][pick].to(args.device), return_dict=False)[0]  # (B, 3, F, H, W)
            on_object = targets["on_object"][pick].to(args.device)  # (B, 1, F, H, W)
            loss = _reconstruction_loss(decoded, targets["teacher"][pick].to(args.device).float(), on_object, args)
            with_frames = pick[pick < encoded]
            if args.frame_weight and len(with_frames):
                frames = torch.from_numpy(to_model_range(targets["rendered"][with_frames])).to(args.device)
                loss = loss + args.frame_weight * _reconstruction_loss(
                    decoded[: len(with_frames)], frames, on_object[: len(with_frames)], args)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            recent = (recent + [loss.item()])[-50:]
            if step % args.log_every == 0 or step == args.steps - 1:
                log.write(_log_row("decoder", step, float(np.mean(recent)), lr, start))
            progress.update(task, advance=1, description=f"distil decoder loss {np.mean(recent):.4f}")
            if (step + 1) % args.save_every == 0 or step == args.steps - 1:
                student.eval()
                pipe.save_pretrained(args.out, safe_serialization=True)
                student.train()
    student.eval()
    return float(np.mean(recent))


def _reconstruction_loss(decoded: torch.Tensor, target: torch.Tensor, on_object: torch.Tensor,
                         args: argparse.Namespace) -> torch.Tensor:
    # L1 keeps pulling on the small errors MSE stops caring about, as in the VAE's own training
    error = decoded - target  # (B, 3, F, H, W)
    return _object_weighted_mean(error.abs() + error.pow(2), on_object, args.object_weight)


# -------------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def validation_psnr(student: AutoencoderKLWan, validation: dict, device: str) -> dict:
    """Mean PSNR (dB) of the student's uint8 frames against the teacher's, per kind of latent."""
    encoded = len(validation["rendered"])
    scores = [psnr(_uint8(validation["teacher"][i].float()), _uint8(_decode(student, latents[None], device)[0]))
              for i, latents in enumerate(validation["latents"])]
    return {"encoded": float(np.mean(scores[:encoded])), "generated": float(np.mean(scores[encoded:]))}


@torch.no_grad()
def decode_seconds(vae: AutoencoderKLWan, validation: dict, device: str, repeats: int = 3) -> float:
    """Median wall time of one video's decode (batch 1, as generation decodes), after a warm-up."""
    latents = validation["latents"][:1]
    _decode(vae, latents, device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _decode(vae, latents, device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3), the rounding generation applies."""
    return np.rint((video.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).astype(np.uint8)


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="pipeline folder whose VAE decoder is distilled")
    parser.add_argument("--out", required=True, help="folder for the pipeline, distill_log.csv, distill_summary.json")
    parser.add_argument("--init-from", default=None, help="an earlier run's folder: continue from its decoder")
    parser.add_argument("--decoder-base-dim", type=int, default=4, help="the student decoder's base width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--videos", type=int, default=160, help="rendered training videos encoded as targets")
    parser.add_argument("--generated", type=int, default=48, help="dense generations from training captions")
    parser.add_argument("--validation", type=int, default=4, help="held-back latents of each kind, for the PSNR")
    parser.add_argument("--size", type=int, default=GENERATION_DEFAULTS["height"], help="square frame side")
    parser.add_argument("--frames", type=int, default=GENERATION_DEFAULTS["frames"])
    parser.add_argument("--generation-steps", type=int, default=GENERATION_DEFAULTS["steps"])
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=2, help="whole videos per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--object-weight", type=float, default=5.0, help="loss weight of moving-object pixels")
    parser.add_argument("--frame-weight", type=float, default=0.25,
                        help="weight of the rendered frames as a second target (encoded videos only)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=200, help="save the pipeline every N steps")
    args = parser.parse_args(argv)
    if not (Path(args.teacher) / "vae" / "config.json").is_file():
        parser.error(f"--teacher is not a pipeline folder with a VAE: {args.teacher}")
    if args.init_from:
        earlier = Path(args.init_from) / "vae" / "config.json"
        if not earlier.is_file():
            parser.error(f"--init-from is not a pipeline folder with a VAE: {args.init_from}")
        if json.loads(earlier.read_text()).get("decoder_base_dim") != args.decoder_base_dim:
            parser.error(f"--init-from: its decoder is not {args.decoder_base_dim} wide (--decoder-base-dim)")
    if args.decoder_base_dim < 1:
        parser.error(f"--decoder-base-dim must be at least 1, got {args.decoder_base_dim}")
    if args.size < 16 or args.size % 16:  # the VAE halves twice and the transformer patches 2x2, as in generate
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames must be 4k+1, got {args.frames}")
    for name in ("videos", "validation", "steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.generated < 0:
        parser.error(f"--generated must not be negative, got {args.generated}")
    return args


if __name__ == "__main__":
    main()
