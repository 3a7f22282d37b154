#!/usr/bin/env bash
# One run on a lent GPU (issue 19): installs what the machine lacks from .whl/, runs the kernel tests, the profile
# benches and the correctness check, each time-boxed, and writes gpu_check.json, gpu_check.log and summary.md into
# $OUT. See benchmarks/gpu_check.py; --rehearse runs the same stages on the CPU at tiny shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
