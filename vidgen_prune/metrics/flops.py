"""Analytic FLOP count of DiT block stacks, dense and with token skipping: Wan-style blocks (self-attention over the
video tokens, cross-attention to the text) and joint-attention blocks (the text tokens inside the attention).

One multiply-add = 2 FLOPs. Per block, with K tokens computed (kept), dim D, FFN width D_ff, T text tokens:

    self-attention projections   Q, K, V, out on K tokens       8·K·D²
    self-attention core          QKᵀ and A·V among K tokens      4·K²·D
    cross-attention projections  Q, out on K tokens              4·K·D²
                                 K, V on the T text tokens       4·T·D²
    cross-attention core         QKᵀ and A·V, K queries × T keys 4·K·T·D
    FFN                          D → D_ff → D on K tokens        4·K·D·D_ff

Norms, modulation, activations, softmax, RoPE and the gather/scatter of skipped tokens are O(K·D) and left out,
as is the cost of scoring tokens (TAPE's attention-received score), so the speedup below is an upper bound.

Wan2.1-1.3B (D = 1536, D_ff = 8960, 30 layers; 81×480×832 → 32,760 tokens; T = 512), per block:
    8·K·D² = 0.62 TFLOP, 4·K²·D = 6.59, 4·K·D² = 0.31, 4·T·D² = 0.005, 4·K·T·D = 0.10, 4·K·D·D_ff = 1.80
    total 9.43 TFLOP/block, 283 TFLOP per forward; the self-attention core is 70 % of it.
So keeping a fraction k of the tokens in every layer costs ≈ 0.70·k² + 0.30·k of dense: keep 0.8 → 1.45x bound,
0.7 → 1.81x, 0.6 → 2.31x (the H100 probe measured 1.37x / 1.68x / 2.12x, 92–94 % of the bound).

Joint-attention blocks (HunyuanVideo's dual- and single-stream blocks, CogVideoX's blocks) run the K kept video tokens
and all T text tokens through one attention; the text tokens are never pruned, so they are always paid for. Per
block, with S = K + T tokens in the joint sequence:

    attention projections        Q, K, V, out on S tokens        8·S·D²
    attention core               QKᵀ and A·V among S tokens      4·S²·D
    FFN                          D → D_ff → D on S tokens        4·S·D·D_ff

This holds for every such block although they are built differently: a dual-stream block has separate weights for
the text (its QKV, out and FFN on T rows), CogVideoX concatenates [text; video] for one QKV, out and FFN, and a
HunyuanVideo single-stream block runs QKV (6·S·D²) and the MLP's first layer (2·S·D·D_ff) in parallel and projects
their concatenation D + D_ff → D (2·S·D² + 2·S·D·D_ff) once. Modulation, norms and RoPE are left out as above.

HunyuanVideo (D = 3072, D_ff = 12288, 60 blocks; 129×720×1280 → 33×45×80 = 118,800 tokens; T = 256), per block:
    8·S·D² = 8.99 TFLOP, 4·S²·D = 174.2, 4·S·D·D_ff = 17.98; total 201 TFLOP/block, 12.1 PFLOP per forward, the
    attention core 87 % of it. Keep 0.7 of the video tokens in every block → 1.93x bound (S = 83,416).
CogVideoX-5B (D = 3072, D_ff = 12288, 42 blocks; 49×480×720 → 13×30×45 = 17,550 tokens; T = 226), per block:
    8·S·D² = 1.34 TFLOP, 4·S²·D = 3.88, 4·S·D·D_ff = 2.68; total 7.91 TFLOP/block, 332 TFLOP per forward (each of
    CFG's two samples); the attention core 49 %. Keep 0.7 → 1.66x bound.
"""


def _kept(tokens: int, kept: int | None) -> int:
    kept = tokens if kept is None else kept
    if not 0 <= kept <= tokens:
        raise ValueError(f"kept must lie in [0, {tokens}], got {kept}")
    return kept


def block_flop_breakdown(tokens: int, dim: int, ffn_dim: int, text_tokens: int, kept: int | None = None) -> dict:
    """FLOPs of one block by component (keys as in the module docstring table); ``kept`` defaults to dense."""
    kept = _kept(tokens, kept)
    return {
        "self_attn_proj": 8.0 * kept * dim**2,
        "self_attn_core": 4.0 * kept**2 * dim,
        "cross_attn_proj": 4.0 * kept * dim**2 + 4.0 * text_tokens * dim**2,
        "cross_attn_core": 4.0 * kept * text_tokens * dim,
        "ffn": 4.0 * kept * dim * ffn_dim,
    }


