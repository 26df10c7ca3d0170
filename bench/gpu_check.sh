#!/usr/bin/env bash
# The GPU check: time and peak memory of every stage at the release's size (official
# configurations, random weights, bf16 U-Nets), the reference's forwards beside ours when
# KV_REFERENCE_REPO points at a local copy of the official code, keyframes and interpolation
# with step caching at intervals 2, 3 and 5 against no cache, and the whole 8 fps
# pipeline with offloading under budgets for 24/16/12 GB cards; one table on stdout. See
# bench/gpu_check.py for the rows.
#
#   bash bench/gpu_check.sh            # a CUDA machine (sized for under 8 minutes on one H200; not yet run on one)
#   bash bench/gpu_check.sh --smoke    # tiny networks on the CPU: every code path in seconds (CI)
#   bash bench/gpu_check.sh --levers-only   # the host's levers alone (attention backends, compile,
#                                           # streamed weights, CFG split over 2 GPUs)
#
# Python: $KV_PYTHON, else $KV_VENV/bin/python, else .venv/bin/python of the clone, else python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${KV_PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in "${KV_VENV:-}/bin/python" "$ROOT/.venv/bin/python"; do
        if [ -x "$candidate" ]; then PY="$candidate"; break; fi
    done
fi
PY="${PY:-python3}"
start=$SECONDS
cd "$ROOT"  # run as a module from the repository root, which puts the root on sys.path
"$PY" -m bench.gpu_check "$@"
echo "# gpu_check finished in $((SECONDS - start)) s"
