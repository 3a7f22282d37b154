"""VideoDiffCR-style learned token pruning: a temporal-mixing router per block and learned retention ratios.

Per block ℓ a small router scores every token after mixing its features across the latent frames at the same
spatial site (a 1-D convolution over time), and the block computes only the top-k tokens; each kept token's
update is scaled by its router gate g = 2·sigmoid(score) (≈ 1 at initialisation), the DiffCR / Mixture-of-
Depths rule `x + g·(block(x) − x)` that gives the router a gradient. Skipped tokens pass through unchanged.

How many tokens block ℓ keeps at denoising step s:
- a learned per-layer ratio ρ(ℓ), initialised 1.0, 0.8, 1.0, 0.8, ... and pulled towards the target by
  L_ratio = (mean_ℓ ρ(ℓ) − ρ_target)²;
- a fixed per-step offset δ(s), a linear ramp from −0.3 at the first (noisiest) step to +0.3 at the last, so
  noisy steps prune more (4 steps: −0.3, −0.1, +0.1, +0.3, as in the paper);
- one calibration shift c shared by every layer and step, so that the mean over layers and steps of
  clamp(ρ(ℓ) + δ(s) + c, 0.1, 1) equals the budget 1 − reduction, in training and at inference alike
  (clamping at 1.0 would otherwise leave the mean short). c absorbs the mean of ρ(ℓ), so what training
  learns is the profile over layers; L_ratio pins the mean to the target so ρ(ℓ) reads as a retention;
- ratio bins every 10 %. Training interpolates between the two neighbouring bins (below); inference rounds
  each (layer, step) retention to its nearest bin, except that where plain rounding would miss the budget the
  entries closest to a bin boundary go the other way (largest-remainder rounding), so the kept fraction
  averaged over a generation is 1 − reduction up to whole tokens.

Training's bin interpolation, done in one block call: with retention r between bins b_lo < b_hi and
t = (r − b_lo) / 0.1, the block computes the top-k(b_hi) tokens; the top-k(b_lo) ones get gate (1 − t)·g +
t·g_hi and the rest t·g_hi (g_hi = g, or 1 when b_hi is the dense bin 1.0). This equals blending the two bins'
outputs by distance, except that at t < 1 the top-k(b_lo) tokens also attend to the other kept tokens; it
costs one block call at b_hi instead of two, and ∂output/∂t carries the distillation gradient to ρ(ℓ).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from torch import nn

from ..models import TokenGrid, adapter_for
from .base import ForwardInfo, Pruner
from .plan import TokenPlan, skip_plan
from .scores import ScoreProbe

BIN = 0.1  # ratio bins every 10 % (the paper)
MIN_RETENTION = 0.1  # the lowest bin: a pruned block still computes a tenth of its tokens
STEP_SWING = 0.3  # δ runs from −0.3 (first, noisiest step) to +0.3 (last step)
INITIAL_RATIOS = (1.0, 0.8)  # alternating per-layer initialisation (the paper's stable prior)
FORMAT = "vidprune-router/1"
WEIGHTS_FILE, CONFIG_FILE = "router.safetensors", "router.yaml"
DEFAULT_ROUTER_DIR = Path(__file__).resolve().parents[1] / "tiny" / "router"  # trained for the embedded model


# ---------------------------------------------------------------------------------------------------------------
# Retention ratios: offsets, calibration, bins
# ---------------------------------------------------------------------------------------------------------------


def step_offsets(num_steps: int, swing: float = STEP_SWING) -> torch.Tensor:
    """δ(s) (S,): linear from −swing at the first step to +swing at the last; 0 for a single step."""
    if num_steps == 1:
        return torch.zeros(1)
    return torch.linspace(-swing, swing, num_steps)  # (S,)


def calibration_shift(layer_ratios: torch.Tensor, offsets: torch.Tensor, budget: float) -> float:
    """c with mean over (ℓ, s) of clamp(ρ(ℓ) + δ(s) + c, MIN_RETENTION, 1) = budget (bisection; the mean rises
    monotonically with c)."""
    table = (layer_ratios.detach()[:, None] + offsets.to(layer_ratios.device)[None, :]).double()  # (L, S)
    low, high = -2.0, 2.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if (table + mid).clamp(MIN_RETENTION, 1.0).mean() < budget else (low, mid)
    return (low + high) / 2


def retention_table(layer_ratios: torch.Tensor, offsets: torch.Tensor, budget: float) -> torch.Tensor:
    """Continuous retentions (L, S) averaging to `budget`; differentiable in `layer_ratios`."""
    shift = calibration_shift(layer_ratios, offsets, budget)
    return (layer_ratios[:, None] + offsets.to(layer_ratios.device)[None, :] + shift).clamp(MIN_RETENTION, 1.0)


def round_to_bins(retentions: torch.Tensor) -> torch.Tensor:
    """Nearest-bin rounding (L, S) that keeps the table's mean: largest-remainder rounding in units of BIN."""
    units = retentions.detach().double() / BIN  # (L, S), each in [1, 10]
    floors = units.floor()
    remainders = (units - floors).flatten()
    extra = round(float(units.sum() - floors.sum()))  # how many entries round up
    up = torch.zeros_like(remainders)
    up[remainders.argsort(descending=True)[:extra]] = 1.0
    return ((floors.flatten() + up).view_as(units) * BIN).float()  # (L, S)


