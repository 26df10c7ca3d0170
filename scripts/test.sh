#!/usr/bin/env bash
# Runs the whole test suite on a fresh Linux machine with Python 3.11 — the command CI runs.
#
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -k host -x    # extra arguments go to pytest (instead of the default set)
#
# Steps (each skipped when its stamp says it is done, so a second run starts testing at once):
#   1. a virtual environment in .venv ($KV_VENV) made with python3.11 ($PYTHON);
#   2. torch + torchvision from PyPI (the CUDA builds: PyPI has no CPU torchvision, and these
#      run fine without a GPU), the pack's requirements.txt and tests/requirements.txt;
#   3. the pinned ComfyUI 0.3.75 into .cache/comfyui and its requirements, and the current web
#      frontend (1.58.1) unpacked into .cache/frontends for the frontend tests (tools/comfy_host.py
#      install; $COMFYUI_PATH uses an existing ComfyUI instead);
#   4. Debian's chromium for the frontend tests and a Chinese font for their screenshots (apt-get,
#      when run as root and they are missing);
#   5. pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="${KV_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
t_start=$SECONDS
say() { echo "[test.sh +$((SECONDS - t_start))s] $*" >&2; }

# 1. virtual environment -------------------------------------------------------------------
if [ ! -x "$PY" ]; then
    command -v "$PYTHON" >/dev/null || { say "no $PYTHON on PATH (set PYTHON=/path/to/python3.11)"; exit 2; }
    say "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || { say "$VENV is not Python >= 3.10; remove it or set KV_VENV"; exit 2; }

# 2. Python packages ------------------------------------------------------------------------
deps_key=$(cat requirements.txt tools/requirements.txt tests/requirements.txt | sha256sum | cut -c1-16)
deps_stamp="$VENV/.kv-deps-$deps_key"
if [ ! -f "$deps_stamp" ]; then
    if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
        say "installing torch and torchvision (about 5 GB, a few minutes)"
        "$PY" -m pip install --disable-pip-version-check -q torch torchvision
    fi
    say "installing the pack's and the tests' requirements"
    "$PY" -m pip install --disable-pip-version-check -q -r requirements.txt -r tests/requirements.txt
    touch "$deps_stamp"
fi

# 3. ComfyUI (stamped inside tools/harness/install.py) -------------------------------------------
"$PY" -m tools.comfy_host install

# 4. Chromium for the frontend tests, and a font with Chinese characters for their screenshots --
apt_packages=()
if ! command -v chromium >/dev/null && [ -z "${KV_CHROMIUM:-}" ]; then
    apt_packages+=(chromium)
fi
if command -v fc-list >/dev/null && ! fc-list :lang=zh family | grep -q .; then
    apt_packages+=(fonts-wqy-microhei)  # about 5 MB; without it Chinese text shows as boxes
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's ${apt_packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    else
        say "cannot install ${apt_packages[*]} (no root apt-get): without chromium the frontend tests are skipped (they fail under CI)"
    fi
fi

# 5. the tests ------------------------------------------------------------------------------
say "environment ready; running pytest"
# One intra-op thread per process: pytest runs two workers and a ComfyUI server on two cores,
# and OpenMP threads that outnumber the cores spin against each other (measured here: a tiny
# U-Net forward took 21 s instead of 0.14 s). Results do not depend on the thread count
# beyond the golden tolerances.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ $# -gt 0 ]; then
    exec "$PY" -m pytest "$@"
fi
# The whole suite, on both cores: tests that use the ComfyUI host share one worker (and one
# server); the rest are spread over both.
set +e
"$PY" -m pytest -n 2 --dist loadgroup -p no:cacheprovider --durations=15
rc=$?
set -e
if [ $rc -eq 5 ]; then
    # pytest's "no tests collected": for the whole suite that is a broken checkout, never a pass
    say "pytest collected no tests: failing"
    exit 1
fi
say "pytest exited with $rc"
exit $rc
