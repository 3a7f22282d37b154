"""vidprune: token pruning for diffusion-transformer video generation."""

__version__ = "0.1.0"
