"""What the pruning engine needs to know about a video-DiT family, and nothing more.

A pruner sees the video tokens of one block call, laid out frame-major (`idx = f·H·W + h·W + w`), as a
(B, N, D) tensor. An adapter maps one diffusers family onto that picture:
- transformer level: its blocks (one flat list, in call order), the token grid of a forward, the timestep of a
  call, each block's `BlockLayout` (which arguments hold per-video-token values and how they follow a gather,
  where the video stream sits in the block's output), the self-attention queries and keys for scoring;
- pipeline level: which pipeline components are denoisers, how the generic generation settings map onto the
  pipeline's own call, the family's input rules, its presets and real-size profiles.
Text tokens that a family carries beside the video tokens (joint attention) never enter the pruned sequence:
they stay in their own block argument and are always computed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

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


# (value of a per-token block argument, index (B, K)) → the value for the K gathered tokens
GatherFn = Callable[[Any, torch.Tensor], Any]
# (value of an argument over the joint sequence [N video; L text] (a joint attention mask), index (B, K), N) → the
# value over [K video; L text]
JointGatherFn = Callable[[Any, torch.Tensor, int], Any]


@dataclass(frozen=True)
class BlockLayout:
    """How one kind of block is called and what it returns, seen from the video tokens.

    token_args: the arguments (by parameter name) that hold one entry per video token, and how each follows a
        gather of the video tokens; every other argument passes through unchanged.
    video_output: the block returns a tuple with the video stream at this index (the rest, e.g. the text stream of
        joint attention, is returned as the block computed it); None: it returns the video tensor itself.
    batch_args: for families whose per-token arguments have no batch dimension (a rotary table (N, D) shared by
        the batch), the arguments that do carry the batch: when such a token argument is present and the samples
        keep different tokens, the block runs once per sample with these sliced, and each token argument gathered
        with that sample's index (1, K). Empty: the token arguments are batched and one call serves every sample.
    joint_args: arguments that span the joint sequence of the N video tokens followed by the L text tokens (a joint
        attention mask (B, 1, 1, N + L)), and how each follows a gather of the video tokens given N; the text part
        is never gathered.
    """

    token_args: Mapping[str, GatherFn]
    video_output: int | None = None
    batch_args: tuple[str, ...] = ()
    joint_args: Mapping[str, JointGatherFn] = field(default_factory=dict)


class BlockCall:
    """One call of a block, bound to its parameter names: the video tokens and a way to rerun it on a subset."""

    def __init__(self, block: torch.nn.Module, layout: BlockLayout, args: tuple, kwargs: dict):
        self.layout = layout
        self.bound = _signature(block).bind(*args, **kwargs)
        self.arguments = self.bound.arguments

    @property
    def hidden_states(self) -> torch.Tensor:
        return self.arguments["hidden_states"]  # (B, N, D) video tokens

    def arguments_for(self, rows: torch.Tensor, index: torch.Tensor) -> inspect.BoundArguments:
        """The call's arguments with the video tokens replaced by `rows` (B, K, D) standing at `index` (B, K)."""
        bound = inspect.BoundArguments(self.bound.signature, dict(self.arguments))
        bound.arguments["hidden_states"] = rows
        for name, gather in self.layout.token_args.items():
            if bound.arguments.get(name) is not None:
                bound.arguments[name] = gather(bound.arguments[name], index)
        tokens = self.hidden_states.shape[1]
        for name, gather in self.layout.joint_args.items():
            if bound.arguments.get(name) is not None:
                bound.arguments[name] = gather(bound.arguments[name], index, tokens)
        return bound

    @property
    def shares_tables(self) -> bool:
        """The call carries a per-token argument without a batch dimension (see `BlockLayout.batch_args`)."""
        return bool(self.layout.batch_args) and any(self.arguments.get(name) is not None
                                                    for name in self.layout.token_args)

    def run(self, forward: Callable, rows: torch.Tensor, index: torch.Tensor):
        """`forward` on the K rows: returns (video rows out (B, K, D), the block's whole output)."""
        shared = self.shares_tables
        if shared and index.shape[0] > 1 and not bool((index == index[:1]).all()):
            return self._run_per_sample(forward, rows, index)
        bound = self.arguments_for(rows, index[:1] if shared else index)
        output = forward(*bound.args, **bound.kwargs)
        return self.video(output), output

    def _run_per_sample(self, forward: Callable, rows: torch.Tensor, index: torch.Tensor):
        outputs = []
        for sample in range(index.shape[0]):
            bound = self.arguments_for(rows[sample : sample + 1], index[sample : sample + 1])
            for name in self.layout.batch_args:
                value = bound.arguments.get(name)
                if isinstance(value, torch.Tensor):
                    bound.arguments[name] = value[sample : sample + 1]
            outputs.append(forward(*bound.args, **bound.kwargs))
        if self.layout.video_output is None:
            output = torch.cat(outputs)
        else:
            output = tuple(torch.cat(parts) if parts[0] is not None else None for parts in zip(*outputs))
        return self.video(output), output

    def video(self, output) -> torch.Tensor:
        return output if self.layout.video_output is None else output[self.layout.video_output]

    def with_video(self, output, video: torch.Tensor):
        """The block's output with its video stream replaced by `video` (B, N, D)."""
        if self.layout.video_output is None:
            return video
        parts = list(output)
        parts[self.layout.video_output] = video
        return tuple(parts)


