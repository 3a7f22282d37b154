"""Teacher trajectories of causal generation, for `vidprune train-router --causal`.

The dense causal model generates every training prompt chunk by chunk; every transformer call is recorded: which
call it was (`ChunkCall`), the chunk latents it was given, its timestep and the dense velocity, and after each
context pass the keys and values it wrote into every block's cache. A training step replays one call: the caches are
filled with the dense keys and values of the chunks before it (as the dense generation held them, window included),
the controller is told the call's place in its chunk's schedule (`pruning.ChunkPruning`), and the router-pruned
transformer runs the call; its velocity is matched to the dense one. A context call is replayed as a context pass
(its pruned blocks supply full-width keys and values, as at inference), and trains the router on its velocity at
the clean timestep too. Every call of a generation is a draw: 5 chunks × 10 steps + 4 context passes = 54 on the
embedded causal model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from ..config import GenerateConfig, PruneConfig
from .attention import STATE_ATTRIBUTE, causal_attention
from .config import CausalConfig
from .pruning import ChunkPruning
from .sampler import ChunkCall, generate_causal


@dataclass
class CausalTrajectories:
    causal: CausalConfig
    tokens_per_frame: int
    calls: list[ChunkCall]  # one generation's calls, the same for every prompt (same frames, chunks, steps)
    inputs: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)  # [prompt][call] latents, text
    velocity: list[list[torch.Tensor]] = field(default_factory=list)  # [prompt][call] (B, z, f, h, w)
    # [prompt][chunk][layer] → (key, value) (B, S_chunk, heads, d) its context pass wrote
    context: list[list[list[tuple[torch.Tensor, torch.Tensor]]]] = field(default_factory=list)
    grid: dict = field(default_factory=dict)  # a full chunk's token grid

    @property
    def count(self) -> int:
        """Calls a training step draws from: every call of the generation, context passes included."""
        return len(self.calls)

    @contextmanager
    def session(self, transformer, controller):
        """The transformer block-causal (KV cache) and the controller driven chunk by chunk, while it trains."""
        with causal_attention(transformer, "cache") as state:
            self._pruning = ChunkPruning(controller, state)
            try:
                yield
            finally:
                self._pruning.remove()

    def replay(self, transformer, controller, pruner, prompts: list[int], index: int):
        """(velocity of the pruned transformer, dense velocity), each (B, z, f, h, w), of `prompts` at call `index`,
        with every block's cache holding what the dense generation held before that call."""
        call = self.calls[index]
        state = getattr(transformer, STATE_ATTRIBUTE)
        state.reset(self.tokens_per_frame, self.causal.kv_window, self.causal.sink_frames)
        chunks = self.causal.chunks(max(call.frames.stop for call in self.calls))
        for chunk in range(call.chunk):
            for layer, cache in enumerate(state.caches):
                key, value = (torch.cat([self.context[p][chunk][layer][part] for p in prompts]) for part in (0, 1))
                cache.append(key, value, chunks[chunk].start)  # (B·prompts, S_chunk, heads, d) each
        device = next(transformer.parameters()).device
        state.frame_positions = torch.arange(call.frames.start, call.frames.stop, device=device)
        state.writing = call.context
        controller.begin()
        self._pruning.on_call(call)
        latents = torch.cat([self.inputs[p][index][0] for p in prompts])  # (B, z, f, h, w)
        text = torch.cat([self.inputs[p][index][1] for p in prompts])  # (B, L, text_dim)
        timestep = torch.full((len(text),), call.timestep, device=device)
        try:
            velocity = transformer(latents, timestep, text, return_dict=False)[0]  # (B, z, f, h, w)
        finally:
            state.writing = False
        return velocity, torch.cat([self.velocity[p][index] for p in prompts])


@torch.no_grad()
def collect_causal_trajectories(pipe, prompts: tuple[str, ...], sampling: GenerateConfig, causal: CausalConfig,
                                seed: int, on_prompt: Callable[[int], None]) -> CausalTrajectories:
    """Generate every prompt densely and causally (seed + its index) and record every call (module docstring)."""
    trajectories = CausalTrajectories(causal, 0, [])
    current: list[ChunkCall] = []

    def record(module, args, output):
        latents, _, text = args  # (B, z, f, h, w), (B,), (B, L, text_dim)
        trajectories.inputs[-1].append((latents.clone(), text.clone()))
        trajectories.velocity[-1].append(output[0].clone())
        if current[-1].context:  # the chunk's keys/values are the newest in every cache (appended last, kept)
            caches = getattr(module, STATE_ATTRIBUTE).caches
            tokens = len(current[-1].frames) * caches[0].tokens_per_frame
            trajectories.context[-1].append([(c.key[:, -tokens:].clone(), c.value[:, -tokens:].clone())
                                             for c in caches])

    handle = pipe.transformer.register_forward_hook(record)
    try:
        for index, prompt in enumerate(prompts):
            current.clear()
            for part in (trajectories.inputs, trajectories.velocity, trajectories.context):
                part.append([])
            gen = replace(sampling, prompt=prompt, seed=seed + index)
            result = generate_causal(pipe, gen, causal, PruneConfig(), on_call=current.append)
            trajectories.calls, trajectories.tokens_per_frame = result.calls, result.tokens_per_frame
            trajectories.grid = asdict(result.grid)
            on_prompt(index + 1)
    finally:
        handle.remove()
    return trajectories