def kept_count(retention: float, tokens: int) -> int:
    return min(tokens, max(1, round(retention * tokens)))


# ---------------------------------------------------------------------------------------------------------------
# The router network
# ---------------------------------------------------------------------------------------------------------------


class TemporalRouter(nn.Module):
    """Scores (B, N) for a block's input tokens (B, N, D), mixing each spatial site's features over time."""

    def __init__(self, width: int, hidden: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)  # block inputs grow with depth
        self.project = nn.Linear(width, hidden)
        self.temporal = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)  # any frame count
        self.score = nn.Linear(hidden, 1)
        # small scores: an untrained router picks tokens by a random projection with gates ≈ 1 (plain skipping)
        nn.init.normal_(self.score.weight, std=0.01)
        nn.init.zeros_(self.score.bias)

    def forward(self, hidden_states: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        batch = hidden_states.shape[0]
        features = self.project(self.norm(hidden_states))  # (B, N, r)
        per_site = features.unflatten(1, (grid.frames, grid.tokens_per_frame)).permute(0, 2, 3, 1)  # (B, HW, r, F)
        mixed = self.temporal(per_site.flatten(0, 1)).unflatten(0, (batch, -1))  # (B, HW, r, F)
        mixed = mixed.permute(0, 3, 1, 2).flatten(1, 2)  # (B, N, r)
        return self.score(nn.functional.gelu(features + mixed)).squeeze(-1)  # (B, N)


class RouterNet(nn.Module):
    """Everything `train-router` learns for one model: a router per block and the per-layer ratios ρ(ℓ)."""

    def __init__(self, num_layers: int, width: int, hidden: int = 32, kernel: int = 3):
        super().__init__()
        self.spec = {"num_layers": num_layers, "width": width, "hidden": hidden, "kernel": kernel}
        self.routers = nn.ModuleList(TemporalRouter(width, hidden, kernel) for _ in range(num_layers))
        initial = [INITIAL_RATIOS[layer % len(INITIAL_RATIOS)] for layer in range(num_layers)]
        self.layer_ratios = nn.Parameter(torch.tensor(initial))  # (L,)

    @classmethod
    def seeded(cls, seed: int, **spec) -> RouterNet:
        """The initial (untrained) router of a training run with `seed`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(**spec)

    def ratio_loss(self, target_retention: float) -> torch.Tensor:
        return (self.layer_ratios.mean() - target_retention) ** 2

    @torch.no_grad()
    def descend_ratios(self, lr: float) -> None:
        """A projected gradient step on ρ(ℓ), kept within the bins.

        Plain steps, not Adam: L_ratio pulls every layer alike, ~50× harder than the distillation gradient that
        tells layers apart while the mean travels from 0.9 to the target, and Adam's per-parameter scaling then
        moves all layers in lockstep; a plain step keeps the per-layer differences of the gradient.
        """
        self.layer_ratios -= lr * self.layer_ratios.grad
        self.layer_ratios.clamp_(MIN_RETENTION, 1.0)


def model_fingerprint(transformer: nn.Module) -> dict:
    """What a router must match: block count and hidden width."""
    config = transformer.config
    blocks = len(adapter_for(transformer).blocks(transformer))
    return {"blocks": blocks, "width": config.num_attention_heads * config.attention_head_dim}


def check_fits(meta: dict, transformer: nn.Module, source: str) -> None:
    """ValueError unless the router described by `meta` was trained for a model shaped like `transformer`."""
    trained, model = meta["model"], model_fingerprint(transformer)
    if (trained["blocks"], trained["width"]) != (model["blocks"], model["width"]):
        raise ValueError(
            f"router {source} was trained for a {trained['blocks']}-block model of width {trained['width']}, "
            f"this model has {model['blocks']} blocks of width {model['width']}; train one with vidprune train-router"
        )


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: router.safetensors (weights) + router.yaml (format, model fingerprint, training record)
# ---------------------------------------------------------------------------------------------------------------


def save_router(net: RouterNet, folder: Path, meta: dict) -> None:
    """Write the weights and the YAML as one group: both reach the folder complete, or neither (outputs.atomic_files;
    the YAML goes last, as it names what the weights are)."""
    from safetensors.torch import save_file

    from ..outputs import atomic_files, writing

    with atomic_files(folder / WEIGHTS_FILE, folder / CONFIG_FILE) as (weights, config):
        with writing(weights):
            save_file({name: tensor.detach().contiguous() for name, tensor in net.state_dict().items()}, weights)
        with writing(config):
            config.write_text(yaml.safe_dump({"format": FORMAT, "router": net.spec, **meta}, sort_keys=False))


def read_router_meta(folder: Path) -> dict:
    """The YAML of the router in `folder`; ValueError for a missing, unreadable or foreign file."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"router folder {folder} has no {CONFIG_FILE}; train one with vidprune train-router")
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"router {path} is unreadable ({type(error).__name__})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"router {path} is not a {FORMAT} file")
    try:
        spec, model = meta["router"], meta["model"]
        if not all(isinstance(spec[key], int) and spec[key] > 0 for key in ("num_layers", "width", "hidden", "kernel")):
            raise ValueError
        if not all(isinstance(model[key], int) for key in ("blocks", "width")):
            raise ValueError
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"router {path} lacks a valid router spec or model fingerprint") from error
    return meta


