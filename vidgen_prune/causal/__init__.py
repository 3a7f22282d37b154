"""Causal (chunk-by-chunk) generation over a Wan transformer with a rolling KV cache; see `sampler.py`."""
