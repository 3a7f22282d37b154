"""Shared fixtures: a small random Wan pipeline saved to disk, loaded through the real `from_pretrained` path."""

from __future__ import annotations

import os

import torch

# triton fixes interpreted vs compiled at its first import (diffusers' Wan module imports it): without a GPU the
# kernel tests run on the interpreter, so say so before anything imports triton
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dataclasses import replace

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny shapes run faster on one thread, and several times faster on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vidgen_prune.tiny.pipeline import TinyConfig, build_pipeline

    folder = tmp_path_factory.mktemp("tiny_model")
    # 6 blocks: with reselection every 3 blocks, 4 of them prune, so reductions up to 0.4 (+δ) are reachable
    build_pipeline(replace(TinyConfig.for_tests(), num_layers=6), seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from vidgen_prune.engine import load_pipeline

    return load_pipeline(str(tiny_model_dir))


@pytest.fixture
def seeded():
    torch.manual_seed(0)


_OPENED: list[str] = []  # paths opened while a test records (an audit hook cannot be removed, so it is gated)
_RECORDING = [False]


def _audit(event, args):
    if _RECORDING[0] and event == "open" and isinstance(args[0], str):
        _OPENED.append(args[0])


@pytest.fixture
def opened_files():
    """The list of every file path opened during the test (e.g. to show that no weight file was read)."""
    import sys

    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)
        _audit.installed = True
    _OPENED.clear()
    _RECORDING[0] = True
    yield _OPENED
    _RECORDING[0] = False