def block_flops(tokens: int, dim: int, ffn_dim: int, text_tokens: int, kept: int | None = None) -> float:
    """FLOPs of one block computing ``kept`` of its ``tokens`` tokens (all of them when ``kept`` is None)."""
    return sum(block_flop_breakdown(tokens, dim, ffn_dim, text_tokens, kept).values())


def forward_flops(num_tokens: int, kept_per_layer: list[int], dim: int, ffn_dim: int, text_tokens: int) -> float:
    """FLOPs of one transformer forward: one block per entry of ``kept_per_layer`` (a dense block keeps all)."""
    return sum(block_flops(num_tokens, dim, ffn_dim, text_tokens, kept) for kept in kept_per_layer)


def flop_bound_speedup(num_tokens: int, kept_per_layer: list[int], dim: int, ffn_dim: int, text_tokens: int) -> float:
    """Dense FLOPs / pruned FLOPs for the same stack: the speedup token skipping could reach at best."""
    dense = forward_flops(num_tokens, [num_tokens] * len(kept_per_layer), dim, ffn_dim, text_tokens)
    return dense / forward_flops(num_tokens, kept_per_layer, dim, ffn_dim, text_tokens)


def cached_attention_flops(queries: int, cached_keys: int, dim: int) -> float:
    """What attending to a causal KV cache adds to one block: QKᵀ and A·V of `queries` tokens against `cached_keys`
    cached keys, 4·q·C·D (`block_flops` counts the chunk's own keys). Self-Forcing 1.3B's last chunk: 4,680 queries ×
    28,080 cached keys × 1,536 = 0.81 TFLOP per block against 0.13 among the chunk's own tokens."""
    return 4.0 * queries * cached_keys * dim


def full_width_flops(tokens: int, kept: int, dim: int) -> float:
    """What a pruned block of a causal context pass adds to `block_flops(kept)`: the keys and values of the
    `tokens` − `kept` tokens it does not compute (4·(N − K)·D², for the cache) and its kept queries attending to them
    (4·K·(N − K)·D)."""
    skipped = tokens - _kept(tokens, kept)
    return 4.0 * skipped * dim**2 + 4.0 * kept * skipped * dim


def restore_flops(mode: str, tokens: int, kept: int, dim: int, tokens_per_frame: int, rematched: bool) -> float:
    """FLOPs restoration adds to one pruned block call (vidgen_prune.pruning.restore).

    neighbours: two 3×3×3 box filters (updates and the kept mask) and a divide: ≈ 2·27·N·D.
    similar: a gather-add of one update per token, N·D, plus, when the kept set changed, the cosine similarities of
    every token with every token of its frame: 2·N·S·D (S tokens per frame). On Wan2.1-1.3B at 480p (N = 32,760,
    S = 1,560, D = 1,536) that is 0.16 TFLOP per new match against 9.4 TFLOP for one dense block.
    """
    if mode == "neighbours":
        return 2.0 * 27 * tokens * dim
    return tokens * dim + (2.0 * tokens * tokens_per_frame * dim if rematched else 0.0)
def joint_block_flop_breakdown(tokens: int, dim: int, ffn_dim: int, text_tokens: int, kept: int | None = None) -> dict:
    """FLOPs of one joint-attention block by component (the second table of the module docstring): ``kept`` of
    ``tokens`` video tokens (all when None) and every one of the ``text_tokens``."""
    kept = _kept(tokens, kept)
    joint = kept + text_tokens
    return {
        "attn_proj": 8.0 * joint * dim**2,
        "attn_core": 4.0 * joint**2 * dim,
        "ffn": 4.0 * joint * dim * ffn_dim,
    }


def joint_block_flops(tokens: int, dim: int, ffn_dim: int, text_tokens: int, kept: int | None = None) -> float:
    """FLOPs of one joint-attention block computing ``kept`` of its ``tokens`` video tokens and all text tokens."""
    return sum(joint_block_flop_breakdown(tokens, dim, ffn_dim, text_tokens, kept).values())
