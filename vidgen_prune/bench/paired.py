"""Paired comparisons: each variant against its own method without restoration and against ToMe, run by run."""

from __future__ import annotations

import statistics

from ..pruning import MERGING

PAIRED_FIELDS = ("method", "reduction", "restore", "pairs", "psnr", "delta_none", "wins_none", "delta_tome",
                 "wins_tome", "tde", "warp_ratio", "mask_iou")
PAIRED_COLUMNS = (("method", "method"), ("reduction", "r"), ("restore", "restore"), ("pairs", "pairs"),
                  ("psnr", "PSNR"), ("delta_none", "Δ vs none"), ("wins_none", "wins"), ("delta_tome", "Δ vs ToMe"),
                  ("wins_tome", "wins"), ("tde", "TDE"), ("warp_ratio", "warp"), ("mask_iou", "IoU"))
PAIRED_BASELINE = "tome"  # merging: every token gets an update, the bar restoration has to reach


def paired_comparisons(records: list[dict]) -> list[dict]:
    """Restoration against none, and every token-skipping variant against ToMe, paired over prompt × seed.

    One row per skip pruner × reduction × restoration (cache-free quality runs), for the pruners and reductions the
    bench ran with two or more restorations or beside ToMe: the mean PSNR; the mean PSNR difference to the same pruner
    without restoration (`delta_none`) and to ToMe at that reduction (`delta_tome`), each over the pairs both ran, with
    `wins_*` = the pairs where this variant has the higher PSNR; and the means of TDE, warp ratio and mask IoU. Empty
    when the bench has no such pair.
    """
    from ..pruning.restore import RESTORES

    by_variant: dict[tuple, dict[tuple, dict]] = {}
    for record in records:
        if record["cache"] is None and record["pruner"] != "dense" and record.get("psnr") is not None:
            variant = (record["pruner"], record["reduction"], record["restore"])
            by_variant.setdefault(variant, {})[(record["prompt"], record["seed"])] = record
    rows = []
    for pruner, reduction in dict.fromkeys((p, r) for p, r, _ in by_variant if p not in MERGING):
        restores = [restore for restore in RESTORES if (pruner, reduction, restore) in by_variant]
        baseline = by_variant.get((PAIRED_BASELINE, reduction, "none"))
        if len(restores) < 2 and baseline is None:
            continue
        plain = by_variant.get((pruner, reduction, "none"))
        for restore in restores:
            runs = by_variant[(pruner, reduction, restore)]
            row = {"method": pruner, "reduction": reduction, "restore": restore, "pairs": len(runs),
                   **{name: _mean_of(runs.values(), name) for name in ("psnr", "tde", "warp_ratio", "mask_iou")}}
            for suffix, other in (("none", plain if restore != "none" else None), ("tome", baseline)):
                row[f"delta_{suffix}"], row[f"wins_{suffix}"] = _paired_psnr(runs, other)
            rows.append(row)
    return rows


def best_against_baseline(rows: list[dict]) -> list[dict]:
    """Per reduction, the paired row with the highest mean PSNR and how it fares against ToMe."""
    best: dict[float, dict] = {}
    for row in rows:
        if row["reduction"] not in best or row["psnr"] > best[row["reduction"]]["psnr"]:
            best[row["reduction"]] = row
    return list(best.values())


def _paired_psnr(runs: dict[tuple, dict], other: dict[tuple, dict] | None) -> tuple[float | None, str | None]:
    """Mean PSNR difference runs − other over the prompt × seed pairs both hold, and 'wins/pairs'."""
    shared = [pair for pair in runs if other is not None and pair in other]
    if not shared:
        return None, None
    deltas = [runs[pair]["psnr"] - other[pair]["psnr"] for pair in shared]
    return statistics.fmean(deltas), f"{sum(delta > 0 for delta in deltas)}/{len(deltas)}"


def _mean_of(records, name: str) -> float | None:
    values = [record[name] for record in records if record.get(name) is not None]
    return statistics.fmean(values) if values else None


def paired_table_rows(rows: list[dict], columns: tuple[tuple[str, str], ...] = PAIRED_COLUMNS):
    """Header and formatted cells of the paired-comparison table (`columns`: (field, title) pairs)."""
    formats = {"psnr": ".2f", "delta_none": "+.2f", "delta_tome": "+.2f", "tde": ".4f", "warp_ratio": ".3f",
               "mask_iou": ".3f", "reduction": "g"}

    def cell(row: dict, name: str) -> str:
        value = row.get(name)
        return "—" if value is None else format(value, formats[name]) if name in formats else str(value)

    return [title for _, title in columns], [[cell(row, name) for name, _ in columns] for row in rows]
