"""Token importance: attention received, temporal smoothing and top-k selection.

Importance of a token = the mean, over queries and heads, of the softmax attention it receives (a column
mean of softmax(QKᵀ/√d)). Long sequences use a strided subset of queries, so the Sq×N score matrix stays
small; the attention_received op never holds it whole in memory on the Triton path either.
"""

from __future__ import annotations

import torch

from ..kernels.attention_score import attention_received
from ..kernels.guard import FusedGuard
from ..models import BlockCall, ModelAdapter, TokenGrid


def strided_positions(num_tokens: int, max_count: int, device: torch.device) -> torch.Tensor | None:
    """Evenly spaced positions (covering every frame) when `num_tokens` exceeds `max_count`, else None (all)."""
    if num_tokens <= max_count:
        return None
    return torch.linspace(0, num_tokens - 1, max_count, device=device).round().long()  # (max_count,)


class ScoreProbe:
    """Lazily scores the video tokens entering one block call; a pruner asks only at the layers where it selects."""

    def __init__(
        self,
        adapter: ModelAdapter,
        block: torch.nn.Module,
        call: BlockCall,
        grid: TokenGrid,
        max_queries: int,
        backend: str,
        guard: FusedGuard | None = None,
    ):
        self.adapter, self.block, self.call = adapter, block, call
        self.grid, self.max_queries, self.backend, self.guard = grid, max_queries, backend, guard

    @property
    def hidden_states(self) -> torch.Tensor:
        return self.call.hidden_states  # (B, N, D) video tokens

    @torch.no_grad()
    def attention(self, positions: torch.Tensor | None = None, frame_local: bool = False) -> torch.Tensor:
        """Attention received by each token (B, N), or by the tokens at `positions` (B, K) among themselves.

        frame_local: queries and keys restricted to the token's own frame (per-frame scoring, as EViT on each
        frame); then `positions` must hold the same number of tokens in every frame.
        """
        hidden = self.hidden_states
        batch = hidden.shape[0]
        tokens = hidden.shape[1] if positions is None else positions.shape[1]
        groups = self.grid.frames if frame_local else 1
        per_group = tokens // groups
        group_queries = strided_positions(per_group, max(1, self.max_queries // groups), hidden.device)
        query_index = None
        if group_queries is not None:
            offsets = torch.arange(groups, device=hidden.device).unsqueeze(1) * per_group  # (G, 1)
            query_index = (offsets + group_queries).flatten().expand(batch, -1)  # (B, G·Sq)
        # (B, h, G·Sq, d), (B, h, K, d)
        query, key = self.adapter.query_key(self.block, self.call, positions, query_index)
        tokens_per_frame = per_group if frame_local else None

        def received(backend: str) -> torch.Tensor:
            return attention_received(query, key, tokens_per_frame=tokens_per_frame, backend=backend)  # (B, K)

        if self.backend == "torch" or self.guard is None:
            return received(self.backend)
        return self.guard.run(lambda: received("triton"), lambda: received("torch"))  # (B, K)


def smooth_temporal(scores: torch.Tensor, grid: TokenGrid, alpha: float) -> torch.Tensor:
    """TAPE Eq. 2: s̃[f] = α·s[f] + (1−α)·s[f−1] at the same spatial site, s̃[0] = s[0]; smaller α smooths more."""
    per_frame = scores.unflatten(1, (grid.frames, grid.tokens_per_frame))  # (B, F, H·W)
    smoothed = per_frame.clone()
    smoothed[:, 1:] = alpha * per_frame[:, 1:] + (1 - alpha) * per_frame[:, :-1]
    return smoothed.flatten(1)  # (B, N)


def top_positions(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted positions (B, count) of the highest scores (B, N); sorted keeps gathers frame-major."""
    return scores.topk(count, dim=1).indices.sort(dim=1).values


def top_positions_per_frame(scores: torch.Tensor, frames: int, count: int) -> torch.Tensor:
    """Sorted positions (B, count) of the highest scores taken in equal numbers from every frame.

    `scores` (B, N) is frame-major with N divisible by `frames`; `count` must be a multiple of `frames`, so
    no frame is pruned harder than another (the EViT adaptation of the TAPE paper, Sec. 3.2).
    """
    per_frame = scores.unflatten(1, (frames, -1))  # (B, F, N/F)
    local = per_frame.topk(count // frames, dim=2).indices.sort(dim=2).values  # (B, F, count/F)
    offsets = torch.arange(frames, device=scores.device).view(1, frames, 1) * per_frame.shape[2]
    return (local + offsets).flatten(1)  # (B, count)
