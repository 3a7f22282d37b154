"""Triton kernels for the token-skip path, each beside the plain torch reference that is also its CPU path.

Every op takes `backend=` ("auto", "triton", "torch"); see `resolve_backend`. Inference only: no op has a backward.
"""

from .attention_score import attention_received, attention_received_torch
from .common import gather_tokens
from .dispatch import BACKENDS, resolve_backend
from .gather_modulate import gather_norm_modulate, gather_norm_modulate_torch
from .rope_gather import gather_rotary, gather_rotary_torch
from .scatter_residual import scatter_gated_residual_, scatter_gated_residual_torch_

__all__ = [
    "BACKENDS",
    "attention_received",
    "attention_received_torch",
    "gather_norm_modulate",
    "gather_norm_modulate_torch",
    "gather_rotary",
    "gather_rotary_torch",
    "gather_tokens",
    "resolve_backend",
    "scatter_gated_residual_",
    "scatter_gated_residual_torch_",
]
