"""`vidprune generate --prompts`: prompt-file checks, sharding, manifest resume, and a killed torchrun job resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from vidgen_prune.batch import Manifest, read_prompt_file, shard
from vidgen_prune.cli import app
from vidgen_prune.commands.generate import build_configs
from vidgen_prune.outputs import partial_path

runner = CliRunner()
PRUNE = ["--method", "tape", "--reselect-every", "3"]
TINY = ["--steps", "2", "--frames", "5", "--height", "32", "--width", "32", *PRUNE]
# about 3x the work per item: the kill lands while each rank still has items to do
TORCHRUN_ITEM = ["--steps", "2", "--frames", "9", "--height", "64", "--width", "64", *PRUNE]


def run(*args):
    return runner.invoke(app, ["generate", *map(str, args)])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def records(out_dir) -> list[dict]:
    return Manifest(out_dir).records()


def partial_of_a_killed_run(path):
    """The partial name `path` had in a process of this host that has exited (a run killed mid-write)."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = partial_path(path)
    return mine.with_name(mine.name.replace(f".{os.getpid()}.", f".{finished.stdout.strip()}."))


# ---------------------------------------------------------------- sharding


def test_shard_partitions_items_for_any_world_size():
    for count in range(0, 40):
        items = list(range(count))
        for world_size in range(1, 70):
            shares = [shard(items, rank, world_size) for rank in range(world_size)]
            assert sorted(i for share in shares for i in share) == items  # every item once: no loss, no duplicate
            assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_shard_refuses_a_rank_outside_the_world(rank, world_size):
    with pytest.raises(ValueError, match="not in a world"):
        shard([1, 2, 3], rank, world_size)


# ---------------------------------------------------------------- prompt file


def test_jsonl_lines_carry_their_own_seed_negative_and_overrides(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a red circle", "seed": 7, "negative": "blur", "overrides": {"steps": 3, "method": "evit"}}\n'
        "\n"
        '{"prompt": "a blue square"}\n'
    )
    items = read_prompt_file(prompts, lambda gen, prune: build_configs({"steps": 2} | gen, {"method": "tape"} | prune,
                                                                       None))
    assert [(i.index, i.line) for i in items] == [(0, 1), (1, 3)]
    first, second = items
    assert (first.gen.seed, first.gen.negative_prompt, first.gen.steps, first.prune.method) == (7, "blur", 3, "evit")
    assert (second.gen.seed, second.gen.steps, second.prune.method) == (0, 2, "tape")
    assert first.name == "0000-a-red-circle" and second.name == "0001-a-blue-square"
    assert first.key != second.key


def test_malformed_lines_are_reported_by_number_and_nothing_runs(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            [
                '{"prompt": "a red circle"}',  # 1: fine
                '{"prompt": "unclosed"',  # 2: not JSON
                '{"prompt": "x", "overrides": {"colour": "red"}}',  # 3: unknown override
                '{"prompt": "x", "seed": "7"}',  # 4: wrong type
                '{"prompt": "x", "overrides": {"frames": 10}}',  # 5: invalid value
                '{"seed": 1}',  # 6: no prompt
                '["a list"]',  # 7: not an object
                '{"prompt": "fine again"}',  # 8: fine
            ]
        )
    )
    out_dir = tmp_path / "out"
    line = one_error_line(run("--prompts", prompts, "--out-dir", out_dir, "--model", tiny_model_dir, *TINY))
    for fragment in ("line 2: not valid JSON", "line 3: unknown override 'colour'", "line 4: seed must be an integer",
                     "line 5: Wan: --frames must be 4k+1", 'line 6: needs a non-empty "prompt"',
                     "line 7: expected a JSON"):
        assert fragment in line, line
    assert "line 1:" not in line and "line 8:" not in line
    assert not out_dir.exists()  # refused before any compute or output


def test_pruning_out_of_reach_is_refused_with_its_line_before_generation(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "too much", "overrides": {"reduction": 0.9}}\n')
    out_dir = tmp_path / "out"
    line = one_error_line(run("--prompts", prompts, "--out-dir", out_dir, "--model", tiny_model_dir, *TINY))
    assert "line 2:" in line and "cannot be reached" in line and "line 1:" not in line
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--prompt", "x", "--prompts", "PROMPTS", "--out-dir", "OUT"], "mutually exclusive"),
        ([], "give --prompt TEXT, or --prompts FILE"),
        (["--prompts", "PROMPTS"], "--prompts needs --out-dir"),
        (["--prompts", "PROMPTS", "--out-dir", "OUT", "--out", "OUT/x.mp4"], "--out is for one --prompt"),
        (["--prompt", "x", "--out-dir", "OUT"], "--out-dir goes with --prompts"),
        (["--prompts", "MISSING", "--out-dir", "OUT"], "cannot read prompt file"),
        (["--prompts", "EMPTY", "--out-dir", "OUT"], "has no prompts"),
    ],
)
def test_prompt_flags_that_do_not_go_together_are_refused(tmp_path, flags, fragment):
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    names = {"PROMPTS": "prompts.txt", "EMPTY": "empty.txt", "MISSING": "missing.txt", "OUT": "out"}
    flags = [str(tmp_path / names[f]) if f in names else f.replace("OUT/", f"{tmp_path}/out/") for f in flags]
    assert fragment in one_error_line(run(*flags))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- resume


