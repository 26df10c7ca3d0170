"""Sampler trade-off: time and distance from the reference result, per sampler and step count.

    python bench/bench_samplers.py [--stage keyframes|first_frame|interpolation] [--steps 5 10 20 50]

On the tiny random networks of ``kv_core.tiny`` (same weights, same seed, same
conditioning for every run), each stage is sampled with the reference DDPM, DDIM and
DPM-Solver++(2M) at several step counts. The distance is the RMS difference of the
resulting latents from the reference result (50-step DDPM for the first frame and the
keyframes, 10-step DDPM for interpolation), relative to the RMS of the reference; the
row "ddpm, other seed" gives the scale of seed-to-seed variation. DDPM is stochastic, so
a deterministic sampler cannot land on one DDPM sample; the second distance is to the
converged probability-flow ODE solution from the same initial noise (DPM-Solver++(2M)
with ``--ode-steps`` steps), which DDIM and DPM-Solver++ approach as steps grow.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import build_pipeline, random_condition  # noqa: E402

from kv_core.sampling.schedulers import SAMPLERS  # noqa: E402
from kv_core.stages import stage_defaults  # noqa: E402
from kv_core.stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame  # noqa: E402
from kv_core.stages.interpolation import interpolate_frames  # noqa: E402
from kv_core.stages.keyframes import generate_keyframes  # noqa: E402


def stage_runner(pipe, cond, stage, size, keyframes):
    """A function ``(sampler, steps, seed) -> latents`` for one stage, with fixed inputs."""
    with torch.inference_mode():
        latent = generate_first_frame(pipe.unet, pipe.null_embedding, cond, width=size, height=size, noise=0)
        key = encode_first_frame(pipe.movq, decode_first_frame(pipe.movq, latent), width=size, height=size)
        base = generate_keyframes(pipe.unet, pipe.null_embedding, cond, key, num_keyframes=keyframes, noise=0)

    def run(sampler, steps, seed):
        with torch.inference_mode():
            if stage == "first_frame":
                return generate_first_frame(pipe.unet, pipe.null_embedding, cond, width=size, height=size,
                                            sampler=sampler, steps=steps, noise=seed)
            if stage == "keyframes":
                return generate_keyframes(pipe.unet, pipe.null_embedding, cond, key, num_keyframes=keyframes,
                                          sampler=sampler, steps=steps, noise=seed)
            return interpolate_frames(pipe.interpolation_unet, pipe.interpolation_null_embedding, cond, base,
                                      sampler=sampler, steps=steps, noise=seed)

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", nargs="+", default=["keyframes", "interpolation"],
                    choices=["first_frame", "keyframes", "interpolation"])
    ap.add_argument("--steps", nargs="+", type=int, default=None,
                    help="step counts (default 5 10 20 50; interpolation 2 4 10 20)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--keyframes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--ode-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = build_pipeline()
    cond = random_condition(pipe.null_embedding.shape[-1])
    print(f"# tiny networks, cpu, {args.size}x{args.size}, {args.keyframes} keyframes, seed {args.seed}, "
          f"threads {torch.get_num_threads()}")
    for stage in args.stage:
        run = stage_runner(pipe, cond, stage, args.size, args.keyframes)
        defaults = stage_defaults(stage)
        ref_steps = defaults.steps
        steps_list = args.steps or ([2, 4, 10, 20] if stage == "interpolation" else [5, 10, 20, 50])
        run("ddim", 1, 0)  # warm-up
        reference = run("ddpm", ref_steps, args.seed)
        ode = run("dpmpp_2m", args.ode_steps, args.seed)

        def distance(x, to):
            return float((x - to).pow(2).mean().sqrt() / to.pow(2).mean().sqrt())

        print(f"\n## {stage} (reference: {ref_steps}-step DDPM, "
              f"{defaults.prediction_type}, {defaults.spacing})")
        print(f"| sampler | steps | seconds | distance to {ref_steps}-step DDPM | distance to ODE solution |")
        print("|---|---:|---:|---:|---:|")
        other = run("ddpm", ref_steps, args.seed + 1)
        print(f"| ddpm, other seed | {ref_steps} | - | {distance(other, reference):.4f} | {distance(other, ode):.4f} |")
        for sampler in SAMPLERS:
            for steps in steps_list:
                t0 = time.perf_counter()
                out = run(sampler, steps, args.seed)
                seconds = time.perf_counter() - t0
                print(f"| {sampler} | {steps} | {seconds:.2f} | {distance(out, reference):.4f} "
                      f"| {distance(out, ode):.4f} |", flush=True)


if __name__ == "__main__":
    main()
