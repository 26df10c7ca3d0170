"""The Decode node holds its output once: through ``python -m bench.bench_decode_memory`` in a
fresh interpreter with the pinned ComfyUI's modules (tools/harness/inprocess.py; its decoder a
stand-in, so the numbers are the decode path's own copies), the peak rise of the resident set
stays under 1.3 x the output on every decode path (three copies, the output plus a float/clamp
and a layout copy, measured 3.0 x). The buffer itself: tests/kv_core/stages/test_decode_buffer.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.harness.inprocess import comfyui_checkout

REPO = Path(__file__).resolve().parents[2]


def test_decode_node_peak_host_memory_is_about_its_output():
    comfyui = comfyui_checkout()
    if comfyui is None:
        pytest.skip("no ComfyUI checkout ($COMFYUI_PATH, or the pinned one scripts/test.sh installs)")
    done = subprocess.run([sys.executable, "-m", "bench.bench_decode_memory", "--in-process",
                           "--frames", "117", "--width", "320", "--height", "180"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COMFYUI_PATH": str(comfyui)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["path"] for r in rows] == ["encoded", "encoded-scale", "release", "long"]
    for r in rows:
        assert r["output_bytes"] > 40e6  # large enough that allocator noise is a few percent
        assert r["ratio"] <= 1.3, f"{r['path']}: peak {r['peak_rise_bytes'] / 1e6:.0f} MB for an output of " \
                                  f"{r['output_bytes'] / 1e6:.0f} MB"
