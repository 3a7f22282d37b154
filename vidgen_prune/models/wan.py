"""Wan2.1 / Wan2.2 (`WanTransformer3DModel`): blocks are called as
`block(hidden_states, encoder_hidden_states, temb, rotary_emb)`.

Everything in `WanTransformerBlock` except `attn1` acts per token, so gather → block → scatter is exact for a
full index; what must follow a gather is the rotary (cos, sin), each (1, S, 1, head_dim), and for Wan2.2 TI2V
the per-token modulation `temb` (B, S, 6, D).
"""

from __future__ import annotations

from typing import Any

import torch

from ..kernels import gather_tokens
from .base import ModelAdapter, TokenGrid


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved-pair rotary embedding; x (B, S, heads, d), cos/sin (B or 1, S, 1, d)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, heads, d/2) each
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanAdapter(ModelAdapter):
    name = "wan"
    pipeline_class_name = "WanPipeline"

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.blocks)

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> TokenGrid:
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, frames, height, width = hidden_states.shape  # (B, C, F, H, W) latents
        return TokenGrid(frames // p_t, height // p_h, width // p_w)

    def gather_block_args(self, index: torch.Tensor, block_args: tuple[Any, ...]) -> tuple[Any, ...]:
        encoder_hidden_states, temb, (cos, sin) = block_args
        if temb.dim() == 4:  # Wan2.2 TI2V: per-token modulation (B, S, 6, D)
            temb = gather_tokens(temb, index)
        return encoder_hidden_states, temb, (gather_tokens(cos, index), gather_tokens(sin, index))

    def query_key(
        self,
        block: torch.nn.Module,
        hidden_states: torch.Tensor,
        block_args: tuple[Any, ...],
        query_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention q (B, heads, Sq, d) for the tokens in `query_index` (all when None) and k (B, heads, N, d)."""
        _, temb, (cos, sin) = block_args
        if temb.dim() == 4:
            shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float())[:, :, :2].unbind(2)  # (B, S, D)
        else:
            shift, scale = (block.scale_shift_table + temb.float())[:, :2].chunk(2, dim=1)  # (B, 1, D) each
        normed = (block.norm1(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)  # (B, N, D)
        attn = block.attn1
        query_tokens = normed if query_index is None else gather_tokens(normed, query_index)  # (B, Sq, D)
        if query_index is not None:
            cos_q, sin_q = gather_tokens(cos, query_index), gather_tokens(sin, query_index)
        else:
            cos_q, sin_q = cos, sin
        if getattr(attn, "fused_projections", False):  # fused qkv weights: split the projection instead
            dim = attn.to_qkv.out_features // 3
            query = torch.nn.functional.linear(query_tokens, attn.to_qkv.weight[:dim], attn.to_qkv.bias[:dim])
            key = torch.nn.functional.linear(normed, attn.to_qkv.weight[dim : 2 * dim], attn.to_qkv.bias[dim : 2 * dim])
        else:
            query, key = attn.to_q(query_tokens), attn.to_k(normed)  # (B, Sq, D), (B, N, D)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # (B, Sq, heads, d)
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))  # (B, N, heads, d)
        query, key = _apply_rotary(query, cos_q, sin_q), _apply_rotary(key, cos, sin)
        return query.transpose(1, 2), key.transpose(1, 2)  # (B, heads, Sq, d), (B, heads, N, d)
