"""`--kernels auto` checks each fused path against torch on its first call of a run and falls back when they disagree.

The pipeline tests make `auto` pick Triton as it does on CUDA; without a GPU the kernels then run on the interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is first imported).
"""

from __future__ import annotations

import logging

import pytest
import torch
from test_pruning import transformer_inputs

from vidgen_prune.config import PruneConfig
from vidgen_prune.engine import pruned
from vidgen_prune.kernels import guard as guard_module
from vidgen_prune.kernels.common import interpreting
from vidgen_prune.kernels.guard import TOLERANCES, FusedGuard, disagreement, path_taken
from vidgen_prune.models import wan_fused
from vidgen_prune.pruning import hooks

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(guard_module, "_warned", set())


class Counted:
    """A callable that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        return self.fn()


def residual_pair(dtype, fused_error: float):
    """(base, reference, fused): the reference adds an update of max 1 to base out of place; fused adds the same
    update plus `fused_error` in place, as the fused Wan forward writes into its input."""
    base = torch.randn(2, 16, 8).to(dtype)  # (B, N, D)
    update = torch.rand(2, 16, 8).to(dtype)  # (B, N, D), max |update| close to 1
    reference = Counted(lambda: base + update)
    fused = Counted(lambda: base.add_(update + fused_error))
    return base, reference, fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_agreeing_fused_path_is_verified_and_kept(dtype):
    base, reference, fused = residual_pair(dtype, fused_error=0.0)
    guard = FusedGuard("op", check=True)
    out = guard.run(fused, reference, base=base)
    assert out is base, "the fused result (in place on base) is returned"
    assert guard.state == "verified" and guard.error == 0.0
    guard.run(fused, reference, base=base)
    assert (fused.calls, reference.calls) == (2, 1), "after the check only the fused path runs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_disagreeing_fused_path_falls_back_with_one_warning(dtype, caplog):
    atol, _ = TOLERANCES[dtype]
    base, reference, fused = residual_pair(dtype, fused_error=4 * atol)  # 4x the tolerance of an update of ~1
    expected = reference.fn().clone()
    guard = FusedGuard("op", check=True)
    with caplog.at_level(logging.WARNING, logger=guard_module.__name__):
        out = guard.run(fused, reference, base=base)
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
        assert guard.state == "fell back" and 1.0 < guard.error < 10.0
        guard.run(fused, reference, base=base)
        FusedGuard("op", check=True).run(fused, reference, base=base)  # another run: its guard falls back too
    assert (fused.calls, reference.calls) == (2, 3), "after falling back only the reference runs"
    assert len(caplog.records) == 1 and "disagrees with its torch reference" in caplog.records[0].getMessage()


def test_the_scale_is_read_before_the_fused_call_changes_base():
    # Were max|reference - base| read after fused's in-place add, it would be ~0 and any rounding would fail.
    base, reference, fused = residual_pair(torch.bfloat16, fused_error=0.0)
    fused.fn = lambda: base.add_(reference.fn() - base + 2**-9)  # the same update, rounded differently
    guard = FusedGuard("op", check=True)
    guard.run(fused, reference, base=base)
    assert guard.state == "verified"


def test_non_finite_fused_output_falls_back():
    expected = torch.ones(4)
    assert disagreement(torch.tensor([1.0, float("nan"), 1.0, 1.0]), expected, 1.0)[0] == float("inf")
    assert disagreement(torch.tensor([1.0, float("inf"), 1.0, 1.0]), expected, 1.0)[0] == float("inf")
    # where the reference itself is not finite there is nothing to compare
    assert disagreement(torch.tensor([1.0, 5.0]), torch.tensor([1.0, float("nan")]), 1.0) == (0.0, 0.0)


def test_an_explicit_request_is_trusted_unchecked():
    base, reference, fused = residual_pair(torch.float32, fused_error=1.0)
    guard = FusedGuard("op", check=False)
    guard.run(fused, reference, base=base)
    assert (guard.state, guard.error, reference.calls) == ("trusted", None, 0)
    assert path_taken("triton", guard) == "triton" and path_taken("torch", guard) == "torch"
    assert path_taken("triton", FusedGuard("op", check=False)) is None, "never asked: nothing ran there"


# ---------------------------------------------------------------- through the pruning controller, real kernels


# the tiny pipeline lives on the CPU, where Triton runs only on the interpreter; on a GPU machine gpu_check.py checks
# the guard natively, at real size
needs_interpreter = pytest.mark.skipif(not interpreting(), reason="needs the Triton interpreter")


@pytest.fixture
def auto_picks_triton(monkeypatch):
    """`auto` resolves as on CUDA (Triton); `torch` stays torch."""
    monkeypatch.setattr(hooks, "resolve_backend", lambda kernels, device: "torch" if kernels == "torch" else "triton")


@torch.no_grad()
def tape_forward(pipe, kernels: str) -> tuple[torch.Tensor, dict]:
    config = PruneConfig(method="tape", reduction=0.3, reselect_every=3, kernels=kernels)
    with pruned(pipe.transformer, config, num_steps=1) as controller:
        output = pipe.transformer(**transformer_inputs(pipe))[0]
    return output, controller.kernel_report()


@needs_interpreter
@pytest.mark.usefixtures("auto_picks_triton")
def test_auto_verifies_the_real_kernels_and_keeps_them(tiny_pipe, caplog):
    with caplog.at_level(logging.WARNING):
        auto, report = tape_forward(tiny_pipe, "auto")
    assert report["kernel_path"] == "triton (verified)" and 0.0 <= report["fused_error"] <= 1.0
    assert report["score_kernel_path"] == "triton (verified)" and 0.0 <= report["score_error"] <= 1.0
    assert not caplog.records
    triton, triton_report = tape_forward(tiny_pipe, "triton")
    assert triton_report == dict(kernel_path="triton", fused_error=None, score_kernel_path="triton", score_error=None)
    torch.testing.assert_close(auto, triton, atol=0, rtol=0)  # the check changed nothing: the same kernels ran


@needs_interpreter
@pytest.mark.usefixtures("auto_picks_triton")
def test_auto_falls_back_to_torch_when_the_fused_forward_is_wrong(tiny_pipe, monkeypatch, caplog):
    real = wan_fused.fused_skip_forward
    calls = []

    def broken(block, hidden_states, *args, **kwargs):  # a kernel gone wrong: every kept row off by one
        calls.append(1)
        return real(block, hidden_states, *args, **kwargs).add_(1.0)

    monkeypatch.setattr(wan_fused, "fused_skip_forward", broken)
    with caplog.at_level(logging.WARNING):
        auto, report = tape_forward(tiny_pipe, "auto")
    assert report["kernel_path"] == "torch (fell back)" and report["fused_error"] > 1.0
    assert len(calls) == 1, "only the first pruned block ran the fused forward, for the check"
    assert [r.getMessage() for r in caplog.records if "disagrees" in r.getMessage()] == [caplog.records[0].getMessage()]
    torch_output, torch_report = tape_forward(tiny_pipe, "torch")
    assert torch_report["kernel_path"] == "torch" and torch_report["fused_error"] is None
    # the scores still came from the (verified) Triton kernel: equal to torch's within its fp32 tolerance
    torch.testing.assert_close(auto, torch_output, atol=1e-5, rtol=1e-5)
