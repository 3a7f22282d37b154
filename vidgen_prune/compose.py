"""The diffusers features a run combines with pruning: CPU offload, attention backends, compile, LoRA, VAE tiling.

`check_setup(gen)` refuses, before anything loads, a combination that cannot run here or is not known to compose
with token pruning (one line each); `setup_pipeline(pipe, gen)` applies the rest to a loaded pipeline, in the
order they must go: LoRA (it adds modules the blocks then run), attention backend, VAE tiling, compile (of the
blocks as they will run), and last the offload or the move to the device.

How each composes with the pruning hooks (which wrap every block and score tokens from the block's own weights):
- offload `group` is diffusers' block-level group offloading (one block a group, the next one prefetched on a CUDA
  stream): its hook onloads a block's weights when the block is called. vidprune's block hooks always go inside a
  block's existing hooks (`pruning.hooks.register_innermost`), so the scoring pass, which reads the block's
  weights before it runs, finds them on the device, whichever was applied first.
- offload `model` (whole components moved to the GPU when they run) composes: the pruned blocks run inside the
  transformer's forward. It needs an accelerator, like `sequential`.
- offload `sequential` keeps each module's weights off the device outside its own forward; the scoring pass reads
  a block's weights outside it, so it is refused with pruning methods (it runs with `dense` and caches).
- attention backends: the blocks' attention goes through diffusers' dispatcher, whichever backend; vidprune's
  scores never do (they are computed from the block's queries and keys by vidprune's own kernel or torch path).
- compile: each block's forward is compiled (regional, as the bench does), so the pruning hooks stay eager around
  it; every new kept count K compiles a graph until dynamo marks the shape dynamic (counted in the sidecar).
- LoRA: loaded with the pipeline's own loader (peft); the blocks vidprune wraps run the LoRA layers.
"""

from __future__ import annotations

from pathlib import Path

OFFLOADS = ("model", "group", "sequential")


def parse_lora(entry: str) -> tuple[str, float]:
    """`PATH` or `PATH:SCALE` → (path, scale); a Windows-free split on the last colon."""
    path, _, scale = entry.rpartition(":") if ":" in entry else (entry, "", "")
    if not scale:
        return entry, 1.0
    try:
        value = float(scale)
    except ValueError:
        return entry, 1.0  # a colon inside the path itself
    return path, value


def check_setup(gen) -> None:
    """ValueError (one line) for a setup that cannot run on this machine or is not known to compose with pruning."""
    accelerator = not gen.device.startswith(("cpu", "meta"))
    if gen.offload is not None:
        if gen.offload not in OFFLOADS:
            raise ValueError(f"--offload must be one of {', '.join(OFFLOADS)}, got {gen.offload!r}")
        if gen.offload in ("model", "sequential") and not accelerator:
            raise ValueError(f"--offload {gen.offload} moves weights to an accelerator as they run: give --device cuda "
                             "(on the CPU everything already is in host memory)")
        if gen.compile:
            raise ValueError("--compile with --offload is not supported: the offload hooks would run inside the "
                             "compiled blocks")
    if gen.attention_backend is not None:
        check_attention_backend(gen.attention_backend)
    for entry in gen.lora:
        path, scale = parse_lora(entry)
        if not Path(path).exists():
            raise ValueError(f"--lora {entry}: no such file or folder: {path}")
        if not -10.0 <= scale <= 10.0:
            raise ValueError(f"--lora {entry}: the scale must be in [-10, 10], got {scale}")
    if gen.lora:
        try:
            import peft  # noqa: F401 - diffusers loads LoRA weights through peft
        except ImportError:
            raise ValueError("--lora needs peft: pip install 'vidgen-prune[lora]'") from None


def check_pruning_setup(gen, prune) -> None:
    """ValueError for an offload that the pruning method cannot run under (see the module docstring)."""
    if gen.offload == "sequential" and prune.method != "dense":
        raise ValueError("--offload sequential keeps each layer's weights off the GPU outside its own forward, and "
                         f"{prune.method} scores tokens from a block's weights before it runs: use --offload group")


def attention_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [backend.value for backend in AttentionBackendName]


def check_attention_backend(name: str) -> None:
    """A backend diffusers' dispatcher knows and whose package is installed here."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    if name not in attention_backends():
        public = [b for b in attention_backends() if not b.startswith("_")]
        raise ValueError(f"unknown --attention-backend {name!r}; diffusers knows {', '.join(public)}")
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except RuntimeError as error:
        raise ValueError(f"--attention-backend {name} is not usable here: {' '.join(str(error).split())}") from None


def setup_pipeline(pipe, gen, denoisers: list) -> None:
    """Apply `gen`'s LoRA, attention backend, VAE tiling, compile and offload (or device) to a loaded pipeline."""
    import torch

    if gen.lora:
        names, scales = [], []
        for index, entry in enumerate(gen.lora):
            path, scale = parse_lora(entry)
            name = f"vidprune_lora_{index}"
            pipe.load_lora_weights(path, adapter_name=name)
            names.append(name)
            scales.append(scale)
        pipe.set_adapters(names, adapter_weights=scales)
    if gen.attention_backend is not None:
        for transformer in denoisers:
            transformer.set_attention_backend(gen.attention_backend)
    if gen.vae_tiling:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    if gen.compile:
        from .models import adapter_for

        for transformer in denoisers:
            compile_blocks(adapter_for(transformer).blocks(transformer))
    device = torch.device(gen.device)
    if gen.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif gen.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif gen.offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                                  num_blocks_per_group=1, use_stream=device.type == "cuda")
    else:
        pipe.to(device)


def compile_blocks(blocks) -> None:
    """Regional torch.compile: each block's own forward, so vidprune's hook (Python bookkeeping, per-step token
    choice) stays eager around the compiled compute. The kept count K is fixed within a step, so a schedule
    with L levels recompiles at most L + 1 times (dense N included) before dynamo marks the shape dynamic."""
    import torch

    for block in blocks:
        block.forward = torch.compile(block.forward)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (its own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