def load_router(folder: Path) -> tuple[RouterNet, dict]:
    """The RouterNet and YAML in `folder`; ValueError (one line) for anything missing, corrupt or inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_router_meta(folder)
    net = RouterNet(**meta["router"])
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"router folder {folder} has no {WEIGHTS_FILE}")
    try:
        net.load_state_dict(load_file(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"router weights {path} are corrupt or do not match {CONFIG_FILE}") from error
    if not torch.isfinite(net.layer_ratios).all():
        raise ValueError(f"router weights {path} hold non-finite ratios")
    return net.eval(), meta


# ---------------------------------------------------------------------------------------------------------------
# The pruner
# ---------------------------------------------------------------------------------------------------------------


def gated_plan(positions: torch.Tensor, gate: torch.Tensor) -> TokenPlan:
    """Compute the tokens at `positions` (B, K); each adds its block update scaled by `gate` (B, K)."""
    skip = skip_plan(positions)

    def scatter(hidden: torch.Tensor, rows_in: torch.Tensor, rows_out: torch.Tensor) -> torch.Tensor:
        rows = rows_in + gate.unsqueeze(-1).to(rows_in.dtype) * (rows_out - rows_in)  # (B, K, D)
        return skip.scatter(hidden, rows_in, rows)  # (B, N, D)

    # not is_skip: a fused skip kernel would drop the gate; the tokens outside `positions` still pass through
    return TokenPlan(positions, skip.gather, scatter, passes_through=True)


class RouterPruner(Pruner):
    """`--method router`: a trained RouterNet from `config.router` (default: the embedded model's).

    Retentions average to 1 − reduction over layers and steps. In eval mode (inference) they are rounded to
    bins; with `net` in training mode (the trainer) they interpolate between bins, and the trainer sets
    `forced_step` to the denoising step of the batch (a shuffled batch does not follow the timestep order the
    hooks count steps by).
    """

    name = "router"

    def __init__(self, config, net: RouterNet | None = None, meta: dict | None = None):
        super().__init__(config)
        self.source = str(config.router or DEFAULT_ROUTER_DIR)
        if net is None:
            net, meta = load_router(Path(self.source))
        self.net, self.meta = net, meta
        self.forced_step: int | None = None
        self._bins: dict[int, torch.Tensor] = {}  # num_steps → (L, S) bin retentions, at inference

    def check_budget(self, num_layers: int) -> None:
        if self.net.spec["num_layers"] != num_layers:
            raise ValueError(
                f"router {self.source} was trained for a {self.net.spec['num_layers']}-block model, this model has "
                f"{num_layers} blocks; train one with vidprune train-router"
            )
        if 1.0 - self.config.reduction < MIN_RETENTION:
            raise ValueError(f"router: reduction {self.config.reduction} is beyond the lowest bin ({MIN_RETENTION})")

    def check_model(self, transformer: nn.Module) -> None:
        check_fits(self.meta, transformer, self.source)

    def bin_table(self, num_steps: int) -> torch.Tensor:
        if num_steps not in self._bins:
            table = retention_table(self.net.layer_ratios, step_offsets(num_steps), 1.0 - self.config.reduction)
            self._bins[num_steps] = round_to_bins(table)  # (L, S)
        return self._bins[num_steps]

    def start_forward(self, info: ForwardInfo) -> None:
        super().start_forward(info)
        step = info.step if self.forced_step is None else self.forced_step
        if self.net.training:
            table = retention_table(self.net.layer_ratios, step_offsets(info.num_steps), 1.0 - self.config.reduction)
            self.retentions = table[:, step]  # (L,), differentiable in ρ(ℓ)
        else:
            self.retentions = self.bin_table(info.num_steps)[:, step]  # (L,)

    def plan(self, layer: int, probe: ScoreProbe) -> TokenPlan | None:
        retention, tokens = self.retentions[layer], self.info.grid.num_tokens
        if float(retention.detach()) >= 1.0:
            return None
        hidden = probe.hidden_states
        if self.net.layer_ratios.device != hidden.device:
            self.net.to(hidden.device)  # loaded on the CPU, the transformer may be on a GPU
        scores = self.net.routers[layer](hidden.float(), self.info.grid)  # (B, N), float32 for bf16 models too
        gate = 2.0 * torch.sigmoid(scores)  # (B, N), 1 at score 0
        if not self.net.training:
            positions = scores.topk(kept_count(float(retention), tokens), dim=1).indices.sort(dim=1).values  # (B, K)
            return gated_plan(positions, gate.gather(1, positions))
        return self._interpolated_plan(retention, scores, gate, tokens)

    def _interpolated_plan(self, retention: torch.Tensor, scores, gate, tokens: int) -> TokenPlan:
        """Training: one block call at the upper bin standing for the blend of both neighbouring bins."""
        low_bin = math.floor(float(retention.detach()) / BIN + 1e-6)  # in units of BIN
        blend = retention / BIN - low_bin  # t in [0, 1), differentiable in ρ(ℓ)
        low, high = kept_count(low_bin * BIN, tokens), kept_count((low_bin + 1) * BIN, tokens)
        ranked = scores.topk(high, dim=1).indices  # (B, K_hi), best first
        in_low = (torch.arange(high, device=scores.device) < low).to(gate.dtype)  # (K_hi,)
        ranked_gate = gate.gather(1, ranked)  # (B, K_hi)
        high_gate = ranked_gate if high < tokens else torch.ones_like(ranked_gate)  # the 1.0 bin is ungated dense
        mixed = (1 - blend) * ranked_gate * in_low + blend * high_gate  # (B, K_hi)
        positions, order = ranked.sort(dim=1)  # (B, K_hi) frame-major
        return gated_plan(positions, mixed.gather(1, order))
