"""Attention processors that make a `WanTransformer3DModel` block-causal, and the state they share.

`apply_causal(transformer, "cache")` swaps every block's self-attention (`attn1`) for one that attends to the
block's `BlockKVCache` plus the current chunk, and cross-attention (`attn2`) for one that computes the prompt's
keys/values once per generation; `apply_causal(transformer, "mask")` swaps `attn1` for one that applies a
block-causal mask to a whole sequence (training, and the reference the cache is tested against). Both move the
rotary embedding to `state.frame_positions`. `remove_causal` restores the original processors exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from .kv_cache import BlockKVCache
from .rope import apply_frame_positions, remove_frame_positions

STATE_ATTRIBUTE = "_vidprune_causal"
MODES = ("cache", "mask")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary on interleaved pairs; x (B, S, heads, d), cos/sin (1, S, 1, d) with each value repeated twice."""
    pairs = x.unflatten(-1, (-1, 2))  # (B, S, heads, d/2, 2)
    partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (B, S, heads, d): (-x2, x1) pairs
    return (x * cos + partner * sin).type_as(x)


def self_attention_kv(attn, hidden_states: torch.Tensor, rotary_emb) -> tuple[torch.Tensor, ...]:
    """Query, key, value (B, S, heads, d) of Wan self-attention for these (normalised, modulated) tokens, query
    and key rotated. This is also what a pruned block must run on its full-width input to fill the cache."""
    query, key, value = _get_qkv_projections(attn, hidden_states, None)  # (B, S, D) each
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))  # (B, S, heads, d)
    return rotate(query, *rotary_emb), rotate(key, *rotary_emb), value


def _projection(attn, hidden_states: torch.Tensor, part: int) -> torch.Tensor:
    """One of Wan self-attention's query (0), key (1), value (2) projections (B, S, D), fused weights or not."""
    if attn.fused_projections:
        weight, bias = attn.to_qkv.weight.chunk(3)[part], attn.to_qkv.bias.chunk(3)[part]
        return torch.nn.functional.linear(hidden_states, weight, bias)
    return (attn.to_q, attn.to_k, attn.to_v)[part](hidden_states)


def self_attention_query(attn, hidden_states: torch.Tensor, rotary_emb) -> torch.Tensor:
    """The rotated query (B, S, heads, d) alone: a pruned block whose keys/values were supplied at full width."""
    query = attn.norm_q(_projection(attn, hidden_states, 0)).unflatten(2, (attn.heads, -1))  # (B, S, heads, d)
    return rotate(query, *rotary_emb)


def self_attention_key_value(attn, hidden_states: torch.Tensor, rotary_emb) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotated key and the value (B, S, heads, d) alone: what a pruned block supplies for every token of its
    chunk (`CausalState.supply_full_width`), without the queries only its kept tokens need."""
    key = attn.norm_k(_projection(attn, hidden_states, 1)).unflatten(2, (attn.heads, -1))  # (B, S, heads, d)
    value = _projection(attn, hidden_states, 2).unflatten(2, (attn.heads, -1))  # (B, S, heads, d)
    return rotate(key, *rotary_emb), value


def _project_out(attn, attended: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    hidden_states = attended.flatten(2, 3).type_as(query)  # (B, S, D)
    return attn.to_out[1](attn.to_out[0](hidden_states))


class CausalState:
    """What the processors of one transformer read: set by the sampler (or a training step) before each call."""

    def __init__(self, mode: str, num_layers: int):
        if mode not in MODES:
            raise ValueError(f"unknown causal mode {mode!r}; choose from {', '.join(MODES)}")
        self.mode, self.num_layers = mode, num_layers
        self.frame_positions: torch.Tensor | None = None  # (F,) absolute latent frame of each input frame
        self.mask: torch.Tensor | None = None  # "mask": (S, S) bool, True = may attend
        self.caches: list[BlockKVCache] = []  # "cache": one per block
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.writing = False  # "cache": this call is a context pass; append its keys/values after attending
        # "cache": full-width keys/values of this call's chunk for a block that computes only some of its tokens
        self.full_width: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.original_processors: list[tuple] = []  # (attn1, attn2) processors to restore

    def reset(self, tokens_per_frame: int, window: int | None = None, sink_frames: int = 0) -> None:
        """A new generation: empty caches (and cross-attention keys/values: a new prompt)."""
        self.caches = [BlockKVCache(tokens_per_frame, window, sink_frames) for _ in range(self.num_layers)]
        self.cross_kv = [None] * self.num_layers
        self.writing = False
        self.full_width = {}

    def supply_full_width(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Keys/values (B, S, heads, d) of every token of this call's chunk for block `layer`, computed with
        `self_attention_kv` from the block's full-width input (kept tokens' features computed, skipped ones passed
        through). A pruned block supplies them before it runs on its kept tokens: its self-attention then attends to
        the cache plus these, and a context pass caches these, so later chunks see every token."""
        self.full_width[layer] = (key, value)

    def first_frame(self) -> int:
        return int(self.frame_positions[0])

    @property
    def cache_nbytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches)