_SIGNATURES: dict[type, inspect.Signature] = {}


def _signature(block: torch.nn.Module) -> inspect.Signature:
    """The block class's forward signature without `self` (cached: binding happens once per block call)."""
    cls = type(block)
    if cls not in _SIGNATURES:
        parameters = list(inspect.signature(cls.forward).parameters.values())[1:]
        _SIGNATURES[cls] = inspect.Signature(parameters)
    return _SIGNATURES[cls]


@dataclass(frozen=True)
class Profile:
    """A real-size architecture of the family, timed with random weights by `vidprune bench --profile`."""

    config: dict  # the transformer's config.json values of the published checkpoint
    latent: tuple[int, int, int]  # latent frames, height, width of the model card's default video
    text_tokens: int  # text positions per prompt of the pipeline's default
    pipeline_class: str = ""  # the pipeline the profile stands for, when the family has several
    # generated chunk by chunk against a KV cache (Self-Forcing); its chunking is the preset of the profile's name
    causal: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder's JSON files say, read before any weight: enough to refuse or to plan a run."""

    source: str  # the folder (or hub id) as given
    pipeline_class: str
    transformer_class: str
    denoisers: tuple[str, ...]  # pipeline components that are pruned (e.g. transformer and transformer_2)
    adapter: ModelAdapter
    components: dict = field(default_factory=dict, repr=False)  # component name → its config.json (those read)
    pipeline_config: dict = field(default_factory=dict)  # model_index.json's own settings (expand_timesteps, ...)

    def component_config(self, name: str) -> dict:
        return self.components.get(name) or {}


