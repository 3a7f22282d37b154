"""STA-ViT baseline: Semantic-aware Temporal Accumulation score (Ding et al., ICCV 2023), as token skipping.

A token is redundant when it repeats the same spatial site of the previous frame (inter-frame cosine
similarity of the block inputs) *and* carries a weak activation (its feature L2 norm, relative to the
strongest token of its frame): redundancy = max(similarity, 0) · (1 − norm / max norm). The block computes the
K least redundant tokens; the rest pass through unchanged. The first latent frame has no previous frame, so
it accumulates no redundancy and is always computed (STA-ViT's key frame).

Where it prunes: every block at the constant rate r (kept fraction 1 − r in every block and step, TAPE's
budget), rescoring from each block's own input: the score costs O(N·D), so unlike attention scores it
needs no dense scoring block. Selection is global (not per frame) and has no temporal smoothing: exactly
what the TAPE paper says such methods lack.
"""

from __future__ import annotations

import torch

from ..models import TokenGrid
from .base import EveryBlockPruner
from .plan import TokenPlan, skip_plan
from .scores import ScoreProbe, top_positions


def redundancy(hidden: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """STA redundancy (B, N) in [0, 1] of block-input tokens `hidden` (B, N, D); the first frame scores 0."""
    frames = hidden.float().unflatten(1, (grid.frames, grid.tokens_per_frame))  # (B, F, S, D)
    similarity = torch.zeros(frames.shape[:3], device=hidden.device)  # (B, F, S)
    similarity[:, 1:] = torch.nn.functional.cosine_similarity(frames[:, 1:], frames[:, :-1], dim=-1).clamp(min=0)
    strength = frames.norm(dim=-1)  # (B, F, S)
    weakness = 1.0 - strength / strength.amax(dim=2, keepdim=True).clamp(min=1e-12)  # (B, F, S)
    return (similarity * weakness).flatten(1)  # (B, N)


class StaVitPruner(EveryBlockPruner):
    name = "stavit"

    def reduce(self, probe: ScoreProbe) -> TokenPlan:
        importance = -redundancy(probe.hidden_states, self.info.grid)  # (B, N)
        return skip_plan(top_positions(importance, self.keep))
