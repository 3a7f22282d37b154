"""One prepared run on a lent GPU: does vidprune deliver its speedup on real-size shapes? (issue 19)

    OUT=/some/dir bash benchmarks/gpu_check.sh              # on the GPU machine, one device-tool call
    OUT=/tmp/rehearsal bash benchmarks/gpu_check.sh --rehearse   # the same stages on the CPU, tiny shapes

It installs what the machine lacks from the wheels in .whl/ (benchmarks/gpu_wheels.txt says how to download them),
then runs each stage in its own process, in priority order, each time-boxed inside one overall deadline, so one slow
stage cannot eat the rest; results are rewritten after every stage:

  kernel-tests       tests/test_kernels.py natively (no TRITON_INTERPRET)
  profile-torch      vidprune bench --profile wan2.1-1.3b: dense and tape at 0.2 / 0.3 / 0.4, --kernels torch
  profile-triton     the same with --kernels triton
  correctness        one pruned bf16 forward: the fused path against the torch path on the same kept tokens, both
                     against the same forward in fp32; the guard's error at every pruned block; what auto chose
  profile-e2e        dense and tape at 0.3 with a real-size VAE decode (--e2e)
  profile-baselines  evit, tome and stavit at 0.3 (--kernels auto)
  profile-compile    dense and tape at 0.3 with --compile (--kernels torch: the fused path calls the block's
                     submodules itself, so it would bypass the compiled block forward)
  bench-kernels      benchmarks/bench_kernels.py
  extra:<profile>    every other profile of vidgen_prune.models.profiles(), read at run time: dense and tape at 0.3

Everything lands in $OUT: gpu_check.json (environment, every stage's records and findings), gpu_check.log (every
stage's output) and summary.md (the table printed last). This file is also the correctness stage's entry point
(`--stage correctness`). The parent process uses the standard library only: torch is imported by the stages.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRIMARY = "wan2.1-1.3b"
REQUIRED = ("torch", "triton", "diffusers", "transformers", "accelerate", "safetensors", "typer", "rich", "imageio",
            "yaml", "cv2", "numpy", "matplotlib", "PIL", "pytest")
# issue 19's targets: tape's transformer speedup per reduction, its share of the FLOP bound, end to end at 0.3
TARGET_SPEEDUP = {0.2: 1.35, 0.3: 1.60, 0.4: 1.95}
TARGET_OF_BOUND, TARGET_E2E = 0.95, 1.5
E2E_FORWARDS = 100  # a real generation: 50 steps × 2 CFG passes, for the extrapolated end-to-end figure
LOG_HEAD, LOG_TAIL = 20_000, 180_000  # bytes of each stage's output kept in gpu_check.log
MIN_STAGE_S = 20  # a stage is not started with less time than this left


# ------------------------------------------------------------------------------------------------ the plan


def plan(rehearse: bool) -> dict:
    """Shared settings of the two modes. Device: a dense Wan2.1-1.3B forward at 81×480×832 was 627 ms on an H100,
    so a 5-step sequence (one step per HighLow level) is ~3 s and a record of the speedup stages (warm-up, 2 timed,
    1 mask-recording sequence) ~13 s dense, ~8 s for tape at 0.3; a bench process adds ~10 s of imports."""
    if rehearse:
        return dict(device="cpu", steps=2, warmup=0, repeats=1, latent="3,8,8", deadline=2400, cap_scale=6.0,
                    kernel_shapes=["--tokens", "48", "--tokens-per-frame", "16", "--dim", "64", "--heads", "4",
                                   "--ffn-dim", "128", "--text-len", "16", "--score-queries", "16"])
    return dict(device="cuda", steps=5, warmup=1, repeats=2, latent=None, deadline=450, cap_scale=1.0,
                kernel_shapes=[])


def bench_stages(settings: dict, preset: str | None, profiles: list[str]) -> list[tuple[str, list[str], float]]:
    """(name, vidprune bench arguments, time cap in s on the GPU) for every stage after the kernel tests, in
    priority order. The speedup stages time 2 sequences per record, the others 1."""
    common = ["--device", settings["device"], "--dtype", "bfloat16", "--warmup", str(settings["warmup"])]
    if settings["latent"]:
        common += ["--profile-latent", settings["latent"]]

    def profile(name: str, methods: str, reductions: str, *extra: str, repeats: int = 1,
                steps: int = settings["steps"]) -> list[str]:
        chosen = ["--preset", preset] if preset and name == PRIMARY else []
        return ["--profile", name, "--methods", methods, "--reductions", reductions, *common, "--steps", str(steps),
                "--repeats", str(min(repeats, settings["repeats"])), *chosen, *extra]

    stages = [
        ("profile-torch", profile(PRIMARY, "dense,tape", "0.2,0.3,0.4", "--kernels", "torch", repeats=2), 110),
        ("profile-triton", profile(PRIMARY, "dense,tape", "0.2,0.3,0.4", "--kernels", "triton", repeats=2), 110),
        ("correctness", [], 90),
        ("profile-e2e", profile(PRIMARY, "dense,tape", "0.3", "--e2e"), 90),
        ("profile-baselines", profile(PRIMARY, "dense,evit,tome,stavit", "0.3"), 90),
        ("profile-compile", profile(PRIMARY, "dense,tape", "0.3", "--compile", "--kernels", "torch"), 150),
        ("bench-kernels", [], 60),
    ]
    for name in sorted((p for p in profiles if p != PRIMARY), key=model_size):
        stages.append((f"extra:{name}", profile(name, "dense,tape", "0.3", steps=2), 150))
    return stages


def model_size(profile: str) -> float:
    """Billions of parameters from a name like 'wan2.1-14b' (smallest first; unknown sizes last)."""
    found = re.search(r"(\d+(?:\.\d+)?)b\b", profile.split("-", 1)[-1])
    return float(found.group(1)) if found else float("inf")


# ------------------------------------------------------------------------------------------------ set-up


def fail(message: str, code: int = 2) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(code)


def wheel_modules(wheel: Path) -> set[str]:
    """Top-level import names a wheel installs (its top_level.txt, else the first parts of its RECORD)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        listed = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if listed:
            return {line.strip() for line in archive.read(listed[0]).decode().splitlines() if line.strip()}
    tops = {name.split("/", 1)[0] for name in names}
    return {top.split(".", 1)[0] for top in tops if not top.endswith((".dist-info", ".data")) and top != "__pycache__"}


