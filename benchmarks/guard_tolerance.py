"""How far the fused Wan skip forward strays from gather → block → scatter, in units of the guard's tolerance.

The figures behind `vidgen_prune.kernels.guard.TOLERANCES`: a Wan2.1-1.3B-width block with random weights, the fused
path against the torch one for a few seeds, then three injected kernel bugs that the guard must catch. On the CPU it
runs the kernels on the Triton interpreter (about a minute at one thread):

    OMP_NUM_THREADS=1 python benchmarks/guard_tolerance.py --residual-scale 1
    OMP_NUM_THREADS=1 python benchmarks/guard_tolerance.py --residual-scale 30
"""

from __future__ import annotations

import argparse
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import (diffusers' Wan module imports it)

from diffusers.models.transformers.transformer_wan import WanTransformerBlock  # noqa: E402

import vidgen_prune.models.wan_fused as wan_fused  # noqa: E402
from vidgen_prune.kernels import gather_rotary_torch  # noqa: E402
from vidgen_prune.kernels.guard import FusedGuard  # noqa: E402


def wan_rotary(N: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (1, N, 1, head_dim), in Wan's interleaved-pairs layout."""
    inv_freq = 10000 ** (-torch.arange(0, head_dim, 2, device=device) / head_dim)  # (head_dim / 2,)
    angles = (torch.arange(N, device=device)[:, None] * inv_freq).repeat_interleave(2, dim=-1)  # (N, head_dim)
    return angles.cos()[None, :, None], angles.sin()[None, :, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--ffn-dim", type=int, default=8960)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--kept", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--residual-scale", type=float, default=1.0, help="std of the block input (the update's ~1)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    D, N, K = args.dim, args.tokens, args.kept
    real_scatter = wan_fused.scatter_gated_residual_
    bugs = {  # what a miscompiled or mis-launched kernel could do, each replacing the residual scatter
        "gate ignored": lambda x, idx, y, gate=None, backend="auto": real_scatter(x, idx, y, None, backend=backend),
        "rows shifted": lambda x, idx, y, gate=None, backend="auto": real_scatter(
            x, (idx + 1) % x.shape[1], y, gate, backend=backend),
        "one row lost": lambda x, idx, y, gate=None, backend="auto": real_scatter(
            x, idx[:, 1:], y[:, 1:], gate, backend=backend),
    }
    for dtype in (torch.float32, torch.bfloat16):
        errors, bug_errors = [], {name: [] for name in bugs}
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            block = WanTransformerBlock(D, args.ffn_dim, args.heads, cross_attn_norm=True).eval()
            torch.nn.init.normal_(block.norm2.weight, 1.0, 0.2)  # default ones/zeros would hide a missed affine
            torch.nn.init.normal_(block.norm2.bias, 0.0, 0.2)
            block = block.to(device, dtype)
            x = (torch.randn(1, N, D, device=device) * args.residual_scale).to(dtype)  # (1, N, D)
            text = torch.randn(1, 16, D, device=device, dtype=dtype)  # (1, L, D)
            temb = torch.randn(1, 6, D, device=device, dtype=dtype)  # (1, 6, D)
            rotary = wan_rotary(N, D // args.heads, device)
            idx = torch.randperm(N, device=device)[:K].sort().values[None]  # (1, K)

            def reference():
                g = idx[:, :, None].expand(-1, -1, D)  # (1, K, D)
                with torch.no_grad():
                    return x.scatter(1, g, block(x.gather(1, g), text, temb, gather_rotary_torch(*rotary, idx)))

            def checked() -> float:
                hidden = x.clone()
                guard = FusedGuard("fused skip forward", check=True)
                guard.run(lambda: wan_fused.fused_skip_forward(block, hidden, idx, text, temb, rotary,
                                                               backend="triton"), reference, base=hidden)
                return guard.error

            errors.append(checked())
            for name, bug in bugs.items():
                wan_fused.scatter_gated_residual_ = bug
                try:
                    bug_errors[name].append(checked())
                finally:
                    wan_fused.scatter_gated_residual_ = real_scatter
        name = str(dtype).removeprefix("torch.")
        print(f"{name:9s} fused vs torch: worst {max(errors):.3g}, mean {sum(errors) / len(errors):.3g} of the "
              f"tolerance over {args.seeds} seeds; bugs (smallest): "
              + ", ".join(f"{bug} {min(values):.3g}" for bug, values in bug_errors.items()))


if __name__ == "__main__":
    main()
