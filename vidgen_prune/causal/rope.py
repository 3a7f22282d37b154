"""Wan's rotary embedding at chosen latent-frame positions, so a chunk is rotated where it sits in the video.

`WanRotaryPosEmbed.forward` always numbers the input's frames 0, 1, 2...; a chunk starting at latent frame 6
must use rows 6, 7, 8 of the temporal table instead (Self-Forcing's `causal_rope_apply(start_frame=...)`), and a
teacher-forcing sequence holds two copies of the same frames at the same positions.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

ROPE_HOOK = "vidprune_causal_rope"


def rotary_at_frames(rope, frame_positions: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (1, F·H·W, 1, head_dim), for latent frames at `frame_positions` (F,) of an H×W token grid.

    The same tables and layout as `WanRotaryPosEmbed.forward` (temporal | height | width parts of head_dim).
    """
    sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
    frames = len(frame_positions)
    if int(frame_positions.max()) >= rope.max_seq_len:
        raise ValueError(f"latent frame {int(frame_positions.max())} is past the rotary table "
                         f"({rope.max_seq_len} positions)")
    tables = []
    for freqs in (rope.freqs_cos, rope.freqs_sin):
        time, rows, cols = freqs.split(sizes, dim=1)  # (max_seq_len, t_dim), (.., h_dim), (.., w_dim)
        time = time[frame_positions.to(freqs.device)].view(frames, 1, 1, -1).expand(frames, height, width, -1)
        rows = rows[:height].view(1, height, 1, -1).expand(frames, height, width, -1)
        cols = cols[:width].view(1, 1, width, -1).expand(frames, height, width, -1)
        tables.append(torch.cat([time, rows, cols], dim=-1).reshape(1, frames * height * width, 1, -1))
    return tables[0], tables[1]


class FramePositionsHook(ModelHook):
    """Replaces `transformer.rope`'s forward: frames at `state.frame_positions` when set, else 0, 1, 2..."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def new_forward(self, module, hidden_states: torch.Tensor):
        positions = self.state.frame_positions  # (F,) long, or None
        if positions is None:
            return self.fn_ref.original_forward(hidden_states)
        _, _, frames, height, width = hidden_states.shape  # (B, C, F, H, W) latents
        p_t, p_h, p_w = module.patch_size
        if len(positions) != frames // p_t:
            raise ValueError(f"{len(positions)} frame positions for {frames // p_t} latent frames")
        return rotary_at_frames(module, positions, height // p_h, width // p_w)


def apply_frame_positions(transformer, state) -> None:
    HookRegistry.check_if_exists_or_initialize(transformer.rope).register_hook(FramePositionsHook(state), ROPE_HOOK)


def remove_frame_positions(transformer) -> None:
    HookRegistry.check_if_exists_or_initialize(transformer.rope).remove_hook(ROPE_HOOK, recurse=False)