def test_resume_skips_finished_items_and_ignores_partial_files(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    out_dir = tmp_path / "out"
    args = ["--prompts", prompts, "--out-dir", out_dir, "--model", tiny_model_dir, *TINY, "--json"]

    first = run(*args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["generated"] == ["0000-a-red-circle", "0001-a-blue-square", "0002-a-green-triangle"]
    assert len(list(iio.imiter(out_dir / "0001-a-blue-square.mp4"))) == 5

    # killed after item 1's files were renamed but before its record, during item 2's MP4, during a record
    part = out_dir / "manifest.rank0.jsonl"
    part.write_text(part.read_text().splitlines()[0] + "\n" + '{"name": "0002-a-gre')
    (out_dir / "0002-a-green-triangle.mp4").replace(partial_of_a_killed_run(out_dir / "0002-a-green-triangle.mp4"))
    (out_dir / "0002-a-green-triangle.json").unlink()
    kept_sidecar = (out_dir / "0000-a-red-circle.json").stat().st_mtime_ns

    second = run(*args)
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["finished_before"] == 1 and summary["generated"] == ["0001-a-blue-square", "0002-a-green-triangle"]
    assert (out_dir / "0000-a-red-circle.json").stat().st_mtime_ns == kept_sidecar  # not redone
    assert sorted(r["name"] for r in records(out_dir)) == ["0000-a-red-circle", "0001-a-blue-square",
                                                           "0002-a-green-triangle"]  # each once
    assert not [p for p in out_dir.iterdir() if "partial" in p.name]

    third = json.loads(run(*args).stdout)
    assert (third["finished_before"], third["generated"]) == (3, [])

    changed = run(*args, "--seed", "1")
    assert "made with another prompt or settings" in one_error_line(changed)


def test_single_prompt_json_summary_parses(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("--prompt", "a red circle", "--model", tiny_model_dir, *TINY, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["video"] == str(out) and summary["method"] == "tape" and 0 < summary["kept_fraction"] < 1
    assert len(summary["timings"]["step_s"]) == 2


# ---------------------------------------------------------------- torchrun


def torchrun(nproc: int, prompts, out_dir, model_dir, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "vidgen_prune", "generate", "--prompts", prompts, "--out-dir", out_dir, "--model", model_dir,
               *TORCHRUN_ITEM, "--json"]
    with open(log, "w") as handle:
        return subprocess.Popen(list(map(str, command)), stdout=handle, stderr=subprocess.STDOUT)


def test_killed_torchrun_job_resumes_on_another_world_size_without_duplicates_or_losses(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red circle number {i}\n" for i in range(6)))
    out_dir = tmp_path / "out"

    job = torchrun(2, prompts, out_dir, tiny_model_dir, tmp_path / "killed.log")
    try:
        deadline = time.monotonic() + 120
        while job.poll() is None and not records(out_dir):
            assert time.monotonic() < deadline, "no item finished within 120 s"
            time.sleep(0.02)
        job.send_signal(signal.SIGTERM)  # what a scheduler sends; torchrun passes it on to the ranks
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    finished = {r["name"]: (out_dir / r["sidecar"]).stat().st_mtime_ns for r in records(out_dir)}
    assert 1 <= len(finished) < 6, f"the kill should land midway, {len(finished)} of 6 were finished"

    log = tmp_path / "resumed.log"  # with another world size: the finished set, not the old shards, decides
    assert torchrun(3, prompts, out_dir, tiny_model_dir, log).wait(timeout=120) == 0, log.read_text()
    names = [r["name"] for r in records(out_dir)]
    assert sorted(names) == [f"{i:04d}-a-red-circle-number-{i}" for i in range(6)]  # all of them, each once
    assert all((out_dir / f"{name}.json").stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert len(list(out_dir.glob("*.mp4"))) == 6
    assert not [p for p in out_dir.iterdir() if "partial" in p.name]
    summaries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert sorted(s["rank"] for s in summaries) == [0, 1, 2]
    assert sorted(n for s in summaries for n in s["generated"]) == sorted(set(names) - set(finished))
