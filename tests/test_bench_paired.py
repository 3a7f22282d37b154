"""vidprune bench: paired comparisons (restoration vs none, each variant vs ToMe), shards and their merge."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vidgen_prune.bench import make_spec, paired_comparisons, paired_markdown
from vidgen_prune.cli import app

PROMPTS = ("a red circle moving left on a black background", "a blue square bouncing on a gray background")


def record(pruner: str, restore: str, reduction: float | None, prompt: str, seed: int, psnr: float | None) -> dict:
    return dict(method=pruner if restore == "none" else f"{pruner}@{restore}", pruner=pruner, restore=restore,
                cache=None, reduction=reduction, prompt=prompt, seed=seed, psnr=psnr, tde=0.01, warp_ratio=1.5,
                mask_iou=0.5 if pruner != "tome" else 0.2)


def test_paired_comparisons_count_each_pair_once_against_none_and_against_tome():
    psnr = {("tape", "none"): (15.0, 16.0, 14.0), ("tape", "similar"): (17.0, 15.5, 18.0),
            ("tape", "neighbours"): (16.0, 16.5, 14.5), ("tome", "none"): (16.5, 16.0, 17.0)}
    pairs = [(PROMPTS[0], 0), (PROMPTS[0], 1), (PROMPTS[1], 0)]
    records = [record("dense", "none", None, p, s, None) for p, s in pairs]
    records += [record(pruner, restore, 0.3, p, s, value) for (pruner, restore), values in psnr.items()
                for (p, s), value in zip(pairs, values)]
    records.append(record("tape", "none", 0.3, PROMPTS[1], 1, 10.0))  # a pair the restored runs do not share
    rows = {row["restore"]: row for row in paired_comparisons(records)}
    assert list(rows) == ["none", "similar", "neighbours"]  # ToMe is the baseline, not a row
    similar, plain = rows["similar"], rows["none"]
    assert similar["pairs"] == 3 and similar["psnr"] == pytest.approx(50.5 / 3)
    assert similar["delta_none"] == pytest.approx((2.0 - 0.5 + 4.0) / 3) and similar["wins_none"] == "2/3"
    assert similar["delta_tome"] == pytest.approx((0.5 - 0.5 + 1.0) / 3) and similar["wins_tome"] == "2/3"
    assert plain["delta_none"] is None and plain["wins_tome"] == "0/3" and plain["pairs"] == 4
    assert rows["neighbours"]["wins_none"] == "3/3" and rows["neighbours"]["mask_iou"] == 0.5
    best = paired_markdown(list(rows.values())).split("against ToMe:")[1]
    assert "| tape | 0.3 | similar | 3 | 16.83 | +0.33 | 2/3 |" in best


def test_paired_comparisons_are_empty_without_restorations_or_tome():
    records = [record("tape", "none", 0.3, PROMPTS[0], 0, 15.0), record("evit", "none", 0.3, PROMPTS[0], 0, 14.0)]
    assert paired_comparisons(records) == []


def bench(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


@torch.no_grad()
def test_shards_merge_into_the_whole_bench_with_its_paired_report(tiny_model_dir, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"methods: [dense, tape@none, tape@similar, tome]\nreductions: [0.3]\nprompts: {list(PROMPTS)}\n"
                    f"seeds: [0]\nwarmup: 0\nmetrics: [timing, fidelity]\nprune: {{reselect_every: 3}}\n"
                    f"generate: {{model: {tiny_model_dir}, steps: 2, frames: 5, height: 64, width: 64}}\n")
    for share in (1, 2):
        result = bench("--spec", spec, "--shard", f"{share}/2", "--out", tmp_path / f"share{share}")
        assert result.exit_code == 0, result.output
    shares = [json.loads((tmp_path / f"share{share}" / "bench.json").read_text())["records"] for share in (1, 2)]
    assert [{r["prompt"] for r in records} for records in shares] == [{PROMPTS[0]}, {PROMPTS[1]}]
    assert all(len(records) == 4 for records in shares)
    for share in (1, 2):  # as if the shares ran on another machine than the merge
        path = tmp_path / f"share{share}" / "bench.json"
        saved = json.loads(path.read_text())
        saved["records"] = [record | {"device": "cpu: the shards' machine"} for record in saved["records"]]
        path.write_text(json.dumps(saved))

    whole = tmp_path / "whole"
    merged = bench("--spec", spec, "--merge", f"{tmp_path / 'share1'},{tmp_path / 'share2'}", "--out", whole)
    assert merged.exit_code == 0, merged.output
    saved = json.loads((whole / "bench.json").read_text())
    assert [(r["method"], r["prompt"]) for r in saved["records"]] == [
        (method, prompt) for prompt in PROMPTS for method in ("dense", "tape@none", "tape@similar", "tome")
    ]
    assert {r["method"]: r["runs"] for r in saved["aggregates"]} == {m: 2 for m in
                                                                      ("dense", "tape@none", "tape@similar", "tome")}
    assert [(row["restore"], row["pairs"]) for row in saved["paired"]] == [("none", 2), ("similar", 2)]
    assert (whole / "paired.md").read_text().startswith("| method | r | restore | pairs |")
    assert saved["device"] == "cpu: the shards' machine"  # the records' device, not the merging process's
    assert "paired over prompt × seed" in merged.output


@pytest.mark.parametrize(
    ("folders", "extra", "fragment"),
    [
        (["share1"], [], "lack 2 of the spec's 4 runs"),
        (["share1", "share1"], [], "is in more than one folder"),
        (["missing"], [], "holds no bench.json"),
        (["share1", "share2"], ["--shard", "1/2"], "drop --shard"),
        (["share1", "share2"], ["--steps", "3"], "holds a bench with other settings"),
    ],
)
def test_merge_refuses_what_is_not_one_whole_bench_with_one_line(tmp_path, folders, extra, fragment):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"methods: [dense, tape]\nreductions: [0.3]\nprompts: {list(PROMPTS)}\nseeds: [0]\n")
    fingerprint = make_spec(spec, {}, {}, {}, None).fingerprint()
    for share, prompt in (("share1", PROMPTS[0]), ("share2", PROMPTS[1])):
        (tmp_path / share).mkdir()
        runs = [dict(method="dense", reduction=None, prompt=prompt, seed=0)]
        runs += [dict(method="tape", reduction=0.3, prompt=prompt, seed=0)]
        (tmp_path / share / "bench.json").write_text(json.dumps({"fingerprint": fingerprint, "records": runs}))
    out = tmp_path / "whole"
    result = bench("--spec", spec, "--merge", ",".join(str(tmp_path / f) for f in folders), "--out", out, *extra)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and fragment in result.output, result.output
    assert not out.exists()
