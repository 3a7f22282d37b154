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
