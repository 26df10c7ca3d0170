"""Per-stage time and peak memory of the Kandinsky Video pipeline.

    python bench/bench_pipeline.py                      # tiny random networks, CPU
    python bench/bench_pipeline.py --fps high --keyframes 12 --size 128
    python bench/bench_pipeline.py --full --device cuda --dtype float16   # official sizes (GPU)

Tiny mode builds the networks of ``kv_core.tiny`` (random weights); ``--full`` builds the
official configurations with random weights (about 9 GB of fp16 U-Nets; no text encoder:
a random 4096-wide context stands in for the prompt). Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident set (VmHWM,
reset before each stage) on the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kv_core.checkpoints import (INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ, build_network,  # noqa: E402
                                 official_config)
from kv_core.conditioning import TextCondition  # noqa: E402
from kv_core.pipeline import KandinskyVideoPipeline  # noqa: E402
from kv_core.stages.decode import decode_frames  # noqa: E402
from kv_core.stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame  # noqa: E402
from kv_core.stages.interpolation import interpolate_frames  # noqa: E402
from kv_core.stages.keyframes import generate_keyframes  # noqa: E402
from kv_core.tiny import randomize_, tiny_configs  # noqa: E402


def build_pipeline(*, full: bool = False, device="cpu", dtype=torch.float32, seed: int = 0) -> KandinskyVideoPipeline:
    """Random-weight pipeline: the tiny release's networks, or the official sizes."""
    g = torch.Generator().manual_seed(seed)
    if full:
        configs = {s: official_config(n) for s, n in (("t2v", KEYFRAME_UNET), ("interpolation", INTERPOLATION_UNET),
                                                       ("image_movq", MOVQ), ("video_movq", VIDEO_MOVQ))}
    else:
        configs = {k: v["configs"] for k, v in tiny_configs().items() if "configs" in v}

    def net(kind, section, net_dtype):
        module = build_network(kind, configs[section], device="cpu" if not full else "meta", dtype=torch.float32)
        if full:
            module = module.to_empty(device="cpu")
        return randomize_(module, g).to(device=device, dtype=net_dtype).eval()

    dim = configs["t2v"]["context_dim"]
    return KandinskyVideoPipeline(
        unet=net(KEYFRAME_UNET, "t2v", dtype), null_embedding=torch.randn(dim, generator=g).to(device),
        interpolation_unet=net(INTERPOLATION_UNET, "interpolation", dtype),
        interpolation_null_embedding=torch.randn(dim, generator=g).to(device),
        movq=net(MOVQ, "image_movq", torch.float32), video_movq=net(VIDEO_MOVQ, "video_movq", torch.float32))


def random_condition(dim: int, length: int = 12, seed: int = 1) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, length, dtype=torch.int64)
    mask[:, :length - 1] = 1
    return TextCondition(torch.randn(1, length, dim, generator=g), mask)


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the CPU process's VmHWM."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.base = _vm("VmRSS")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _vm("VmHWM")
        self.seconds = time.perf_counter() - self.start


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def run_stages(pipe, cond, *, width, height, keyframes, fps_passes, device, steps=None, sampler="ddpm", seed=0):
    rows = []

    def stage(name, fn):
        with PeakMemory(device) as m:
            out = fn()
        rows.append((name, m.seconds, m.peak, m.base))
        return out

    kw = dict(sampler=sampler, steps=steps, noise=seed)
    with torch.inference_mode():
        latent = stage("first_frame", lambda: generate_first_frame(pipe.unet, pipe.null_embedding, cond, width=width,
                                                                     height=height, **kw))
        image = stage("decode_first_frame", lambda: decode_first_frame(pipe.movq, latent))
        key = stage("encode_first_frame", lambda: encode_first_frame(pipe.movq, image, width=width, height=height))
        frames = stage("keyframes", lambda: generate_keyframes(pipe.unet, pipe.null_embedding, cond, key,
                                                               num_keyframes=keyframes, **kw))
        for p in range(1, fps_passes + 1):
            frames = stage(f"interpolation_{p}", lambda: interpolate_frames(
                pipe.interpolation_unet, pipe.interpolation_null_embedding, cond, frames, pass_index=p,
                sampler=sampler, steps=None if steps is None else max(1, steps // 5), noise=seed))
        stage("decode_video", lambda: decode_frames(pipe.video_movq, frames))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="official network sizes (needs a large GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="U-Net dtype")
    ap.add_argument("--size", type=int, default=None, help="video width = height (default 64 tiny, 512 full)")
    ap.add_argument("--keyframes", type=int, default=None, help="default 4 tiny, 12 full")
    ap.add_argument("--fps", default="high", choices=["low", "medium", "high"])
    ap.add_argument("--sampler", default="ddpm")
    ap.add_argument("--steps", type=int, default=None, help="first frame / keyframe steps (interpolation: / 5)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (512 if args.full else 64)
    keyframes = args.keyframes or (12 if args.full else 4)
    passes = {"low": 0, "medium": 1, "high": 2}[args.fps]

    t0 = time.perf_counter()
    pipe = build_pipeline(full=args.full, device=args.device, dtype=getattr(torch, args.dtype))
    build = time.perf_counter() - t0
    cond = random_condition(pipe.null_embedding.shape[-1])
    # warm-up: one short run so first-call costs (allocator, kernels) do not count
    run_stages(pipe, cond, width=size, height=size, keyframes=2, fps_passes=0, device=args.device, steps=1,
               sampler="ddim")
    rows = run_stages(pipe, cond, width=size, height=size, keyframes=keyframes, fps_passes=passes,
                      device=args.device, steps=args.steps, sampler=args.sampler)
    what = "official sizes" if args.full else "tiny networks"
    print(f"# {what}, {args.device}, U-Net {args.dtype}, {size}x{size}, {keyframes} keyframes, fps {args.fps}, "
          f"sampler {args.sampler}, steps {args.steps or 'reference'}, threads {torch.get_num_threads()}; "
          f"networks built in {build:.1f} s")
    mem = "peak CUDA allocated" if torch.device(args.device).type == "cuda" else "peak RSS (process)"
    print(f"| stage | seconds | {mem} MiB | above the stage's start MiB |")
    print("|---|---:|---:|---:|")
    for name, seconds, peak, base in rows:
        print(f"| {name} | {seconds:.2f} | {peak / 2**20:.0f} | {(peak - base) / 2**20:.0f} |")
    print(f"| total | {sum(r[1] for r in rows):.2f} | {max(r[2] for r in rows) / 2**20:.0f} | |")


if __name__ == "__main__":
    main()
