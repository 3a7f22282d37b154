"""The bench: methods × reductions × prompts × seeds, timed and judged against dense, resumable from its JSON.

Two modes.
- Quality (default): full pipeline generations on a real model (the embedded tiny one unless `model` says
  otherwise). For each prompt and seed the dense video is generated first; every other run is judged against
  it (fidelity, temporal coherence), its keep masks give the adjacent-frame IoU and its kept tokens per block
  call the analytic FLOPs; prompt adherence comes from the tiny world's checker where the prompt is in its
  grammar. Runs of one prompt and seed follow each other, so a slowly changing machine load hits all methods.
- Profile (`profile="wan2.1-1.3b"`): a real-size `WanTransformer3DModel` with random weights, random latents
  and text, transformer forwards only (one per step, no CFG), optionally with a real-size random VAE decode
  (`e2e`). Random weights make timing honest and quality meaningless, so quality metrics are refused.

A method entry is a pruner (`tape`), a diffusers cache (`fbcache`) or both (`tape+fbcache`); a cache alone
spends no token budget and has one row per bench, not one per reduction. Nothing here prints.
"""

from .paired import best_against_baseline, paired_comparisons, paired_table_rows
from .records import AGGREGATE_FIELDS, RUN_FIELDS, BenchResult, aggregate, merged_records, saved_records
from .report import paired_markdown, table_rows, write_outputs
from .runner import Bench, build_profile_transformer
from .spec import BenchSpec, MethodEntry, RunKey, check_budgets, make_spec

__all__ = [
    "AGGREGATE_FIELDS", "RUN_FIELDS", "Bench", "BenchResult", "BenchSpec", "MethodEntry", "RunKey",
    "aggregate", "best_against_baseline", "build_profile_transformer", "check_budgets", "make_spec", "merged_records",
    "paired_comparisons", "paired_markdown", "paired_table_rows", "saved_records", "table_rows", "write_outputs",
]
