"""A fused path checked against its torch reference on first use: how `--kernels auto` avoids betting a run on it.

Until a native run has verified the Triton kernels on a kind of device, `auto` must not trust them blindly. A
`FusedGuard` runs both paths on the first call of a run, keeps the fused one when they agree within the tolerance
of the output's dtype, and otherwise falls back to the reference for the rest of the run with one warning line. An
explicit `triton` request is trusted unchecked (it fails loudly instead: see `resolve_backend`). It knows nothing
of models: it takes two callables and compares their outputs.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

logger = logging.getLogger(__name__)

# (atol, rtol) per output dtype: fused and reference agree where, elementwise,
#     |fused − reference| <= atol · max|reference − base| + rtol · |reference|
# atol is a fraction of the largest change the call made to its input (the block's update, scale-free): it covers
# rounding differences of low-precision intermediates that flow through attention and the FFN. rtol is about four
# ulps of the output: each of a block's three residual adds `x + y·gate` rounds, and may land on either side.
# Measured on a Wan2.1-1.3B-width block (D 1536, ffn 8960, 64 of 96 tokens kept; benchmarks/guard_tolerance.py)
# under the CPU interpreter, whose fp32 -> bf16 cast truncates where the GPU rounds to nearest even, worst of 4
# seeds: bf16 0.29 of the tolerance (residual stream at the update's scale) and 0.68 (at 30x it), fp32 0.015. Three
# injected bugs (gate ignored, rows shifted by one, one kept row lost) measured 6.8-18x the bf16 tolerance and
# over 4,000x the fp32 one. On a GPU: `benchmarks/gpu_check.py` reports the error of every pruned block.
TOLERANCES = {
    torch.float32: (1e-4, 1e-5),  # both sides compute in fp32; LayerNorm reduction order differs (~1e-6)
    torch.bfloat16: (0.05, 2**-5),  # 8-bit mantissa: rtol 4 ulps
    torch.float16: (0.01, 2**-8),  # 11-bit mantissa: bf16's scaled down (not measured)
}

PENDING, VERIFIED, FELL_BACK, TRUSTED = "pending", "verified", "fell back", "trusted"
_warned: set[tuple] = set()  # one warning per path, device and dtype in a process (a bench runs many generations)


def disagreement(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor | float) -> tuple[float, float]:
    """(error in units of the dtype's tolerance (<= 1 agrees; inf for a non-finite value where expected has a finite
    one), max |actual − expected|). `scale` is max|expected − base|, taken before a fused call could change base."""
    atol, rtol = TOLERANCES.get(expected.dtype, TOLERANCES[torch.float32])
    finite = torch.isfinite(expected)
    diff = (actual.float() - expected.float()).abs()  # NaN where actual is NaN
    allowed = atol * scale + rtol * expected.float().abs()
    ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / allowed)  # x/0 = inf: any change where none allowed
    inf = float("inf")
    ratio = torch.nan_to_num(ratio[finite], nan=inf, posinf=inf)
    worst = torch.nan_to_num(diff[finite], nan=inf, posinf=inf)
    return (float(ratio.max()), float(worst.max())) if ratio.numel() else (0.0, 0.0)


class FusedGuard:
    """Chooses between a fused callable and its reference for one run; holds what it found.

    state: "pending" (checked on the next call), "verified", "fell back" (the reference runs from then on) or
    "trusted" (check=False: explicit request, never compared). calls: how often it was asked. error: the first
    call's disagreement in units of the tolerance (see `disagreement`); max_abs_error: the same, unscaled. Both None
    until a check ran.
    """

    def __init__(self, name: str, check: bool):
        self.name = name
        self.state = PENDING if check else TRUSTED
        self.error: float | None = None
        self.max_abs_error: float | None = None
        self.calls = 0

    @property
    def uses_fused(self) -> bool:
        return self.state != FELL_BACK

    def run(self, fused: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor],
            base: torch.Tensor | None = None) -> torch.Tensor:
        """The fused result, or the reference's once they disagreed. On the check, reference runs first and must
        not modify its inputs; fused may (in place), so `base` (what the call changes, e.g. the block input; None:
        compare with the output's own scale) is read before it."""
        self.calls += 1
        if self.state != PENDING:
            return fused() if self.uses_fused else reference()
        expected = reference()
        change = expected.float() if base is None else expected.float() - base.float()
        scale = torch.nan_to_num(change.abs(), nan=0.0, posinf=0.0).amax()
        del change
        actual = fused()
        self.error, self.max_abs_error = disagreement(actual, expected, scale)
        if self.error <= 1.0:
            self.state = VERIFIED
            return actual
        self.state = FELL_BACK
        key = (self.name, expected.device.type, expected.dtype)
        if key not in _warned:
            _warned.add(key)
            atol, rtol = TOLERANCES.get(expected.dtype, TOLERANCES[torch.float32])
            logger.warning(
                "vidprune: %s disagrees with its torch reference (%.3g x the %s tolerance atol %g of the update, "
                "rtol %g; max abs error %.3g) on %s; running the torch path for the rest of this run "
                "(--kernels triton forces the fused one)",
                self.name, self.error, str(expected.dtype).removeprefix("torch."), atol, rtol, self.max_abs_error,
                device_label(expected.device),
            )
        return expected


def path_taken(backend: str, guard: FusedGuard) -> str | None:
    """What ran where `guard` chooses: "torch" (the torch backend), "triton", "triton (verified)", "torch (fell
    back)", or None when the Triton backend never reached it (no pruned block, or no score taken)."""
    if backend == "torch":
        return "torch"
    if not guard.calls:
        return None
    return {TRUSTED: "triton", VERIFIED: "triton (verified)", FELL_BACK: "torch (fell back)"}[guard.state]


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
