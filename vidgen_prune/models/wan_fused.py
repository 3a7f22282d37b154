"""Token-skip forward of one diffusers WanTransformerBlock built from the fused kernels.

Computes what `hs.scatter(1, g, block(hs.gather(1, g), ehs, temb_k, rope_k))` computes (g = idx expanded over D),
but norm1 and norm3 gather their rows inside the kernel and the three residuals are added straight into the kept
rows of `hidden_states`, so there is no final scatter; only norm2 (affine, or Identity) still reads a torch-gathered
copy. Line for line it follows `WanTransformerBlock.forward` in diffusers 0.42: self-attention among the kept tokens,
cross-attention, FFN.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from vidgen_prune.kernels import (
    gather_norm_modulate,
    gather_rotary,
    gather_tokens,
    resolve_backend,
    scatter_gated_residual_,
)


@torch.no_grad()
def fused_skip_forward(
    block: WanTransformerBlock,
    hidden_states: torch.Tensor,
    idx: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    rotary_emb: tuple[torch.Tensor, torch.Tensor],
    backend: str = "auto",
) -> torch.Tensor:
    """Run `block` on the tokens idx[b] of each sample; every other token passes through unchanged.

    IN PLACE: `hidden_states` (B, N, D) is modified and returned. Kept rows receive the block's output, other rows
    are not written at all (bit-identical). A caller that still needs the block's input (a residual cache such as
    FirstBlockCache, a score taken from the input) must clone it first. Inference only (runs under no_grad).
    idx: (B, K) int64, unique per row (sorted keeps memory access monotone; not required for correctness).
    encoder_hidden_states: (B, L, D_text) as the block gets it. temb: the block's timestep projection, (B, 6, D), or
    (B, N, 6, D) per token (Wan2.2 TI2V). rotary_emb: (cos, sin), each (1 or B, N, 1, head_dim).
    backend: "auto" | "triton" | "torch", see vidgen_prune.kernels.resolve_backend.
    """
    backend = resolve_backend(backend, hidden_states.device)  # once, not per op
    if temb.ndim == 4:
        # Per-token modulation: the same (B, N, 6, D) fp32 sum the dense block forms; the kernels read row idx[b, k].
        mods = (block.scale_shift_table.unsqueeze(0) + temb.float()).unbind(2)  # 6 × (B, N, D)
    else:
        mods = (block.scale_shift_table + temb.float()).chunk(6, dim=1)  # 6 × (B, 1, D)
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods
    rotary_k = gather_rotary(*rotary_emb, idx, backend=backend)  # 2 × (B, K, 1, head_dim)

    # 1. Self-attention among the kept tokens
    eps = block.norm1.eps  # norm1 and norm3 are both built from the block's eps
    norm_k = gather_norm_modulate(hidden_states, idx, shift_msa, scale_msa, eps, backend=backend)  # (B, K, D)
    attn_k = block.attn1(norm_k, None, None, rotary_k)  # (B, K, D)
    scatter_gated_residual_(hidden_states, idx, attn_k, gate_msa, backend=backend)

    # 2. Cross-attention; norm2 is an affine FP32LayerNorm or Identity, so it stays a torch module call
    hidden_k = gather_tokens(hidden_states, idx)  # (B, K, D)
    norm_k = block.norm2(hidden_k.float()).type_as(hidden_k)  # (B, K, D)
    attn_k = block.attn2(norm_k, encoder_hidden_states, None, None)  # (B, K, D)
    scatter_gated_residual_(hidden_states, idx, attn_k, None, backend=backend)

    # 3. Feed-forward
    norm_k = gather_norm_modulate(hidden_states, idx, c_shift_msa, c_scale_msa, eps, backend=backend)  # (B, K, D)
    ff_k = block.ffn(norm_k)  # (B, K, D)
    return scatter_gated_residual_(hidden_states, idx, ff_k, c_gate_msa, backend=backend)  # (B, N, D)