class ModelAdapter:
    """Interface one diffusers transformer family implements; see `WanAdapter` for the reference one."""

    name: str = ""
    transformer_classes: tuple[str, ...] = ()
    pipeline_classes: tuple[str, ...] = ()
    denoiser_names: tuple[str, ...] = ("transformer",)
    # pipelines of the family's transformer that vidprune refuses, each with the reason (one line, for the user)
    refused_pipelines: Mapping[str, str] = {}
    image_pipeline: str = ""  # the family's image-to-video pipeline class (the one `--image` runs); "": none
    preset: str = ""  # the preset for a checkpoint whose name matches no entry of presets.MODEL_PRESETS; "": none
    profiles: Mapping[str, Profile] = {}
    blocks_attribute: str = ""  # the transformer's one ModuleList of blocks, for families that have one
    block_layout: BlockLayout | None = None  # the layout of every block, for families whose blocks are all alike
    # pruning method → why this family cannot run it (refused with exit 2 before loading; see pruning.check_method)
    unsupported_methods: Mapping[str, str] = {}

    # -------------------------------------------------------------------------------------------- transformer

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Every block the pruner may reduce, in call order; a layer index is a position in this list."""
        if not self.blocks_attribute:
            raise NotImplementedError
        return list(getattr(transformer, self.blocks_attribute))

    def num_blocks(self, info: ModelInfo) -> int:
        """len(blocks(...)) from the denoiser's config.json alone, so budgets are checked before loading."""
        return info.component_config(info.denoisers[0])["num_layers"]

    def layout(self, block: torch.nn.Module) -> BlockLayout:
        if self.block_layout is None:
            raise NotImplementedError
        return self.block_layout

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> TokenGrid:
        """Grid of the video tokens of the forward called with `args`, `kwargs`."""
        raise NotImplementedError

    def timestep(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The timestep tensor of a forward call (any shape: per sample, per token, ...)."""
        return kwargs["timestep"] if "timestep" in kwargs else args[1]

    def text_tokens(self, args: tuple, kwargs: dict) -> int:
        """Text (context) positions of a forward call, for the analytic FLOPs."""
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        return context.shape[1] if isinstance(context, torch.Tensor) else 0

    def hidden_width(self, transformer: torch.nn.Module) -> int:
        """Width D of the video tokens the blocks see."""
        config = transformer.config
        return config.num_attention_heads * config.attention_head_dim

    def query_key(
        self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None, query_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention q (B, heads, Sq, d) and k (B, heads, K, d) among the video tokens at `positions` (B, K)
        (all when None); the queries are those at `query_index` (B, Sq) into that subset (all when None)."""
        raise NotImplementedError

    def self_attention_input(self, block: torch.nn.Module, call: BlockCall, positions: torch.Tensor | None = None):
        """(normed, rotary): the video tokens at `positions` (B, K) (all when None) as the block's self-attention
        receives them (its input norm and modulation applied, (B, K, D)) and its rotary tables at those tokens; what
        code that needs a block's keys and values outside its forward (a causal KV cache) projects."""
        raise NotImplementedError

    def block_flops(self, transformer: torch.nn.Module, layer: int, tokens: int, kept: int, text_tokens: int) -> float:
        """Analytic FLOPs of block `layer` computing `kept` of `tokens` video tokens (see metrics.flops)."""
        raise NotImplementedError

    def token_geometry(self, pipe) -> tuple[int, int, int]:
        """How a token maps onto decoded pixels: (pixel frames per latent frame after the first, latent frames per
        token, pixels per token side)."""
        raise NotImplementedError

    def fused_skip(self, block: torch.nn.Module) -> Callable | None:
        """A fused token-skip forward `(hidden (B, N, D), index (B, K), call) → the block's output` that may update
        hidden in place, or None when the family has none."""
        return None

    def compute_marker(self, module: torch.nn.Module) -> torch.nn.Module | None:
        """A child of `module` (a block or an attention module a diffusers cache hooks) that runs only when the
        module really computes, so a cache's reuse can be counted; None: not counted there (a bare projection such as
        TaylorSeer's proj_out, whose skips show through the blocks)."""
        for name in ("ffn", "ff"):  # a block's feed-forward (Wan: ffn; LTX-Video, Mochi: ff)
            if isinstance(getattr(module, name, None), torch.nn.Module):
                return getattr(module, name)
        to_out = getattr(module, "to_out", None)  # an attention's output projection: a list (Linear, Dropout) or one
        if isinstance(to_out, (torch.nn.ModuleList, torch.nn.Sequential)):
            return to_out[0]
        return to_out if isinstance(to_out, torch.nn.Module) else None

    # ----------------------------------------------------------------------------------------------- pipeline

    def check_inputs(self, gen, info: ModelInfo) -> None:
        """Raise ValueError (one line naming the family's rule) for settings the pipeline would refuse or break."""

    def pipeline_kwargs(self, gen, info: ModelInfo) -> dict:
        """The pipeline call's own arguments for the generic settings `gen` (a GenerateConfig)."""
        raise NotImplementedError

    def animates_image(self, info: ModelInfo) -> bool:
        """Whether a checkpoint whose model_index.json names a text-to-video class also takes `--image` (through
        `image_pipeline`, built on its components)."""
        return False

    def check_image(self, gen, info: ModelInfo) -> None:
        """`--image` is given exactly when the model takes one: required by an image-to-video pipeline, refused by a
        text-to-video-only model."""
        if info.pipeline_class == self.image_pipeline:
            if gen.image is None:
                raise ValueError(f"{info.source} is an image-to-video {self.name} pipeline: give --image PATH (the "
                                 "first frame)")
        elif gen.image is not None and not self.animates_image(info):
            raise ValueError(f"--image needs an image-to-video model; {info.source} is a {info.pipeline_class} (text "
                             "to video only)")

    def sibling_config(self, pipe) -> dict:
        """The image-to-video sibling's own settings, taken over from the text-to-video pipeline `pipe`."""
        return {}

    def pipeline_for(self, pipe, gen, info: ModelInfo):
        """The pipeline that runs `gen`: `pipe` itself, or for `--image` on a text-to-video class the family's
        `image_pipeline` built on the same components (no weight is copied)."""
        if gen.image is None or info.pipeline_class == self.image_pipeline:
            return pipe
        import diffusers

        sibling = getattr(diffusers, self.image_pipeline)(**pipe.components, **self.sibling_config(pipe))
        sibling.register_to_config(_name_or_path=info.source)
        sibling.set_progress_bar_config(disable=True)
        return sibling

    def prepare_profile(self, transformer: torch.nn.Module, device) -> None:
        """Make a freshly built real-size profile transformer runnable on `device` (on the meta device a family may
        need a shapes-only stand-in for an op that has no meta kernel)."""

    def profile_timestep(self, t: float, device) -> torch.Tensor:
        """The timestep argument of a profiled forward at noise level `t` (0..1000)."""
        return torch.tensor([t], device=device)

    def profile_decode(self, profile: Profile, latent: tuple[int, int, int], device) -> Callable[[], Any]:
        """A real-size, random-weight VAE decode of a `latent`-sized video, as the pipeline runs it (`--e2e`)."""
        raise NotImplementedError

    def profile_inputs(self, transformer: torch.nn.Module, profile: Profile, latent: tuple[int, int, int], device,
                       dtype) -> dict:
        """Random inputs of one transformer forward at `latent` (frames, height, width), as keyword arguments."""
        raise NotImplementedError


def gather_tokens(value: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (B, K) of a per-token tensor (B or 1, N, ...) along dim 1 → (B, K, ...)."""
    from ..kernels import gather_tokens as gather

    return gather(value, index)


def rows_at(index: torch.Tensor | None, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each per-token tensor (B or 1, N, ...) at the tokens `index` (B, K), or as it is when `index` is None."""
    return values if index is None else tuple(gather_tokens(value, index) for value in values)


def gather_pair(pair, index: torch.Tensor):
    """A (cos, sin) rotary pair with a token dimension at dim 1, each gathered to the K tokens."""
    return tuple(gather_tokens(part, index) for part in pair)


def gather_table_pair(pair, index: torch.Tensor):
    """A (cos, sin) pair of rotary tables (N, d) without a batch dimension, each cut to the K tokens of `index`
    (1, K) → (K, d); see `BlockLayout.batch_args` for why the index has one row."""
    return tuple(gather_tokens(part.unsqueeze(0), index[:1]).squeeze(0) for part in pair)


def apply_rotary_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' real-valued rotary over interleaved pairs (x[2i], x[2i+1]); x (B, S, heads, d), cos/sin (B or 1, S,
    1, d) with each value repeated for both members of a pair (as every family's tables are)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, heads, d/2) each
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def rotary_query_key(
    attn: torch.nn.Module, normed: torch.Tensor, query_index: torch.Tensor | None, tables: tuple | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, heads, Sq, d) and k (B, heads, K, d) of `normed` video tokens (B, K, D) through a diffusers attention
    module's own projections (fused or not) and per-head qk-norm, then the rotary `tables` (cos, sin), each (B or 1,
    K, d), when given; the queries are the tokens at `query_index` (B, Sq) (all when None)."""
    query_tokens = normed if query_index is None else gather_tokens(normed, query_index)  # (B, Sq, D)
    if getattr(attn, "fused_projections", False):  # fused qkv weights: split the projection instead
        dim, bias = attn.to_qkv.out_features // 3, attn.to_qkv.bias
        query = torch.nn.functional.linear(query_tokens, attn.to_qkv.weight[:dim],
                                           None if bias is None else bias[:dim])
        key = torch.nn.functional.linear(normed, attn.to_qkv.weight[dim : 2 * dim],
                                         None if bias is None else bias[dim : 2 * dim])
    else:
        query, key = attn.to_q(query_tokens), attn.to_k(normed)  # (B, Sq, D), (B, K, D)
    query, key = query.unflatten(2, (attn.heads, -1)), key.unflatten(2, (attn.heads, -1))  # (B, S, heads, d)
    if attn.norm_q is not None:
        query, key = attn.norm_q(query), attn.norm_k(key)
    if tables is not None:
        cos, sin = (part.unsqueeze(2) for part in tables)  # (B or 1, K, 1, d)
        if query_index is None:
            cos_q, sin_q = cos, sin
        else:
            cos_q, sin_q = gather_tokens(cos, query_index), gather_tokens(sin, query_index)  # (B, Sq, 1, d)
        query, key = apply_rotary_pairs(query, cos_q, sin_q), apply_rotary_pairs(key, cos, sin)
    return query.transpose(1, 2), key.transpose(1, 2)  # (B, heads, Sq, d), (B, heads, K, d)


def table_rows(pair, positions: torch.Tensor | None):
    """Rotary tables (N, d) at the video tokens `positions` (B, K) → (B, K, d) each; all of them (1, N, d) when
    None."""
    if positions is None:
        return tuple(part.unsqueeze(0) for part in pair)
    return tuple(gather_tokens(part.unsqueeze(0), positions) for part in pair)
