#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py has the steps, budget and outputs):
#
#   bench/gpu_check.sh             # on a machine with a CUDA GPU: < 8 minutes, ends with a summary table
#   bench/gpu_check.sh --dry-run   # the same steps on the CPU with tiny shapes (tests/test_gpu_check.py)
#
# Other options go to `python bench/gpu_check.py run` (--out DIR, --budget-s S, --only STEPS, --fsdp-cpu).
# The interpreter is $PYTHON, else the project's .venv, else python3. Exit code 0 when every step
# that ran finished and met its target.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ "${DRY_RUN:-0}" == "1" ]]; then set -- --dry-run "$@"; fi
exec "$PYTHON" bench/gpu_check.py run "$@"
