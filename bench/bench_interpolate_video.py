"""Time and peak memory of interpolating a long input video, one batch against windows.

    python bench/bench_interpolate_video.py                       # 100 frames, tiny networks, CPU
    python bench/bench_interpolate_video.py --frames 200 --size 256 --windows 0 8 16 32
    python bench/bench_interpolate_video.py --full --device cuda --dtype bfloat16 --size 512

One x4 pass (``kv_core.stages.interpolation.interpolate_frames``, DDPM, ``--steps``) over the image-MoVQ
latents of ``--frames`` random frames at ``--size`` pixels, once in one batch (window 0, as the
release) and once per ``--windows`` value (overlap: a quarter of the window, kv_core's
default). For each: wall time, peak memory (CUDA allocator peak on a GPU; on the CPU the
process's peak resident set, VmHWM, reset before each run, minus the resident set before
it) and the difference to the one-batch result (max and relative RMS over all frames).
Random weights: the pixels mean nothing, the numbers are about cost and agreement.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import PeakMemory, build_pipeline  # noqa: E402
from kv_core.conditioning import null_condition  # noqa: E402
from kv_core.stages.interpolation import interpolate_frames  # noqa: E402
from kv_core.stages.windows import default_overlap  # noqa: E402
from kv_core.stages import Hooks  # noqa: E402


def run_one(args, window: int, out_path: str) -> None:
    """One run in this process (a fresh one per window, so that the peak resident set is this
    run's alone): prints ``seconds peak_bytes`` and saves the result to ``out_path``."""
    dtype = getattr(torch, args.dtype)
    pipe = build_pipeline(full=args.full, device=args.device, dtype=dtype)
    unet, null = pipe.interpolation_unet, pipe.interpolation_null_embedding
    latent = args.size // 8
    frames = torch.randn(args.frames, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    cond = null_condition(null)
    with PeakMemory(args.device) as peak:
        out = interpolate_frames(unet, null, cond, frames, skip_frames=1, steps=args.steps, noise=0,
                                 window=window or None, hooks=Hooks(device=args.device, dtype=dtype))
    torch.save(out.float().cpu(), out_path)
    print(peak.seconds, peak.peak - peak.base)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=10, help="interpolation steps (10 in the release)")
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 32], help="window sizes in groups")
    parser.add_argument("--full", action="store_true", help="official network sizes (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--one", nargs=2, metavar=("WINDOW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args, int(args.one[0]), args.one[1])
        return 0

    print(f"{args.frames} frames at {args.size}x{args.size} ({args.frames - 1} groups, latent "
          f"{args.size // 8}x{args.size // 8}), {args.steps} steps, {'official' if args.full else 'tiny'} "
          f"interpolation U-Net, {args.device} {args.dtype}, one process per run")
    print(f"{'window':>8} {'overlap':>8} {'seconds':>9} {'peak MiB':>9} {'max diff':>9} {'rel. RMS':>9}")
    reference = None
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    with tempfile.TemporaryDirectory() as tmp:
        for window in [0, *args.windows]:
            out_path = str(Path(tmp) / f"{window}.pt")
            done = subprocess.run([sys.executable, __file__, *passed, "--one", str(window), out_path],
                                  check=True, capture_output=True, text=True)
            seconds, peak = done.stdout.split()[-2:]
            out = torch.load(out_path)
            if reference is None:
                reference = out
            diff = out - reference
            rms = float(diff.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
            overlap = default_overlap(window) if window else 0
            print(f"{window or 'all':>8} {overlap:>8} {float(seconds):>9.2f} {int(peak) / 2 ** 20:>9.0f} "
                  f"{float(diff.abs().max()):>9.4f} {rms:>9.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
