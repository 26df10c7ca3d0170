"""bench/gpu_check.sh --smoke: the GPU check's every code path on the CPU (tiny networks), so
the script runs as it is the day a GPU is lent. The reference path runs against a stand-in
of the official code's layout (tests/data/reference_stand_in: kv_core's networks behind the
reference's calls); the official code is never committed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["text_encoder", "first_frame", "decode_first_frame", "encode_first_frame", "keyframes",
          "interpolation_1", "decode_5", "interpolation_2", "decode_17"]
FORWARDS = {"first_frame", "keyframes", "interpolation_1", "decode_5"}  # with the reference's forward beside
NUMBER = re.compile(r"^\d+\.\d+$")
MEMORY = re.compile(r"^\d+\.\d+ (MiB|GiB)$")
# one smoke run for the whole module: under pytest -n the tests would otherwise land on two
# workers and each run the minutes-long smoke check
pytestmark = pytest.mark.xdist_group("gpu_check")


@pytest.fixture(scope="module")
def table():
    env = dict(os.environ, KV_PYTHON=sys.executable, OMP_NUM_THREADS="1",
               KV_REFERENCE_REPO=str(REPO / "tests" / "data" / "reference_stand_in"))
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| kind")]
    header = next(line for line in done.stdout.splitlines() if line.startswith("| kind"))
    return done.stdout, [c.strip() for c in header.strip().strip("|").split("|")], rows


def test_one_table_with_the_machine_above_it(table):
    out, header, rows = table
    assert out.splitlines()[0].startswith("# gpu_check --smoke device=cpu")
    assert "reference=KV_REFERENCE_REPO" in out.splitlines()[0]
    assert header == ["kind", "stage", "weights", "budget", "seconds", "peak", "ref forward s", "ref peak",
                      "our forward s", "our forward peak", "ref/ours", "note"]
    assert all(len(r) == len(header) for r in rows), rows


def test_every_stage_has_its_time_and_peak_and_the_reference_beside_its_forward(table):
    _, header, rows = table
    stages = [dict(zip(header, r)) for r in rows if r[0] == "stage"]
    assert [s["stage"] for s in stages] == STAGES
    for s in stages:
        assert NUMBER.match(s["seconds"]) and MEMORY.match(s["peak"]), s
        if s["stage"] in FORWARDS:
            for key in ("ref forward s", "our forward s", "ref/ours"):
                assert NUMBER.match(s[key]), s
            assert MEMORY.match(s["ref peak"]) and MEMORY.match(s["our forward peak"]), s
        else:
            assert s["ref forward s"] == "—", s


def test_the_pipeline_runs_unbudgeted_and_an_exhausted_budget_is_a_table_entry(table):
    _, header, rows = table
    runs = [dict(zip(header, r)) for r in rows if r[0] == "pipeline 8 fps, offload"]
    assert [(r["weights"], r["budget"]) for r in runs] == [
        ("bf16", "none"), ("bf16", "40 MB (simulated)"), ("bf16", "2 MB (simulated)"),
        ("bf16", "0.5 MB (simulated)"), ("fp8", "2 MB (simulated)"), ("fp8", "0.5 MB (simulated)")]
    assert runs[0]["stage"] == "ok" and runs[1]["stage"] == "ok"
    failed = [r for r in runs if r["stage"].startswith("OOM in ")]
    assert len(failed) == 4 and all("OutOfBudget" in r["note"] for r in failed), failed
    # the smallest budget cannot even hold the text encoder; a larger one gets further
    assert runs[3]["stage"] == "OOM in text_encoder" and runs[2]["stage"] != "OOM in text_encoder"


def test_every_lever_has_a_row_beside_the_plain_forward(table):
    _, header, rows = table
    levers = {r[1]: dict(zip(header, r)) for r in rows if r[0] == "lever"}
    assert {"attention: sdpa (default)", "torch.compile (inductor)", "streamed weights (dynamic VRAM's way)",
            "CFG split (2 CPU copies stand in)"} <= set(levers), sorted(levers)
    for name, row in levers.items():
        assert NUMBER.match(row["our forward s"]), row
        if name != "torch.compile (inductor)":  # compiled on a GPU only (the tests compile on the CPU)
            assert NUMBER.match(row["seconds"]) and NUMBER.match(row["ref/ours"]), row
            assert row["note"].startswith("max diff") and float(row["note"].split()[-1]) <= 1e-5, row


def test_step_cache_rows_give_time_counts_speed_up_and_distance_per_interval(table):
    _, header, rows = table
    cached = [dict(zip(header, r)) for r in rows if r[0] == "step cache"]
    assert [(r["stage"], r["note"].split(":")[0]) for r in cached] == [
        (stage, note) for stage in ("keyframes", "interpolation_1")
        for note in ("no cache", "interval 2", "interval 3", "interval 5")]
    note = re.compile(r"^interval \d: \d+ full \+ \d+ cached steps, \d+\.\d\dx, distance \d+\.\d{4}$")
    for r in cached:
        assert NUMBER.match(r["seconds"]) and MEMORY.match(r["peak"]), r
        assert r["note"] == "no cache" or note.match(r["note"]), r
