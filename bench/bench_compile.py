"""torch.compile against eager for the Kandinsky Video networks, at the release's
configurations, on the CPU (or any device).

Workloads and weights as ``bench/bench_networks.py --size official --shared-weights``
(every parameter a view into one random pool, so the official configurations fit a CPU's
memory; the samplers' inputs at ``--video-side``, 64 by default so one forward fits a CPU).
For each network: eager time, compile time (wall time of the first compiled call, which
compiles, partly in inductor's worker processes, minus one eager call's time),
compiled time, the ratio eager / compiled, and the largest difference of the compiled
output from the eager one (absolute, and relative to the output's largest value). Times
are the process's CPU time (steadier than wall time on a shared machine); eager and
compiled calls alternate in the same run, best of ``--repeats``.

The compiled module is what core ``TorchCompileModel`` compiles on the pack's MODEL (the
U-Net inside its adapter; the stage nodes' ``model`` input routes their loops through it),
here the kv_core network itself so that the video MoVQ, which is not a MODEL, is measured
the same way (``decode``: the whole chunked decode of ``--decode-frames`` latent frames;
12 gives three chunks of 4, one compiled shape).

    python -m bench.bench_compile                                  # keyframes, interpolation, decode
    python -m bench.bench_compile --networks decode --backend inductor
    python -m bench.bench_compile --device cuda --video-side 512 --dtype bf16   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench.bench_networks import DTYPES, build_ours_shared, configs_for, run_ours, workloads

ROOT = Path(__file__).resolve().parents[1]

NETWORK_OF = {"keyframes": "t2v", "first_frame": "t2v", "interpolation": "interpolation", "decode": "video_movq"}


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_time(fn, device) -> float:
    t0 = time.process_time() if device.type == "cpu" else time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.process_time() if device.type == "cpu" else time.perf_counter()) - t0


def bench_one(name: str, nets: dict, inp: dict, backend: str, repeats: int, device) -> dict:
    key = NETWORK_OF[name]
    eager_nets = dict(nets)
    compiled_nets = dict(nets)
    compiled_nets[key] = torch.compile(nets[key], backend=backend, dynamic=False)
    if name == "decode":  # kv_core.movq.decode_video calls movq.decode: compile that method's module
        movq = nets[key]
        compiled = torch.compile(movq.decoder, backend=backend, dynamic=False)

        class Decoding(torch.nn.Module):  # the MoVQ with its decoder compiled, nothing else changed
            def __init__(self):
                super().__init__()
                self.inner = movq

            def decode(self, latents):
                latents = latents.to(movq._compute_dtype(latents))
                return compiled(movq.post_quant_conv(latents), latents,
                                per_item_attention_norm=movq.per_item_attention_norm)

        compiled_nets[key] = Decoding()
    with torch.inference_mode():
        eager_first = _cpu_time(lambda: run_ours(eager_nets, name, inp), device)
        first_wall = _wall(lambda: run_ours(compiled_nets, name, inp))  # compiles (also in worker processes)
        first = first_wall
        eager_times, compiled_times = [], []
        for _ in range(repeats):
            eager_times.append(_cpu_time(lambda: run_ours(eager_nets, name, inp), device))
            compiled_times.append(_cpu_time(lambda: run_ours(compiled_nets, name, inp), device))
        want = run_ours(eager_nets, name, inp).float()
        got = run_ours(compiled_nets, name, inp).float()
    eager, comp = min(eager_times), min(compiled_times)
    diff = float((got - want).abs().max())
    return {"workload": name, "backend": backend, "eager_s": round(eager, 3), "compiled_s": round(comp, 3),
            "ratio_eager_over_compiled": round(eager / comp, 3),
            "compile_wall_s": round(first - eager_first, 1),  # wall: inductor compiles in worker processes too
            "max_abs_diff": diff, "max_rel_diff": diff / max(float(want.abs().max()), 1e-30),
            "loadavg": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", default="keyframes,interpolation,decode",
                    help="comma-separated: keyframes, first_frame, interpolation, decode")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--video-side", type=int, default=64)
    ap.add_argument("--decode-frames", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pool-mib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as set)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    configs = configs_for("official")
    nets = build_ours_shared(configs, dtype, device, args.pool_mib)
    inputs = workloads("official", configs, dtype, device, video_side=args.video_side,
                       decode_frames=args.decode_frames)
    print(f"# official configs, shared weights, {args.video_side}x{args.video_side}, {args.dtype}, {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, loadavg {os.getloadavg()[0]:.2f}",
          flush=True)
    for name in [n.strip() for n in args.networks.split(",") if n.strip()]:
        print(json.dumps(bench_one(name, nets, inputs[name], args.backend, args.repeats, device)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
