"""ToMe baseline: bipartite soft matching of similar tokens, merge → block → unmerge (Bolya & Hoffman 2023).

In every block and every frame, the tokens at even (h, w) — one per 2×2 window, as tomesd picks
destinations — form set B and the rest set A. Each A token is matched to its most cosine-similar B token in
the same frame (block-input features); the N − K best-matched A tokens over the whole clip merge into their
match. The block computes K rows: every B token (the size-weighted mean of itself and what merged into it, at
the B token's position) and the unmatched A tokens. Unmerge gives each merged token its destination row's
update: out = full + (rows_out − rows_in)[assignment].

Where it prunes: every block at the constant rate r, so the kept fraction is 1 − r in every block and step —
the same budget TAPE spends. ToMe scores from the block input itself (no attention, no dense scoring block),
which is how tomesd applies it; matching within a frame keeps the similarity matrix at (S·3/4)×(S/4) per
frame instead of N×N, and is the spatial merging the TAPE paper compares against (it ignores time).
"""

from __future__ import annotations

import torch

from ..models import TokenGrid
from .base import EveryBlockPruner
from .plan import TokenPlan
from .scores import ScoreProbe

MAX_TOME_REDUCTION = 0.7  # 1/4 of the tokens are destinations, the other 3/4 can merge; odd grids have a few more


def window_destinations(grid: TokenGrid, device: torch.device) -> torch.Tensor:
    """(S,) bool over one frame's sites (h·W + w): True at even h and even w, one per 2×2 window."""
    rows = torch.arange(grid.height, device=device).unsqueeze(1) % 2 == 0  # (H, 1)
    cols = torch.arange(grid.width, device=device).unsqueeze(0) % 2 == 0  # (1, W)
    return (rows & cols).flatten()  # (S,)


def merge_plan(hidden: torch.Tensor, grid: TokenGrid, keep: int) -> TokenPlan:
    """ToMe's merge/unmerge for `hidden` (B, N, D): `keep` rows computed, the other tokens merged into them."""
    batch, tokens, dim = hidden.shape
    is_destination = window_destinations(grid, torch.device("cpu"))  # (S,); on the host: meta tensors have no values
    dst_sites = is_destination.nonzero().squeeze(1).to(hidden.device)  # (Sb,)
    src_sites = (~is_destination).nonzero().squeeze(1).to(hidden.device)  # (Sa,)
    merges = tokens - keep
    if not 0 <= merges <= grid.frames * len(src_sites):
        raise ValueError(f"tome: cannot merge {merges} of {tokens} tokens with {len(dst_sites)} destinations/frame")

    normed = torch.nn.functional.normalize(hidden.float(), dim=-1).unflatten(1, (grid.frames, -1))  # (B, F, S, D)
    similarity = normed[:, :, src_sites] @ normed[:, :, dst_sites].transpose(-1, -2)  # (B, F, Sa, Sb)
    best_similarity, best_site = similarity.max(dim=-1)  # (B, F, Sa) each
    frame_offsets = torch.arange(grid.frames, device=hidden.device).unsqueeze(1) * grid.tokens_per_frame  # (F, 1)
    src_positions = (frame_offsets + src_sites).flatten()  # (F·Sa,)
    match_positions = (frame_offsets.unsqueeze(0) + dst_sites[best_site]).flatten(1)  # (B, F·Sa)
    merged = best_similarity.flatten(1).topk(merges, dim=1).indices  # (B, m) into the F·Sa sources

    own = torch.arange(tokens, device=hidden.device).expand(batch, -1)  # (B, N)
    target = own.clone().scatter_(1, src_positions[merged], match_positions.gather(1, merged))  # merged → its dst
    is_kept = target == own  # (B, N)
    # the kept positions in order, without nonzero()'s host sync: the merged ones sort to the end as N
    positions = torch.where(is_kept, own, tokens).sort(dim=1).values[:, :keep]  # (B, K)
    row_of = is_kept.long().cumsum(1) - 1  # (B, N): row index of each kept position
    assignment = row_of.gather(1, target)  # (B, N): the row every token's update comes from
    sizes = torch.zeros(batch, keep, 1, device=hidden.device, dtype=hidden.dtype)
    sizes.scatter_add_(1, assignment.unsqueeze(-1), torch.ones_like(hidden[..., :1]))  # (B, K, 1)
    spread = assignment.unsqueeze(-1).expand(-1, -1, dim)  # (B, N, D)

    def gather(full: torch.Tensor) -> torch.Tensor:
        summed = torch.zeros(batch, keep, dim, device=full.device, dtype=full.dtype).scatter_add_(1, spread, full)
        return summed / sizes  # (B, K, D): each group's mean

    def scatter(full: torch.Tensor, rows_in: torch.Tensor, rows_out: torch.Tensor) -> torch.Tensor:
        return full + (rows_out - rows_in).gather(1, spread)  # (B, N, D)

    return TokenPlan(positions, gather, scatter)


class TomePruner(EveryBlockPruner):
    name = "tome"

    def check_budget(self, num_layers: int) -> None:
        if self.config.reduction > MAX_TOME_REDUCTION:
            raise ValueError(
                f"tome: reduction {self.config.reduction} is out of reach; at most {MAX_TOME_REDUCTION} of the tokens "
                "can merge (one destination per 2×2 window)"
            )

    def reduce(self, probe: ScoreProbe) -> TokenPlan:
        return merge_plan(probe.hidden_states, self.info.grid, self.keep)
