"""Pruning inside causal chunks: the chunk sampler drives the pruning controller, and every pruned block of a context
pass supplies the KV cache with full-width keys and values.

The controller, the pruners and the block hooks are the bidirectional ones; nothing here names a method.
- A transformer call is one chunk at one timestep, so each pruner decides per chunk and step on the chunk's tokens
  (scores, smoothing and the router's temporal mixing within the chunk's frames), and skipped tokens bypass the block.
- Steps: before each call the sampler tells the controller where it is. A denoising call is step s of the chunk's T
  steps: TAPE's HighLow levels and the router's offsets follow the T steps (4 steps: −0.3, −0.1, +0.1, +0.3). The
  context pass runs as a one-step schedule, so every method prunes it at its mean rate r (the log counts it under
  step T). Each chunk's T denoising calls average r and its context pass is r, so the kept fraction over the whole
  generation, every call counted, is 1 − r. Run as the chunk's last step instead, the context pass would be pruned
  least: the router's +0.3 there overshoots Self-Forcing's budget (4 steps + 1 context pass) by 0.05.
- The context pass is pruned like any call. At a pruned block the keys and values it writes into the cache are
  projected from the block's full-width input: the kept tokens as the earlier blocks computed them, the skipped ones
  as they passed through. Its kept queries attend to the cache plus all of them. So the cache holds every token of
  every cached chunk. On denoising calls the kept tokens attend to the cache and to each other, as in bidirectional
  pruning.
- FLOPs: the adapter counts a block as if its chunk were alone. The attention to the cached keys, and a pruned context
  pass's full-width keys and values, are added to the controller's log here.
"""

from __future__ import annotations

from ..metrics.flops import cached_attention_flops, full_width_flops
from .attention import CausalState, self_attention_key_value


class ChunkPruning:
    """The pruning controller of one causal generation, driven chunk by chunk: `on_call(ChunkCall)` before each
    transformer call; it observes every block call through `controller.block_observers`."""

    def __init__(self, controller, state: CausalState):
        self.controller, self.state = controller, state
        transformer = controller.denoisers[0]
        self.width = controller.adapter.hidden_width(transformer)
        self.block_calls = 0  # block forwards observed (every block of every call: no cache skips one here)
        controller.block_observers.append(self.observe)

    def on_call(self, call) -> None:
        """`call` is a `sampler.ChunkCall`."""
        schedule = 1 if call.context else call.steps_per_chunk  # the context pass: one step, the mean rate
        self.controller.set_step(call.step, schedule)

    def observe(self, layer: int, block, call, plan) -> None:
        self.block_calls += 1
        tokens = call.hidden_states.shape[1]
        kept = tokens if plan is None else plan.kept
        cached = len(self.state.caches[layer])  # keys per sample, before this call writes
        log = self.controller.log
        log.dense_flops += cached_attention_flops(tokens, cached, self.width)
        log.flops += cached_attention_flops(kept, cached, self.width)
        if plan is None or not self.state.writing:
            return
        normed, rotary = self.controller.adapter.self_attention_input(block, call)  # (B, N, D), at every token
        self.state.supply_full_width(layer, *self_attention_key_value(block.attn1, normed, rotary))
        log.flops += full_width_flops(tokens, kept, self.width)

    def remove(self) -> None:
        self.controller.block_observers.remove(self.observe)
