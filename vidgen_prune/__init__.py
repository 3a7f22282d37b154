"""vidprune: token pruning for diffusion-transformer video generation.

    handle = vidgen_prune.apply(pipe, "tape", reduction=0.3)   # every denoiser of a diffusers video pipeline
    ...                                                        # pipe(...) as usual
    handle.remove()                                            # or vidgen_prune.remove(pipe), or `with apply(...)`
"""

__version__ = "0.1.0"

_API = ("apply", "remove", "PruneHandle")


def __getattr__(name: str):
    """`apply`, `remove` and `PruneHandle` load torch and diffusers on first use, so `vidprune --help` stays instant."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PruneHandle", "__version__", "apply", "remove"]