class CachedSelfAttention:
    """Block-causal self-attention of one chunk: its queries attend to the cached earlier frames and to itself."""

    def __init__(self, state: CausalState, layer: int):
        self.state, self.layer = state, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        supplied = self.state.full_width.pop(self.layer, None)
        if supplied is None:
            query, key, value = self_attention_kv(attn, hidden_states, rotary_emb)  # (B, S, heads, d)
        else:  # a pruned block: its kept tokens attend to (and a context pass caches) the whole chunk
            query = self_attention_query(attn, hidden_states, rotary_emb)  # (B, K, heads, d)
            key, value = supplied  # (B, S_chunk, heads, d)
        cache = self.state.caches[self.layer]
        keys, values = cache.attend_with(key, value)  # (B, cached + S, heads, d)
        attended = dispatch_attention_fn(query, keys, values)  # (B, S, heads, d)
        if self.state.writing:
            expected = len(self.state.frame_positions) * cache.tokens_per_frame
            if key.shape[1] != expected:  # a pruned block: the skipped tokens' keys/values would be missing
                raise ValueError(f"a context pass must write all {expected} tokens of its chunk, got {key.shape[1]}")
            cache.append(key, value, self.state.first_frame())
        return _project_out(attn, attended, query)


class MaskedSelfAttention:
    """Self-attention over a whole sequence under `state.mask` (S, S)."""

    def __init__(self, state: CausalState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if self.state.mask is None or self.state.mask.shape[-1] != hidden_states.shape[1]:
            raise ValueError(f"set state.mask for {hidden_states.shape[1]} tokens before the forward")
        query, key, value = self_attention_kv(attn, hidden_states, rotary_emb)  # (B, S, heads, d)
        attended = dispatch_attention_fn(query, key, value, attn_mask=self.state.mask)  # (B, S, heads, d)
        return _project_out(attn, attended, query)


class CachedCrossAttention:
    """Cross-attention whose text keys/values are computed on the first call of a generation and reused."""

    def __init__(self, state: CausalState, layer: int):
        self.state, self.layer = state, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        cached = self.state.cross_kv[self.layer]
        if cached is None or cached[0].shape[0] != hidden_states.shape[0]:
            if attn.fused_projections:
                key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)  # (B, L, D) each
            else:
                key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
            cached = (attn.norm_k(key).unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1)))
            self.state.cross_kv[self.layer] = cached  # (B, L, heads, d) each
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # (B, S, heads, d)
        return _project_out(attn, dispatch_attention_fn(query, *cached), query)


def apply_causal(transformer, mode: str) -> CausalState:
    """Make `transformer` block-causal (`mode` "cache" or "mask"); applying again first removes the old state."""
    if transformer.config.image_dim is not None or transformer.config.added_kv_proj_dim is not None:
        raise ValueError("causal generation supports text-to-video Wan transformers only (this one has image "
                         "cross-attention)")
    remove_causal(transformer)
    blocks = list(transformer.blocks)
    state = CausalState(mode, len(blocks))
    state.original_processors += [(block.attn1.processor, block.attn2.processor) for block in blocks]
    for layer, block in enumerate(blocks):
        if mode == "cache":
            block.attn1.set_processor(CachedSelfAttention(state, layer))
            block.attn2.set_processor(CachedCrossAttention(state, layer))
        else:
            block.attn1.set_processor(MaskedSelfAttention(state))
    apply_frame_positions(transformer, state)
    setattr(transformer, STATE_ATTRIBUTE, state)
    return state


def remove_causal(transformer) -> None:
    state = getattr(transformer, STATE_ATTRIBUTE, None)
    if state is None:
        return
    for block, (self_processor, cross_processor) in zip(transformer.blocks, state.original_processors):
        block.attn1.set_processor(self_processor)
        block.attn2.set_processor(cross_processor)
    remove_frame_positions(transformer)
    delattr(transformer, STATE_ATTRIBUTE)


@contextmanager
def causal_attention(transformer, mode: str):
    """`apply_causal` for the duration of a with-block."""
    state = apply_causal(transformer, mode)
    try:
        yield state
    finally:
        remove_causal(transformer)
