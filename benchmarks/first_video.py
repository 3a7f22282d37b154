"""The README's first video: the set-up command's MP4 beside the dense MP4 of the same prompt and seed.

Runs the two commands as a user would (`vidprune generate --prompt P` with the embedded model's defaults, and the
same with `--method dense`), reads both MP4s back, and writes one PNG: a row of frames each, titled with the pruned
run's settings (from its sidecar), PSNR / SSIM against dense (on the decoded MP4s) and both pipeline times.
Time the speedup with whole-process runs, not from this script's one run of each.

    OMP_NUM_THREADS=1 python benchmarks/first_video.py --out docs/first_video.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "a red circle moving right on a black background"  # the README's set-up command
FRAMES_SHOWN = (0, 4, 8, 12, 16)


def run_generate(prompt: str, out: Path, extra: list[str]) -> dict:
    """One `vidprune generate` process; its sidecar."""
    command = [sys.executable, "-m", "vidgen_prune", "generate", "--prompt", prompt, "--out", str(out), *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.with_suffix(".json").read_text())


def read_mp4(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.stack(list(iio.imiter(path)))  # (F, H, W, 3) uint8


def draw(dense: np.ndarray, pruned: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [index for index in FRAMES_SHOWN if index < len(dense)]
    figure, axes = plt.subplots(2, len(shown), figsize=(2.0 * len(shown), 4.6), squeeze=False)
    for row, (label, video) in enumerate((("dense", dense), ("default", pruned))):
        for column, index in enumerate(shown):
            axis = axes[row][column]
            axis.imshow(video[index])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frame {index}", fontsize=9)
            if column == 0:
                axis.set_ylabel(label, fontsize=10)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the PNG")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from vidgen_prune.metrics import video_fidelity

    with tempfile.TemporaryDirectory() as scratch:
        dense_path, pruned_path = Path(scratch) / "dense.mp4", Path(scratch) / "default.mp4"
        dense_sidecar = run_generate(args.prompt, dense_path, ["--method", "dense"])
        sidecar = run_generate(args.prompt, pruned_path, [])
        dense, pruned = read_mp4(dense_path), read_mp4(pruned_path)
    fidelity = video_fidelity(dense, pruned)
    prune = sidecar["prune"]
    figures = {
        "prompt": args.prompt,
        "method": prune["method"], "reduction": prune["reduction"], "restore": prune["restore"],
        "kept_fraction": sidecar["achieved_kept_fraction"],
        "psnr": fidelity["psnr"], "ssim": fidelity["ssim"],
        "dense_pipeline_s": dense_sidecar["timings"]["total_s"], "pipeline_s": sidecar["timings"]["total_s"],
        "device": sidecar["device"],
    }
    title = (f"\"{args.prompt}\", seed {sidecar['seed']}\n{prune['method']} r={prune['reduction']:g} "
             f"restore={prune['restore']} (kept {figures['kept_fraction']:.3f}) against dense: "
             f"PSNR {figures['psnr']:.2f} dB, SSIM {figures['ssim']:.3f} (decoded MP4s)")
    draw(dense, pruned, title, args.out)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
