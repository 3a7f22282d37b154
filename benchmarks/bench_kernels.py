"""Time each kernel against its torch reference, and the fused Wan skip forward against gather → block → scatter.

Shapes are Wan2.1-T2V-1.3B at 81 × 480 × 832 (32,760 tokens, D 1536, 12 heads × 128, ffn 8960), one CFG pass
(B = 1), bf16, keep fraction 0.7 by default. Needs a CUDA GPU; results go to a JSON file with the GPU's name:
(with TRITON_INTERPRET=1 and no GPU it runs on the CPU interpreter as a smoke test of the script: give it tiny shapes;
its timings mean nothing)

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_$(nvidia-smi --query-gpu=name \
        --format=csv,noheader | tr ' ' _).json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

QUANTILES = [0.5, 0.2, 0.8]  # median and the 20th / 80th percentiles, in ms
BACKENDS = ("torch", "triton")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels.json"))
    parser.add_argument("--tokens", type=int, default=32760, help="N: 21 latent frames × 30 × 52")
    parser.add_argument("--tokens-per-frame", type=int, default=1560, help="30 × 52 latent patches per frame")
    parser.add_argument("--keep", type=float, default=0.7, help="kept fraction K / N")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn-dim", type=int, default=8960)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--score-queries", type=int, default=2048, help="sampled queries for the score benchmark")
    return parser.parse_args()


def main() -> None:
    args = parse_args()  # before the CUDA check, so --help works anywhere
    from vidgen_prune.kernels.common import interpreting

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not interpreting():
        sys.exit("bench_kernels.py times CUDA kernels and needs a CUDA GPU; torch.cuda.is_available() is False here "
                 "(TRITON_INTERPRET=1 runs it on the CPU interpreter as a smoke test).")
    import triton.testing
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from vidgen_prune.kernels import (
        attention_received,
        gather_norm_modulate,
        gather_rotary,
        gather_tokens,
        scatter_gated_residual_,
    )
    from vidgen_prune.models.wan_fused import fused_skip_forward

    torch.manual_seed(0)
    dev, dtype = ("cuda" if on_gpu else "cpu"), torch.bfloat16
    measure = triton.testing.do_bench if on_gpu else wall_clock
    N, D, H = args.tokens, args.dim, args.heads
    K, hd = round(args.keep * N), D // H
    x = torch.randn(1, N, D, device=dev, dtype=dtype)  # (1, N, D)
    idx = torch.randperm(N, device=dev)[:K].sort().values[None]  # (1, K)
    mod = torch.randn(1, 1, D, device=dev)  # (1, 1, D) fp32
    y = torch.randn(1, K, D, device=dev, dtype=dtype)  # (1, K, D)
    cos, sin = torch.randn(2, 1, N, 1, hd, device=dev)  # (1, N, 1, hd) each
    q = torch.randn(1, H, N, hd, device=dev, dtype=dtype)  # (1, H, N, hd)
    k = torch.randn(1, H, N, hd, device=dev, dtype=dtype)  # (1, H, N, hd)
    q_sampled = q[:, :, torch.randperm(N, device=dev)[: args.score_queries]]  # (1, H, Sq, hd)

    block = WanTransformerBlock(D, args.ffn_dim, H, cross_attn_norm=True).to(dev, dtype).eval()
    text = torch.randn(1, args.text_len, D, device=dev, dtype=dtype)  # (1, L, D)
    temb = torch.randn(1, 6, D, device=dev, dtype=dtype)  # (1, 6, D)

    def plain_skip():  # what the fused forward replaces
        g = idx[:, :, None].expand(-1, -1, D)  # (1, K, D)
        rotary_k = gather_tokens(cos, idx), gather_tokens(sin, idx)  # (1, K, 1, hd) each
        with torch.no_grad():
            return x.scatter(1, g, block(x.gather(1, g), text, temb, rotary_k))

    # Each case: name -> {backend: thunk}. In-place ops run on a scratch copy made once: repeated residual adds
    # change values, not the work done.
    scratch = x.clone()
    cases = {
        "gather_norm_modulate": {b: lambda b=b: gather_norm_modulate(x, idx, mod, mod, backend=b) for b in BACKENDS},
        "scatter_gated_residual_": {
            b: lambda b=b: scatter_gated_residual_(scratch, idx, y, mod, backend=b) for b in BACKENDS
        },
        "gather_rotary": {b: lambda b=b: gather_rotary(cos, sin, idx, backend=b) for b in BACKENDS},
        "attention_received_sampled": {b: lambda b=b: attention_received(q_sampled, k, backend=b) for b in BACKENDS},
        "attention_received_frame_local": {
            b: lambda b=b: attention_received(q, k, tokens_per_frame=args.tokens_per_frame, backend=b)
            for b in BACKENDS
        },
        "attention_received_full": {"triton": lambda: attention_received(q, k, backend="triton")},
        "wan_block_skip": {
            "torch_gather_block_scatter": plain_skip,
            "fused_triton": lambda: fused_skip_forward(block, scratch, idx, text, temb, (cos, sin), backend="triton"),
        },
    }
    results = {}
    for name, thunks in cases.items():
        results[name] = {}
        for backend, fn in thunks.items():
            median, p20, p80 = measure(fn, quantiles=QUANTILES)
            results[name][backend] = {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
            print(f"{name:32s} {backend:28s} {median:9.3f} ms  [{p20:.3f}, {p80:.3f}]")

    record = {
        "gpu": torch.cuda.get_device_name() if on_gpu else "none: CPU interpreter smoke test, timings meaningless",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "shapes": {"B": 1, "N": N, "K": K, "D": D, "heads": H, "head_dim": hd, "score_queries": args.score_queries,
                   "tokens_per_frame": args.tokens_per_frame, "ffn_dim": args.ffn_dim, "dtype": str(dtype)},
        "quantiles": QUANTILES,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


def wall_clock(fn, quantiles: list[float], runs: int = 3) -> list[float]:
    """The CPU smoke test's stand-in for do_bench: ms of a few calls (median, fastest, slowest)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return [statistics.median(times), min(times), max(times)]


if __name__ == "__main__":
    main()