def install_missing(wheels: Path, site: Path) -> list[str]:
    """pip-install into `site` each carried wheel none of whose modules this Python can import."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        fail(f"no wheels in {wheels}: download them first (the command is in benchmarks/gpu_wheels.txt) and carry "
             "'.whl' to the device")
    missing = [w for w in found if not any(importlib.util.find_spec(m) for m in wheel_modules(w))]
    if missing:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--disable-pip-version-check", "--target", str(site), *map(str, missing)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            fail("installing the carried wheels failed: " + " ".join(done.stderr.split())[-400:], 1)
    return [w.name for w in missing]


def link_package(site: Path) -> None:
    """vidgen_prune as pyproject installs it (kernels/ and presets/ inside it), as symlinks: no setuptools needed."""
    package = site / "vidgen_prune"
    package.mkdir()
    for entry in (REPO / "vidgen_prune").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in ("kernels", "presets"):
        (package / name).symlink_to(REPO / name)


PROBE = r"""
import importlib.util, json, platform, sys
missing = [m for m in sys.argv[1].split(",") if importlib.util.find_spec(m) is None]
info = {"python": platform.python_version(), "missing": missing}
if not missing:
    import diffusers, torch, triton, vidgen_prune
    from vidgen_prune.models import profiles
    names = list(profiles())
    info.update(torch=torch.__version__, triton=triton.__version__, diffusers=diffusers.__version__,
                vidgen_prune=vidgen_prune.__file__, profiles=names, cuda=torch.cuda.is_available())
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                    cuda_version=torch.version.cuda, memory_gb=torch.cuda.get_device_properties(0).total_memory / 2**30)
print(json.dumps(info))
"""


def rehearsal_preset(scratch: Path) -> Path:
    """The primary profile's preset with 16 text positions instead of 512: on a CPU, each block's key and value
    projections of 512 text tokens would cost more than everything else at a tiny latent."""
    text = (REPO / "presets" / f"{PRIMARY}.yaml").read_text()
    short, count = re.subn(r"max_sequence_length: *512", "max_sequence_length: 16", text)
    if count != 1:
        fail(f"presets/{PRIMARY}.yaml no longer sets max_sequence_length: 512; update rehearsal_preset()", 1)
    path = scratch / "rehearsal-preset.yaml"
    path.write_text(short)
    return path


# ------------------------------------------------------------------------------------------------ stages


class Run:
    """The stages' shared state: environment, deadline, scratch folder, and the JSON rewritten after each stage."""

    def __init__(self, args, settings: dict):
        self.out, self.rehearse, self.settings = args.out, args.rehearse, settings
        self.start = time.monotonic()
        self.deadline = self.start + (args.deadline or settings["deadline"])
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.site = self.scratch / "site"
        self.site.mkdir()
        self.log = self.out / "gpu_check.log"
        self.report = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "mode": "rehearsal (cpu, tiny shapes)" if args.rehearse else "device",
                       "settings": settings, "targets": {"tape_transformer_speedup": TARGET_SPEEDUP,
                                                         "of_flop_bound": TARGET_OF_BOUND, "e2e_at_0.3": TARGET_E2E},
                       "stages": []}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")])),
                   MPLBACKEND="Agg", MPLCONFIGDIR=str(self.scratch / "matplotlib"), HF_HUB_OFFLINE="1",
                   COLUMNS="160", PYTHONUNBUFFERED="1")
        if args.rehearse:  # the kernels on the Triton interpreter, one thread (a shared CPU)
            env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
        else:
            env.pop("TRITON_INTERPRET", None)
        self.env = env

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        partial = self.out / ".gpu_check.json.partial"
        partial.write_text(json.dumps(self.report, indent=1, default=str))
        os.replace(partial, self.out / "gpu_check.json")

    def stage(self, name: str, argv: list[str], cap: float, parse=None) -> dict:
        """Run one stage in its own process group, killed at its time box; its findings go into the report."""
        cap *= self.settings["cap_scale"]
        left = self.deadline - time.monotonic()
        entry = {"name": name, "argv": argv, "cap_s": round(min(cap, left), 1)}
        self.report["stages"].append(entry)
        if left < MIN_STAGE_S:
            entry["skipped"] = f"out of time ({left:.0f} s left of the deadline)"
            self.progress(name, "skipped: out of time")
            self.save()
            return entry
        output = self.scratch / f"{name.replace(':', '_')}.out"
        begin = time.monotonic()
        with output.open("wb") as sink:
            # cwd: not the checkout, whose vidgen_prune/ (no kernels/ inside) `python -m` would import first
            process = subprocess.Popen(argv, cwd=self.scratch, env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                entry["rc"] = process.wait(timeout=entry["cap_s"])
            except subprocess.TimeoutExpired:
                entry["timed_out"] = True
                for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:  # it ended on its own meanwhile
                        pass
                    try:
                        entry["rc"] = process.wait(timeout=grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        entry["seconds"] = round(time.monotonic() - begin, 1)
        text = output.read_bytes()
        entry["tail"] = text[-1500:].decode(errors="replace")
        with self.log.open("ab") as log:
            log.write(f"\n===== {name} (rc {entry.get('rc')}, {entry['seconds']} s): {' '.join(argv)}\n".encode())
            log.write(text if len(text) <= LOG_HEAD + LOG_TAIL else
                      text[:LOG_HEAD] + b"\n[... cut ...]\n" + text[-LOG_TAIL:])
        if parse:
            try:
                entry["result"] = parse()
            except (OSError, ValueError, KeyError) as error:
                entry["result_error"] = f"{type(error).__name__}: {error}"
        status = "timed out" if entry.get("timed_out") else f"rc {entry['rc']}"
        self.progress(name, f"{status} in {entry['seconds']:.1f} s (box {entry['cap_s']:.0f} s)")
        self.save()
        return entry

    def progress(self, name: str, text: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {name:22s} {text}", flush=True)


def read_bench(folder: Path) -> dict:
    """bench.json of a (possibly interrupted) bench: it is rewritten after every record."""
    data = json.loads((folder / "bench.json").read_text())
    return {"device": data.get("device"), "versions": data.get("versions"), "records": data["records"],
            "aggregates": data.get("aggregates")}


def read_junit(path: Path) -> dict:
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return counts | {"failed": failed, "seconds": float(suite.get("time", 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    parser.add_argument("--rehearse", action="store_true", help="CPU, tiny latent, kernels on the interpreter")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels (default: .whl/)")
    parser.add_argument("--deadline", type=float, help="seconds for all stages (default 450 on the GPU)")
    parser.add_argument("--stage", choices=["correctness"], help=argparse.SUPPRESS)  # a stage's own process
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "correctness":
        return correctness(args.json, args.rehearse)
    if args.out is None:
        fail("no results folder: set $OUT or pass --out")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = plan(args.rehearse)
    run = Run(args, settings)
    try:
        run_all(run, args)
    finally:
        shutil.rmtree(run.scratch, ignore_errors=True)


def run_all(run: Run, args) -> None:
    run.log.write_text(f"gpu_check {run.report['mode']}, started {run.report['started']}\n")
    installed = install_missing(args.wheels, run.site)
    link_package(run.site)
    probe = subprocess.run([sys.executable, "-c", PROBE, ",".join(REQUIRED)], env=run.env, cwd=run.scratch,
                           capture_output=True, text=True)
    if probe.returncode:
        fail("the environment probe failed: " + " ".join(probe.stderr.split())[-600:], 1)
    environment = json.loads(probe.stdout.strip().splitlines()[-1]) | {"installed_from_wheels": installed}
    run.report["environment"] = environment
    if environment["missing"]:
        fail(f"cannot import {', '.join(environment['missing'])} here and no wheel in {args.wheels} provides it: add "
             "it to benchmarks/gpu_wheels.txt and download again")
    if not args.rehearse and not environment["cuda"]:
        fail("no CUDA device visible to torch (use --rehearse for the CPU rehearsal)")
    run.save()
    run.progress("set-up", f"{environment.get('gpu', 'cpu')}, torch {environment['torch']}, triton "
                 f"{environment['triton']}, diffusers {environment['diffusers']}; installed {len(installed)} wheels")

    python = sys.executable
    junit = run.scratch / "kernel-tests.xml"
    run.stage("kernel-tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={REPO}",
                               f"--junitxml={junit}", str(REPO / "tests" / "test_kernels.py")], 120,
              lambda: read_junit(junit))
    preset = str(rehearsal_preset(run.scratch)) if args.rehearse else None
    for name, bench_args, cap in bench_stages(run.settings, preset, environment["profiles"]):
        if name == "correctness":
            found = run.scratch / "correctness.json"
            argv = [python, str(Path(__file__).resolve()), "--stage", "correctness", "--json", str(found)]
            run.stage(name, argv + (["--rehearse"] if args.rehearse else []), cap,
                      lambda found=found: json.loads(found.read_text()))
        elif name == "bench-kernels":
            found = run.scratch / "kernels.json"
            argv = [python, str(REPO / "benchmarks" / "bench_kernels.py"), "--out", str(found),
                    *run.settings["kernel_shapes"]]
            run.stage(name, argv, cap, lambda found=found: json.loads(found.read_text()))
        elif name.startswith("extra:") and args.rehearse:
            # the 14B profile alone needs 56 GB to build in fp32 on the host: the rehearsal shows the command only
            run.report["stages"].append({"name": name, "argv": bench_args, "skipped": "rehearsal: command only"})
            run.progress(name, "rehearsal: not run")
        else:
            folder = run.scratch / name.replace(":", "_")
            argv = [python, "-m", "vidgen_prune", "bench", *bench_args, "--out", str(folder)]
            run.stage(name, argv, cap, lambda folder=folder: read_bench(folder))
    run.save()
    table = summarize(run.report)
    (run.out / "summary.md").write_text(table + "\n")
    print(table)


# ------------------------------------------------------------------------------------------------ summary


def summarize(report: dict) -> str:
    """Markdown: the bench rows against dense of the same process, then the checks; the targets beside tape."""
    env = report.get("environment", {})
    lines = [f"gpu_check ({report['mode']}): {env.get('gpu', 'cpu')}, torch {env.get('torch')}, triton "
             f"{env.get('triton')}, {report.get('elapsed_s')} s", "",
             "| stage | method | r | kept | FLOP× | ms/fwd | tf× | of bound | target | path (auto's error) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for stage in report["stages"]:
        name, result = stage["name"], stage.get("result") or {}
        status = stage.get("skipped") or ("timed out" if stage.get("timed_out") else f"rc {stage.get('rc')}")
        if stage.get("rc") != 0 or stage.get("timed_out"):
            notes.append(f"- {name}: {status}")
        if "records" in result:
            lines += bench_rows(name, result["records"])
        elif name == "kernel-tests" and result:
            failed = result["failures"] + result["errors"]
            notes.append(f"- kernel tests ({'interpreter' if 'rehearsal' in report['mode'] else 'native'}): "
                         f"{result['tests'] - failed - result['skipped']} passed, {failed} failed, "
                         f"{result['skipped']} skipped" + (f" ({', '.join(result['failed'][:6])})" if failed else ""))
        elif name == "correctness" and result:
            notes.append(correctness_line(result))
        elif name == "bench-kernels" and result:
            skip = result["results"].get("wan_block_skip", {})
            plain, fused = skip.get("torch_gather_block_scatter", {}), skip.get("fused_triton", {})
            if plain and fused:
                notes.append(f"- one Wan block at keep {result['shapes']['K'] / result['shapes']['N']:.2f}: gather → "
                             f"block → scatter {plain['median_ms']:.2f} ms, fused {fused['median_ms']:.2f} ms "
                             f"({plain['median_ms'] / fused['median_ms']:.2f}×)")
        if name == "profile-e2e" and "records" in result:
            notes.append(e2e_line(result["records"], report["settings"]["steps"]))
    return "\n".join(lines + [""] + notes)


def bench_rows(stage: str, records: list[dict]) -> list[str]:
    dense = next((r for r in records if r["method"] == "dense"), None)
    rows = []
    for record in records:
        speedup = dense["transformer_s"] / record["transformer_s"] if dense else None
        bound = record.get("flop_bound_speedup")
        target = TARGET_SPEEDUP.get(record["reduction"]) if record["pruner"] == "tape" else None
        path = record.get("kernel_path") or "—"
        if record.get("fused_error") is not None:
            path += f" ({record['fused_error']:.2g})"
        rows.append("| " + " | ".join([
            stage, record["method"], "—" if record["reduction"] is None else f"{record['reduction']:g}",
            f"{record['kept_fraction']:.3f}", f"{bound:.2f}", f"{record['transformer_step_ms']:.1f}",
            "—" if speedup is None else f"{speedup:.2f}",
            "—" if speedup is None or record["method"] == "dense" else f"{speedup / bound:.0%}",
            "—" if target is None else f"≥ {target:.2f} ({'met' if speedup >= target else 'missed'})", path,
        ]) + " |")
    return rows


def e2e_line(records: list[dict], steps: int) -> str:
    """The measured end-to-end speedup at 0.3, and the same timings extrapolated to a real generation's forwards."""
    dense = next((r for r in records if r["method"] == "dense"), None)
    tape = next((r for r in records if r["pruner"] == "tape"), None)
    if not (dense and tape and dense.get("decode_s")):
        return "- e2e: incomplete"
    measured = dense["total_s"] / tape["total_s"]
    # transformer_s is one timed sequence of `steps` forwards: its mean forward averages the HighLow levels
    dense_forward, tape_forward = dense["transformer_s"] / steps, tape["transformer_s"] / steps
    decode = dense["decode_s"]
    extrapolated = (E2E_FORWARDS * dense_forward + decode) / (E2E_FORWARDS * tape_forward + decode)
    return (f"- e2e at 0.3: {measured:.2f}× as run ({steps} forwards: transformer {tape['transformer_s']:.2f} s vs "
            f"dense {dense['transformer_s']:.2f} s, decode {decode:.2f} s); extrapolated to 50 steps × 2 CFG passes: "
            f"{extrapolated:.2f}× (target ≥ {TARGET_E2E}: {'met' if extrapolated >= TARGET_E2E else 'missed'}; text "
            "encoder and scheduler not counted)")


def correctness_line(result: dict) -> str:
    replay, auto = result.get("replay", {}), result.get("auto", {})

    def value(key: str, spec: str = ".3g") -> str:
        found = replay.get(key, result.get(key))
        return "?" if found is None else format(found, spec)

    text = (f"- correctness ({result.get('shape')}, bf16, the same kept tokens): fused vs torch max abs "
            f"{value('fused_vs_torch_max_abs')} (mean {value('fused_vs_torch_mean_abs')}); against fp32: torch "
            f"{value('torch_vs_fp32_max_abs')}, fused {value('fused_vs_fp32_max_abs')} (ratio "
            f"{value('error_ratio_max', '.2f')}, max; the kernel test allows 4); auto's check at every pruned block: "
            f"at most {value('guard_errors_max')} of the tolerance")
    if auto:
        text += f"; auto chose {auto.get('kernel_path')}, scores {auto.get('score_kernel_path')}"
    return text


# ------------------------------------------------------------------------------------------------ correctness


def correctness(path: Path, rehearse: bool) -> None:
    """One pruned forward of the real-size profile in bf16, written to `path` as JSON."""
    import copy
    from dataclasses import replace

    import torch

    from vidgen_prune.bench import MethodEntry, build_profile_transformer, make_spec
    from vidgen_prune.engine import pruned
    from vidgen_prune.kernels.guard import FusedGuard
    from vidgen_prune.pruning import hooks
    from vidgen_prune.pruning.base import Pruner
    from vidgen_prune.pruning.plan import skip_plan

    settings = plan(rehearse)
    lists = dict(methods=["tape"], reductions=[0.3], profile=PRIMARY, prompts=None, held_out=None, seeds=None,
                 warmup=None, repeats=None, metrics=None, compile=None, e2e=None,
                 profile_latent=[int(v) for v in settings["latent"].split(",")] if settings["latent"] else None)
    preset = str(rehearsal_preset(Path(tempfile.mkdtemp()))) if rehearse else None
    spec = make_spec(None, lists, dict(device=settings["device"], dtype="bfloat16", steps=1), {}, preset)
    tape = spec.prune_config(MethodEntry("tape"), 0.3)
    device = torch.device(settings["device"])
    if rehearse:  # on the CPU auto means torch; let it pick the (interpreted) kernels as it does on CUDA
        hooks.resolve_backend = lambda kernels, dev: "torch" if kernels == "torch" else "triton"
    torch.manual_seed(0)
    transformer = build_profile_transformer(PRIMARY, device, torch.bfloat16)
    config = transformer.config
    frames, height, width = spec.latent  # --profile-latent, else the profile's own
    inputs = dict(hidden_states=torch.randn(1, config.in_channels, frames, height, width, device=device,
                                            dtype=torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, spec.gen.max_sequence_length, config.text_dim, device=device,
                                                    dtype=torch.bfloat16),
                  timestep=torch.tensor([999.0], device=device), return_dict=False)
    result = {"shape": f"latent {frames}×{height}×{width}, {frames * height * width // 4} tokens, text "
                       f"{spec.gen.max_sequence_length}", "prune": tape.method, "reduction": 0.3}

    with torch.no_grad(), pruned(transformer, replace(tape, kernels="torch"), 1, record_masks=True) as controller:
        tape_torch = transformer(**inputs)[0]
    kept = {layer: positions.to(device) for _, _, layer, positions in controller.log.masks}

    class Replay(Pruner):
        """The torch run's kept tokens, block by block: both paths compute the same rows."""

        def plan(self, layer, probe):
            return skip_plan(kept[layer]) if layer in kept else None

    class EveryBlock(FusedGuard):
        """auto's check at every pruned block, not only the first; returns the torch result, so every block sees the
        torch path's input."""

        def __init__(self):
            super().__init__("the fused skip forward, every block", check=True)
            self.errors: list[float] = []

        def run(self, fused, reference, base=None):
            self.state = "pending"
            super().run(fused, reference, base)
            self.errors.append(self.error)
            return reference()

    def replay(model, kernels: str, model_inputs: dict, guard: FusedGuard | None = None):
        controller = hooks.apply_pruner(model, Replay(tape), kernels=kernels)
        controller.reset(1)
        if guard is not None:
            controller.fused_guard = guard
        try:
            with torch.no_grad():
                return model(**model_inputs)[0]
        finally:
            hooks.remove_pruner(model)

    torch_out = replay(transformer, "torch", inputs)
    fused_out = replay(transformer, "triton", inputs)
    guard = EveryBlock()
    replay(transformer, "auto", inputs, guard)
    result["guard_errors"] = guard.errors
    result["guard_errors_max"] = max(guard.errors) if guard.errors else None
    del guard

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
    reference = copy.deepcopy(transformer).float()
    inputs32 = {k: v.float() if torch.is_tensor(v) else v for k, v in inputs.items()}
    truth = replay(reference, "torch", inputs32)
    del reference
    torch_err, fused_err = (torch_out.float() - truth).abs(), (fused_out.float() - truth).abs()
    result["replay"] = {
        "reproduces_tape_torch_bitwise": bool(torch.equal(torch_out, tape_torch)),
        "fused_vs_torch_max_abs": float((fused_out.float() - torch_out.float()).abs().max()),
        "fused_vs_torch_mean_abs": float((fused_out.float() - torch_out.float()).abs().mean()),
        "torch_vs_fp32_max_abs": float(torch_err.max()), "torch_vs_fp32_mean_abs": float(torch_err.mean()),
        "fused_vs_fp32_max_abs": float(fused_err.max()), "fused_vs_fp32_mean_abs": float(fused_err.mean()),
        "error_ratio_max": float(fused_err.max() / torch_err.max()),
        "error_ratio_mean": float(fused_err.mean() / torch_err.mean()),
        "output_max_abs": float(truth.abs().max()),
    }
    with torch.no_grad(), pruned(transformer, replace(tape, kernels="auto"), 1) as controller:
        transformer(**inputs)
    result["auto"] = controller.kernel_report()
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
