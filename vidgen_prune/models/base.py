"""What the pruning engine needs to know about a video-DiT family, and nothing more.

A pruner sees a token sequence laid out frame-major (`idx = f·H·W + h·W + w`) and a per-block call
`block(hidden_states, encoder_hidden_states, temb, rotary_emb)`. An adapter maps one diffusers
architecture onto that picture: where its blocks are, the token grid of a forward, which per-token block
arguments must follow a gather, and how to get a block's attention queries and keys for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TokenGrid:
    """Latent token grid of one transformer forward (after patchify)."""

    frames: int
    height: int
    width: int

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width


class ModelAdapter:
    """Interface one diffusers transformer family implements; see `WanAdapter` for the reference one."""

    name: str = ""
    pipeline_class_name: str = ""

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        raise NotImplementedError

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> TokenGrid:
        """Grid of the forward whose latent input is `hidden_states`."""
        raise NotImplementedError

    def gather_block_args(self, index: torch.Tensor, block_args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Block arguments after hidden_states, restricted to the tokens in `index` (B, K)."""
        raise NotImplementedError

    def query_key(
        self, block: torch.nn.Module, hidden_states: torch.Tensor, block_args: tuple[Any, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's self-attention queries and keys for `hidden_states`, each (B, heads, N, head_dim)."""
        raise NotImplementedError
