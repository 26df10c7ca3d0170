"""Step caching (DeepCache, ``kv_core.sampling.step_cache``) against the uncached run, per stage.

    python -m bench.bench_step_cache                        # official configurations, CPU, 64 px
    python -m bench.bench_step_cache --mode forwards        # the same, one forward of each kind
    python -m bench.bench_step_cache --stage keyframes --intervals 3 --steps 20
    python -m bench.bench_step_cache --size tiny --seed-scale   # tiny random networks (a minute)

The official configurations with random weights, built as ``python -m bench.bench_networks
--shared-weights`` does (every parameter a view into one random pool, so the 8 GB of
U-Nets fit a CPU's memory and the kernels see the official shapes), at the small video
size the other official-configuration CPU benchmarks use (64x64 px: latent 8x8; the
release makes 512x512). Stages, as the pipeline runs them (``kv_core.stages``, fp32):

* ``keyframes``: 12 keyframes, 3 guidance rows each, the release's 50 DDPM steps;
* ``interpolation``: 12 -> 45 frames (11 groups x 2 rows), 10 DDPM steps.

For each stage, in one run on the same weights, inputs and seed: no cache, then intervals
2, 3 and 5 (``--intervals``) with ``--branch`` and ``--start-step``. Printed per row:
stage time (wall clock, and the process's CPU time, which a machine shared with other
work disturbs less; one thread by default) and speed-up against no cache (from the CPU
times); full and cached steps (counted by the cache);
network FLOPs of the stage and the fraction saved (``torch.utils.flop_counter`` counts one
full and one cached forward, times the counted forwards of each kind); the distance of the
final latent to the uncached one (RMS of the difference / RMS of the uncached latent) with
the same measure between two seeds of the uncached run as scale.

``--mode forwards`` (for a machine too busy or too slow for whole stages at the official
sizes: one keyframe forward takes about 10-20 s of CPU time there) times one full and one
cached forward of each stage's U-Net (CPU time, best of ``--repeats``) on the benchmark
workloads of ``bench/bench_networks.py`` and gives each interval's stage time as the
counted forwards of its plan at the release's step count times those forward times
(the loop's own work beside the network is well under 1 % of a step); ``--mode stages``
on the tiny networks prints the same estimate beside the measured stage time, which shows
how well it holds. No distance in this mode (it needs whole stages).

Random weights say nothing about how the videos look: the distance shows how far the
cache moves the sampler's result on these networks, not what a viewer would see.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import bench_networks as bn
from kv_core.conditioning import TextCondition
from kv_core.stages import Hooks
from kv_core.stages.interpolation import interpolate_frames
from kv_core.stages.keyframes import generate_keyframes
from kv_core.sampling.step_cache import DEFAULT_START_STEP, StepCache, StepCacheSettings

ROOT = Path(__file__).resolve().parents[1]

STAGE_STEPS = {"keyframes": 50, "interpolation": 10}


def build(size: str, pool_mib: int):
    """The two U-Nets (fp32, CPU) and their null embeddings."""
    configs = bn.configs_for(size)
    if size == "official":
        nets = bn.build_ours_shared(configs, torch.float32, "cpu", pool_mib=pool_mib)
    else:
        nets = bn.build_ours(configs, torch.float32, "cpu")
    g = torch.Generator().manual_seed(3)
    nulls = {k: torch.randn(configs[k]["context_dim"], generator=g) for k in ("t2v", "interpolation")}
    return nets, nulls, configs


def condition(dim: int, length: int = 32, tokens: int = 20) -> TextCondition:
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, length, dtype=torch.int64)
    mask[:, :tokens] = 1
    return TextCondition(torch.randn(1, length, dim, generator=g), mask)


def stage_runner(stage: str, nets, nulls, configs, side: int, keyframes: int, steps: int):
    """``run(step_cache, seed, trace) -> latent`` for one stage with fixed inputs."""
    latent_side = side // 8
    g = torch.Generator().manual_seed(2)
    if stage == "keyframes":
        cond = condition(configs["t2v"]["context_dim"])
        key = torch.randn(4, latent_side, latent_side, generator=g)

        def run(step_cache, seed, trace):
            return generate_keyframes(nets["t2v"], nulls["t2v"], cond, key, num_keyframes=keyframes, steps=steps,
                                      noise=seed, step_cache=step_cache, hooks=Hooks(trace=trace))
    else:
        cond = condition(configs["interpolation"]["context_dim"])
        frames = torch.randn(keyframes, 4, latent_side, latent_side, generator=g)

        def run(step_cache, seed, trace):
            return interpolate_frames(nets["interpolation"], nulls["interpolation"], cond, frames, pass_index=1,
                                      steps=steps, noise=seed, step_cache=step_cache, hooks=Hooks(trace=trace))
    return run


def forward_runner(stage: str, nets, configs, side: int, keyframes: int):
    """``forward(call)``: one forward of the stage's U-Net on the benchmark workload
    (12 keyframes x 3 rows, or 11 groups x 2 rows), with ``step_cache=call``; and its rows."""
    inp = bn.workloads("official" if configs["t2v"]["model_channels"] == 384 else "tiny", configs, torch.float32,
                       "cpu", video_side=side)[stage]
    if stage == "keyframes" and keyframes != 12:
        raise ValueError("single forwards are measured on the benchmark workload of 12 keyframes")

    def forward(call):
        with torch.inference_mode():
            if stage == "keyframes":
                return nets["t2v"](inp["x"], inp["time"], inp["context"], inp["context_mask"], mode="video",
                                   num_frames=inp["num_frames"], temporal_embed=inp["temporal_embed"],
                                   noise_aug_time=inp["noise_aug_time"], motion_score=inp["motion_score"],
                                   step_cache=call)
            return nets["interpolation"](inp["x"], inp["time"], inp["context"], inp["context_mask"],
                                         num_groups=inp["num_groups"], perturbation_time=inp["perturbation_time"],
                                         skip_frames=inp["skip_frames"], temporal_mask=inp["temporal_mask"],
                                         step_cache=call)

    return forward, inp["x"].shape[0]


def forward_costs(stage: str, nets, configs, side: int, keyframes: int, branch: int, repeats: int = 0):
    """FLOPs (counted) and, with ``repeats``, CPU seconds (best of ``repeats``) of one full
    and one cached forward: ``(flops_full, flops_cached, time_full, time_cached)``."""
    forward, n = forward_runner(stage, nets, configs, side, keyframes)
    cache = StepCache(StepCacheSettings(interval=2, branch=branch, start_step=0), 2)
    cache.begin(0)
    with FlopCounterMode(display=False) as full:
        forward(cache.call(n=n))  # keeps the features the cached forwards reuse
    cache.begin(1)
    with FlopCounterMode(display=False) as cached:
        forward(cache.call(n=n))
    times = {True: [], False: []}
    for _ in range(repeats):
        for is_full in (True, False):
            c = time.process_time()
            forward(None if is_full else cache.call(n=n))
            times[is_full].append(time.process_time() - c)
    best = [min(times[k]) if times[k] else float("nan") for k in (True, False)]
    return full.get_total_flops(), cached.get_total_flops(), best[0], best[1]


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["official", "tiny"], default="official")
    ap.add_argument("--mode", choices=["stages", "forwards"], default="stages")
    ap.add_argument("--repeats", type=int, default=2, help="forwards mode: timings per forward kind (best)")
    ap.add_argument("--stage", nargs="+", choices=list(STAGE_STEPS), default=list(STAGE_STEPS))
    ap.add_argument("--intervals", nargs="+", type=int, default=[2, 3, 5])
    ap.add_argument("--branch", type=int, default=0, help="skip branch recomputed on cached steps (default 0)")
    ap.add_argument("--start-step", type=int, default=DEFAULT_START_STEP,
                    help=f"first step that may be cached (default {DEFAULT_START_STEP})")
    ap.add_argument("--steps", type=int, default=None, help="steps of every stage (default the release's: 50, 10)")
    ap.add_argument("--video-side", type=int, default=64, help="video side in pixels (default 64)")
    ap.add_argument("--keyframes", type=int, default=12)
    ap.add_argument("--pool-mib", type=int, default=256)
    ap.add_argument("--seed-scale", action="store_true",
                    help="also run the uncached stage with another seed: the distance between two seeds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    nets, nulls, configs = build(args.size, args.pool_mib)
    load = os.getloadavg()
    print(f"# step cache benchmark: size={args.size} video={args.video_side}px keyframes={args.keyframes} "
          f"branch={args.branch} start_step={args.start_step} fp32 cpu threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    print(f"# machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.mode == "forwards":
        forwards_table(args, nets, configs)
    else:
        stages_table(args, nets, nulls, configs)
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def forwards_table(args, nets, configs):
    print("stage | interval | steps full+cached | estimated cpu s | speed-up | GFLOP | FLOPs saved")
    for stage in args.stage:
        steps = args.steps or STAGE_STEPS[stage]
        ff, fc, tf, tc = forward_costs(stage, nets, configs, args.video_side, args.keyframes, args.branch,
                                       args.repeats)
        print(f"# {stage}: one forward {ff / 1e9:.1f} GFLOP / {tf:.2f} s cpu full, {fc / 1e9:.1f} GFLOP / "
              f"{tc:.2f} s cpu cached (FLOPs {fc / ff:.1%}, time {tc / tf:.1%})", flush=True)
        print(f"{stage} | none | {steps}+0 | {steps * tf:.1f} | 1.00 | {steps * ff / 1e9:.1f} | 0%")
        for interval in args.intervals:
            settings = StepCacheSettings(interval=interval, branch=args.branch, start_step=args.start_step)
            n_full, n_cached = settings.counts(steps)
            t = n_full * tf + n_cached * tc
            flops = n_full * ff + n_cached * fc
            print(f"{stage} | {interval} | {n_full}+{n_cached} | {t:.1f} | {steps * tf / t:.2f} | "
                  f"{flops / 1e9:.1f} | {1 - flops / (steps * ff):.0%}", flush=True)


def stages_table(args, nets, nulls, configs):
    print("stage | interval | steps full+cached | wall s | cpu s | speed-up | estimated | GFLOP | FLOPs saved | "
          "distance to uncached")
    for stage in args.stage:
        steps = args.steps or STAGE_STEPS[stage]
        run = stage_runner(stage, nets, nulls, configs, args.video_side, args.keyframes, steps)
        flops_full, flops_cached, t_full, t_cached = forward_costs(
            stage, nets, configs, args.video_side, args.keyframes, args.branch,
            args.repeats if args.keyframes == 12 else 0)
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            base = run(None, 0, None)
        base_wall, base_time = time.perf_counter() - t, time.process_time() - c
        base_flops = flops_full * steps
        print(f"{stage} | none | {steps}+0 | {base_wall:.1f} | {base_time:.1f} | 1.00 | 1.00 | "
              f"{base_flops / 1e9:.1f} | 0% | 0", flush=True)
        for interval in args.intervals:
            settings = StepCacheSettings(interval=interval, branch=args.branch, start_step=args.start_step)
            trace: dict = {}
            t, c = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                out = run(settings, 0, trace)
            wall, elapsed = time.perf_counter() - t, time.process_time() - c
            counts = trace["step_cache"]
            flops = counts["full_calls"] * flops_full + counts["cached_calls"] * flops_cached
            estimate = steps * t_full / (counts["full_calls"] * t_full + counts["cached_calls"] * t_cached)
            print(f"{stage} | {interval} | {counts['full_steps']}+{counts['cached_steps']} | {wall:.1f} | "
                  f"{elapsed:.1f} | {base_time / elapsed:.2f} | {estimate:.2f} | {flops / 1e9:.1f} | "
                  f"{1 - flops / base_flops:.0%} | {rel_rms(out, base):.4f}", flush=True)
        if args.seed_scale:
            with torch.inference_mode():
                other = run(None, 1, None)
            print(f"{stage} | (seed 1, no cache) | | | | | | | | {rel_rms(other, base):.4f}", flush=True)
        print(f"# {stage}: one forward {flops_full / 1e9:.2f} GFLOP / {t_full:.3f} s cpu full, "
              f"{flops_cached / 1e9:.2f} GFLOP / {t_cached:.3f} s cpu cached", flush=True)


if __name__ == "__main__":
    main()
