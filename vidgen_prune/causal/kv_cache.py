"""The per-block self-attention cache of causal generation: keys and values of earlier chunks, a rolling window.

Keys are stored after rotary, at their absolute frame positions, so they never need re-rotating when the window
rolls: a chunk's queries (rotated at their own absolute positions) see the true relative offsets.
"""

from __future__ import annotations

import torch


class BlockKVCache:
    """Keys and values (B, S, heads, head_dim) of the cached latent frames of one block, frame-major.

    At most `window` frames are kept (None: all): the first `sink_frames` frames ever written, then the most recent
    ones. `frames` lists the absolute latent frame index of each cached frame, in order.
    """

    def __init__(self, tokens_per_frame: int, window: int | None = None, sink_frames: int = 0):
        if window is not None and window <= sink_frames:
            raise ValueError(f"a window of {window} frames cannot keep {sink_frames} sink frames and anything else")
        self.tokens_per_frame, self.window, self.sink_frames = tokens_per_frame, window, sink_frames
        self.key: torch.Tensor | None = None  # (B, frames·tokens_per_frame, heads, head_dim)
        self.value: torch.Tensor | None = None
        self.frames: list[int] = []

    def __len__(self) -> int:
        """Cached tokens."""
        return 0 if self.key is None else self.key.shape[1]

    def append(self, key: torch.Tensor, value: torch.Tensor, first_frame: int) -> None:
        """Add the keys/values of consecutive frames starting at absolute frame `first_frame`, then evict."""
        if key.shape[1] % self.tokens_per_frame:
            raise ValueError(f"{key.shape[1]} tokens are not whole frames of {self.tokens_per_frame} tokens: the "
                             "cache needs every token of a chunk (full width), not a pruned subset")
        new_frames = list(range(first_frame, first_frame + key.shape[1] // self.tokens_per_frame))
        if self.frames and new_frames[0] <= self.frames[-1]:
            raise ValueError(f"frames {new_frames} do not follow the cached frames (last {self.frames[-1]})")
        self.key = key if self.key is None else torch.cat([self.key, key], dim=1)
        self.value = value if self.value is None else torch.cat([self.value, value], dim=1)
        self.frames += new_frames
        self._evict()

    def _evict(self) -> None:
        if self.window is None or len(self.frames) <= self.window:
            return
        recent = self.window - self.sink_frames
        keep = list(range(self.sink_frames)) + list(range(len(self.frames) - recent, len(self.frames)))
        rows = torch.tensor(keep, device=self.key.device)  # (window,) cached frame slots
        tokens = (rows[:, None] * self.tokens_per_frame + torch.arange(self.tokens_per_frame, device=rows.device))
        tokens = tokens.flatten()  # (window·tokens_per_frame,)
        self.key, self.value = self.key[:, tokens], self.value[:, tokens]
        self.frames = [self.frames[i] for i in keep]

    def attend_with(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys/values followed by the current chunk's: what the chunk's queries attend to."""
        if self.key is None:
            return key, value
        return torch.cat([self.key, key], dim=1), torch.cat([self.value, value], dim=1)

    @property
    def nbytes(self) -> int:
        return 0 if self.key is None else self.key.nbytes + self.value.nbytes
