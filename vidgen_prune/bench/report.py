"""What a bench writes: the terminal table, runs/summary CSVs, summary.md, paired files, the plot and bench.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .paired import PAIRED_COLUMNS, PAIRED_FIELDS, best_against_baseline, paired_comparisons, paired_table_rows
from .records import AGGREGATE_FIELDS, BENCH_JSON_NAN, RUN_FIELDS, BenchResult, bench_header
from .spec import BenchSpec

TABLE_COLUMNS = (  # (field, short title: the table must fit a terminal)
    ("method", "method"), ("reduction", "r"), ("runs", "runs"), ("kept_fraction", "kept"),
    ("flop_bound_speedup", "FLOP×"), ("speedup", "speedup"), ("transformer_speedup", "tf×"),
    ("transformer_step_ms", "tf ms/step"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("tde", "TDE"),
    ("warp_ratio", "warp"), ("flicker", "flicker"), ("mask_iou", "IoU"), ("adherence", "adher."),
    ("cache_compute_fraction", "cache"), ("chunk_s", "chunk s"), ("first_chunk_s", "1st chunk s"),
    ("kv_cache_mb", "KV MB"),
)
_FORMATS = {"kept_fraction": ".3f", "flop_bound_speedup": ".2f", "speedup": ".2f", "transformer_speedup": ".2f",
            "transformer_step_ms": ".1f", "psnr": ".2f", "ssim": ".4f", "tde": ".4f", "warp_ratio": ".3f",
            "flicker": ".4f", "mask_iou": ".3f", "adherence": ".3f", "cache_compute_fraction": ".3f", "chunk_s": ".3f",
            "first_chunk_s": ".3f", "kv_cache_mb": ",.1f"}


def table_rows(aggregates: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the summary table (columns with no value in any row are left out)."""
    columns = [(name, title) for name, title in TABLE_COLUMNS if any(row.get(name) is not None for row in aggregates)]

    def cell(row: dict, name: str) -> str:
        value = row.get(name)
        if value is None:
            return "—"
        if name == "reduction":
            return f"{value:g}"
        return format(value, _FORMATS[name]) if name in _FORMATS else str(value)

    return [title for _, title in columns], [[cell(row, name) for name, _ in columns] for row in aggregates]

def paired_markdown(rows: list[dict]) -> str:
    """paired.md: the paired table, then per reduction the best variant against ToMe."""
    best_columns = tuple(column for column in PAIRED_COLUMNS
                         if column[0] in ("method", "reduction", "restore", "pairs", "psnr", "delta_tome", "wins_tome"))
    return "\n".join([
        _markdown_table(*paired_table_rows(rows)), "", "Best variant per reduction against ToMe:", "",
        _markdown_table(*paired_table_rows(best_against_baseline(rows), best_columns)),
    ]) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def write_outputs(result: BenchResult, spec: BenchSpec, out_dir: Path) -> dict[str, Path]:
    """bench.json (records + aggregates + paired), runs.csv, summary.csv, summary.md, speedup_vs_fidelity.png and,
    when the bench has restoration or ToMe pairs, paired.csv and paired.md, as one group: all of them reach the
    folder or none does (bench.json last, as it is what a resume reads)."""
    from ..outputs import atomic_files, write_json_to, writing

    paired = paired_comparisons(result.records)
    names = ["runs.csv", "summary.csv", "summary.md"] + (["speedup_vs_fidelity.png"] if result.aggregates else [])
    names += ["paired.csv", "paired.md"] if paired else []
    files = {name: out_dir / name for name in [*names, "bench.json"]}
    with atomic_files(*files.values()) as partials:
        partial = dict(zip(files, partials))
        _write_csv(partial["runs.csv"], RUN_FIELDS, result.records)
        _write_csv(partial["summary.csv"], AGGREGATE_FIELDS, result.aggregates)
        with writing(partial["summary.md"]):
            partial["summary.md"].write_text(_markdown_table(*table_rows(result.aggregates)) + "\n")
        if paired:
            _write_csv(partial["paired.csv"], PAIRED_FIELDS, paired)
            with writing(partial["paired.md"]):
                partial["paired.md"].write_text(paired_markdown(paired))
        if result.aggregates:
            plot(result.aggregates, partial["speedup_vs_fidelity.png"], profile=spec.profile is not None)
        extra = {"paired": paired} if paired else {}
        # the devices the records ran on: a --merge process may not be one of them
        devices = {"device": ", ".join(dict.fromkeys(r["device"] for r in result.records))} if result.records else {}
        body = {"records": result.records, "aggregates": result.aggregates} | extra
        write_json_to(bench_header(spec) | devices | body, partial["bench.json"], allow_nan=BENCH_JSON_NAN)
    return {("plot" if name.endswith(".png") else name): path for name, path in files.items()}


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    from ..outputs import writing

    with writing(path), path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def plot(aggregates: list[dict], path: Path, profile: bool) -> None:
    """Speedup against fidelity (PSNR, SSIM) per method, a line through its reductions; profile: speedup and the
    FLOP bound against the reduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..outputs import save_png

    panels = (("flop_bound_speedup", "FLOP-bound speedup ×"),) if profile else (("psnr", "PSNR vs dense (dB)"),
                                                                               ("ssim", "SSIM vs dense"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    methods = list(dict.fromkeys(row["method"] for row in aggregates if row["method"] != "dense"))
    for axis, (name, label) in zip(axes[0], panels):
        for method in methods:
            rows = [r for r in aggregates
                    if r["method"] == method and r.get(name) is not None and (profile or r["speedup"])]
            if not rows:
                continue
            x = [r["reduction"] or 0.0 for r in rows] if profile else [r["speedup"] for r in rows]
            y = [r[name] for r in rows]
            axis.plot(x, y, marker="o", label=method)
            if profile and all(r["speedup"] for r in rows):  # the meta device times nothing
                axis.plot(x, [r["speedup"] for r in rows], marker="x", linestyle="--", label=f"{method} measured")
        axis.set_xlabel("token reduction r" if profile else "speedup vs dense (total latency) ×")
        axis.set_ylabel("speedup ×" if profile else label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    save_png(figure, path, dpi=120)
