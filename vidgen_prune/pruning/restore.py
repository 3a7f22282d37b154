"""Restoration: an estimated update for the tokens a block skipped, so skipping does not freeze them.

A skipped token passes through a pruned block unchanged: its features stop following the denoising while its
neighbours move on, which shows as speckles that never clear. Merging (ToMe) avoids that by giving every merged
token its group's update, and holds fidelity better at the same budget. Restoration does the same for every
skip method, without changing which tokens the block computes (so the budget and the kept fraction stay as
they are): after the block, each skipped token adds an estimate of the update it would have received, made from
the updates u = out − in of the computed (kept) tokens.

- `similar`: the update of the kept token in the same latent frame whose block-input features are most cosine-
  similar to the skipped token's. The match is chosen once for each new kept set (at the first pruned block after
  a scoring block, from that block's input) and reused until the kept set changes: an S_skip × S_kept similarity
  per frame, then one gather per pruned block.
- `neighbours`: the mean update of the kept tokens among the 26 neighbours in space and time (a 3×3×3 window of
  the token grid): a normalised box filter, 27 adds per token and channel per pruned block. A skipped token with
  no kept neighbour keeps no update.

Both apply to plans whose other tokens pass through unchanged (`TokenPlan.passes_through`: skipping, the router's
gated skipping), not to merging.
"""

from __future__ import annotations

import torch

from ..models import TokenGrid

RESTORES = ("none", "similar", "neighbours")
NEIGHBOURHOOD = 3  # window side in latent frames and token rows/columns


def kept_mask(positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, N) bool, True at the kept `positions` (B, K)."""
    mask = torch.zeros(positions.shape[0], tokens, dtype=torch.bool, device=positions.device)
    return mask.scatter_(1, positions, True)


def full_update(update: torch.Tensor, positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """The kept tokens' updates (B, K, D) at their positions in a zero (B, N, D) tensor."""
    full = update.new_zeros(update.shape[0], tokens, update.shape[2])
    return full.scatter_(1, positions.unsqueeze(-1).expand_as(update), update)


@torch.no_grad()  # a choice of rows: no gradient flows through it (router training)
def most_similar_kept(hidden: torch.Tensor, positions: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """(B, N) int64: for each token, the position of the most cosine-similar kept token of its own latent frame
    (itself when kept; a frame with no kept token takes the best match over the whole clip)."""
    batch, tokens, _ = hidden.shape
    kept = kept_mask(positions, tokens)  # (B, N)
    normed = torch.nn.functional.normalize(hidden.float(), dim=-1)  # (B, N, D)
    per_frame = grid.tokens_per_frame
    match = torch.arange(tokens, device=hidden.device).expand(batch, -1).clone()  # (B, N): kept map to themselves
    for frame in range(grid.frames):  # one frame at a time: (B, S, S) instead of (B, F, S, S) in memory
        sites = slice(frame * per_frame, (frame + 1) * per_frame)
        frame_kept = kept[:, sites]  # (B, S)
        candidates = normed if not bool(frame_kept.any(dim=1).all()) else normed[:, sites]  # whole clip if needed
        candidate_kept = kept if candidates.shape[1] == tokens else frame_kept
        similarity = normed[:, sites] @ candidates.transpose(1, 2)  # (B, S, S or N)
        similarity = similarity.masked_fill(~candidate_kept.unsqueeze(1), float("-inf"))
        best = similarity.argmax(dim=2) + (0 if candidates.shape[1] == tokens else frame * per_frame)  # (B, S)
        match[:, sites] = torch.where(frame_kept, match[:, sites], best)
    return match


def neighbour_mean(update: torch.Tensor, kept: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """(B, N, D): for each token, the mean of `update` (B, N, D, zero off the kept tokens) over the kept tokens in
    its 3×3×3 space-time window (`kept` (B, N) bool); zero where the window holds no kept token."""
    batch, tokens, dim = update.shape
    shape = (batch, grid.frames, grid.height, grid.width)
    volume = update.reshape(*shape, dim).permute(0, 4, 1, 2, 3)  # (B, D, F, H, W)
    weight = kept.to(update.dtype).reshape(batch, 1, *shape[1:])  # (B, 1, F, H, W)
    pad = (NEIGHBOURHOOD // 2,) * 6  # zero borders: a grid smaller than the window (2 latent frames) still works

    def box(x: torch.Tensor) -> torch.Tensor:  # the window's mean, zeros outside the grid counted: sum ÷ 27
        return torch.nn.functional.avg_pool3d(torch.nn.functional.pad(x.float(), pad), NEIGHBOURHOOD, stride=1)

    summed, counted = box(volume), box(weight)  # (B, D, F, H, W), (B, 1, F, H, W)
    mean = torch.where(counted > 0, summed / counted.clamp(min=1e-12), torch.zeros_like(summed))
    return mean.permute(0, 2, 3, 4, 1).reshape(batch, tokens, dim).to(update.dtype)  # (B, N, D)


class Restorer:
    """Restoration `mode` for one generation: remembers the current match while the kept set stays the same."""

    def __init__(self, mode: str):
        if mode not in RESTORES:
            raise ValueError(f"unknown restore {mode!r}; choose from {', '.join(RESTORES)}")
        self.mode = mode
        self._positions: torch.Tensor | None = None
        self._match: torch.Tensor | None = None
        self.rematched = False  # the last `apply` chose a new match (for the FLOP count)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def apply(self, video_out: torch.Tensor, rows_in: torch.Tensor, hidden_in: torch.Tensor,
              positions: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        """`video_out` (B, N, D) after a pruned block with every skipped token given its estimated update.

        rows_in: the kept tokens' block input (B, K, D); hidden_in: the whole block input (B, N, D).
        """
        tokens = video_out.shape[1]
        update = video_out.gather(1, positions.unsqueeze(-1).expand_as(rows_in)) - rows_in  # (B, K, D)
        spread = full_update(update, positions, tokens)  # (B, N, D)
        kept = kept_mask(positions, tokens)  # (B, N)
        if self.mode == "neighbours":
            estimate = neighbour_mean(spread, kept, grid)  # (B, N, D)
        else:
            self.rematched = self._positions is not positions
            if self.rematched:
                self._positions, self._match = positions, most_similar_kept(hidden_in, positions, grid)
            estimate = spread.gather(1, self._match.unsqueeze(-1).expand_as(spread))  # (B, N, D)
        return video_out + estimate * (~kept).unsqueeze(-1).to(estimate.dtype)  # kept rows unchanged
