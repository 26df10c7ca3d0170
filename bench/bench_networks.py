"""Forward time and peak memory of every Kandinsky Video 1.1 network.

Workloads (one forward each, as the pipeline runs them):

=============  =====================================================================
keyframes      keyframe U-Net, video mode: 12 frames x 3 guidance passes (batch 36)
first_frame    keyframe U-Net, image mode: 2 images (cond + uncond) at twice the size
interpolation  interpolation U-Net: 11 groups x 2 passes (batch 22)
decode         video MoVQ: 45 latent frames, decoded in the reference's chunks
=============  =====================================================================

Sizes: ``tiny`` uses the small configurations of a golden folder (``KV_GOLDEN_DIR``,
default ``tests/data/golden``) at a 128x128 video, and runs anywhere; ``official`` uses the
release configurations with random weights at 512x512 (a GPU with ~40 GB is needed);
``--video-side`` sets another video size (a multiple of 64; e.g. 64 so that one forward of
the official configurations fits a CPU).

``--shared-weights`` gives every parameter of our networks a contiguous, 64-byte aligned
view into ONE pool of random values (``--pool-mib``, default 256 MiB) and hands the very
same tensors to the reference (``load_state_dict(assign=True)``): the official
configurations then need a few hundred MiB of weights instead of ~34 GB (fp32), so both
implementations fit in a CPU's memory and are timed in the same run on identical weights.
The kernels see the official shapes and layouts; only the values repeat across layers.

When ``KV_REFERENCE_REPO`` points at a checkout of ``ai-forever/KandinskyVideo``, the
reference modules are loaded from it, given the same weights and inputs, timed in the
same run, and the ratio (reference / ours) and the largest output difference are printed.

    python bench/bench_networks.py                       # tiny, CPU, fp32 and bf16
    python bench/bench_networks.py --size official --device cuda --dtype bf16
    KV_REFERENCE_REPO=/path/KandinskyVideo python bench/bench_networks.py --size official \
        --shared-weights --video-side 64 --dtype fp32 --device cpu     # both fit a CPU
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import threading
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kv_core.models import movq as kv_movq, unet as kv_unet, unet_interpolation as kv_interp  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- configurations and inputs ---------------------------------------------------------

def configs_for(size: str) -> dict:
    if size == "official":
        return {
            "t2v": dict(kv_unet.OFFICIAL_CONFIG),
            "interpolation": dict(kv_interp.OFFICIAL_CONFIG),
            "video_movq": dict(kv_movq.OFFICIAL_VIDEO_CONFIG),
        }
    golden = Path(os.environ.get("KV_GOLDEN_DIR", ROOT / "tests" / "data" / "golden"))
    raw = json.loads((golden / "configs.json").read_text())
    return {k: raw[k]["configs"] for k in ("t2v", "interpolation", "video_movq")}


def workloads(size: str, configs: dict, dtype, device, seed: int = 0, video_side: int | None = None,
              decode_frames: int = 45) -> dict:
    """Inputs of each workload; latent side = video side / 8 (default 512 px official, 128 px tiny)."""
    g = torch.Generator().manual_seed(seed)
    side = (video_side or (512 if size == "official" else 128)) // 8
    text_len = 32                                    # a typical prompt: ~30 tokens kept

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    def ctx(copies, dim):
        """The samplers' guidance contexts: the prompt's (20 tokens) and the unconditional one
        (the null embedding: 1 token), each repeated over the rows of its passes; ``copies``
        lists the rows of each pass, prompt first."""
        prompt, null = randn(1, text_len, dim), randn(1, text_len, dim)
        pmask = torch.zeros(1, text_len, dtype=torch.bool)
        pmask[:, :20] = True
        nmask = torch.zeros(1, text_len, dtype=torch.bool)
        nmask[:, :1] = True
        parts = [(prompt, pmask) if i == 0 else (null, nmask) for i in range(len(copies))]
        context = torch.cat([c.expand(n, -1, -1) for (c, _), n in zip(parts, copies)])
        mask = torch.cat([m.expand(n, -1) for (_, m), n in zip(parts, copies)])
        return context, mask.to(device)

    out = {}
    d = configs["t2v"]["context_dim"]
    frames = 12
    c, m = ctx([frames] * 3, d)
    out["keyframes"] = dict(
        x=randn(3 * frames, configs["t2v"].get("num_channels", 9), side, side),
        time=torch.full((3 * frames,), 500.0, device=device),
        context=c, context_mask=m,
        temporal_embed=torch.arange(frames, dtype=torch.float32).repeat(3).to(device),
        num_frames=frames,
        noise_aug_time=torch.full((3 * frames,), 20, dtype=torch.int32, device=device),
        motion_score=torch.full((3 * frames,), 10, dtype=torch.int32, device=device),
    )
    c, m = ctx([1, 1], d)
    out["first_frame"] = dict(
        x=randn(2, configs["t2v"].get("num_channels", 9), 2 * side, 2 * side),
        time=torch.full((2,), 500.0, device=device), context=c, context_mask=m,
    )
    groups = 11
    d = configs["interpolation"]["context_dim"]
    c, m = ctx([groups, groups], d)
    out["interpolation"] = dict(
        x=randn(2 * groups, configs["interpolation"].get("num_channels", 20), side, side),
        time=torch.full((2 * groups,), 500, dtype=torch.int64, device=device),
        context=c, context_mask=m, num_groups=groups,
        perturbation_time=torch.zeros(2 * groups, dtype=torch.int32, device=device),
        skip_frames=torch.full((2 * groups,), 3, dtype=torch.int32, device=device),
        temporal_mask=torch.cat([torch.ones(groups), torch.zeros(groups)]).to(device=device, dtype=dtype),
    )
    out["decode"] = dict(latents=randn(decode_frames, 4, side, side))
    return out


# --- our networks ----------------------------------------------------------------------

def pooled_(net, pool: torch.Tensor, generator: torch.Generator):
    """Make every parameter of the meta-built ``net`` a contiguous view of ``pool`` at a random
    64-byte aligned offset (floating buffers: zeros). Returns ``net``."""
    align = max(1, 64 // pool.element_size())
    for module in net.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.numel() > pool.numel():
                raise ValueError(f"--pool-mib too small for a tensor of {p.numel()} values")
            start = int(torch.randint(0, (pool.numel() - p.numel()) // align + 1, (1,), generator=generator)) * align
            view = pool[start:start + p.numel()].view(p.shape)
            setattr(module, name, torch.nn.Parameter(view, requires_grad=False))
        for name, b in list(module.named_buffers(recurse=False)):
            module._buffers[name] = torch.zeros(b.shape, dtype=b.dtype, device=pool.device)
    return net.eval()


def build_ours_shared(configs: dict, dtype, device, pool_mib: int = 256) -> dict:
    """Our networks at ``configs`` with every weight a view of one random pool (see the docstring)."""
    g = torch.Generator().manual_seed(1)
    numel = pool_mib * 2**20 // torch.empty((), dtype=dtype).element_size()
    pool = (torch.randn(numel, generator=g) * 0.02).to(device=device, dtype=dtype)

    def make(cls, cfg):
        with torch.device("meta"):
            net = cls(**cfg, dtype=dtype)
        return pooled_(net, pool, g)

    return {
        "t2v": make(kv_unet.KeyframeUNet, configs["t2v"]),
        "interpolation": make(kv_interp.InterpolationUNet, configs["interpolation"]),
        "video_movq": make(kv_movq.MoVQ, configs["video_movq"]),
    }


def build_ours(configs: dict, dtype, device) -> dict:
    def make(cls, cfg):
        with torch.device("meta"):
            net = cls(**cfg)
        net = net.to_empty(device=device)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.device))
            for b in net.buffers():
                if b.is_floating_point():
                    b.zero_()
        return net.to(dtype).eval()

    return {
        "t2v": make(kv_unet.KeyframeUNet, configs["t2v"]),
        "interpolation": make(kv_interp.InterpolationUNet, configs["interpolation"]),
        "video_movq": make(kv_movq.MoVQ, configs["video_movq"]),
    }


def run_ours(nets: dict, name: str, inp: dict):
    if name == "keyframes":
        return nets["t2v"](inp["x"], inp["time"], inp["context"], inp["context_mask"], mode="video",
                           num_frames=inp["num_frames"], temporal_embed=inp["temporal_embed"],
                           noise_aug_time=inp["noise_aug_time"], motion_score=inp["motion_score"])
    if name == "first_frame":
        return nets["t2v"](inp["x"], inp["time"], inp["context"], inp["context_mask"], mode="image")
    if name == "interpolation":
        return nets["interpolation"](inp["x"], inp["time"], inp["context"], inp["context_mask"],
                                     num_groups=inp["num_groups"], perturbation_time=inp["perturbation_time"],
                                     skip_frames=inp["skip_frames"], temporal_mask=inp["temporal_mask"])
    if name == "decode":
        return kv_movq.decode_video(nets["video_movq"], inp["latents"])
    raise KeyError(name)


# --- the reference, loaded side by side from KV_REFERENCE_REPO --------------------------

def load_reference(repo: Path):
    """Import the reference network modules without its package __init__ (which pulls in
    the hub, diffusers, omegaconf and skimage that the networks themselves do not need)."""
    pkg_dir = repo / "kandinsky_video"
    root = types.ModuleType("kvref")
    root.__path__ = [str(pkg_dir)]
    sys.modules["kvref"] = root
    utils = types.ModuleType("kvref.utils")        # movq.py only needs utils.freeze
    utils.freeze = lambda m: m.eval().requires_grad_(False)
    sys.modules["kvref.utils"] = utils
    model = types.ModuleType("kvref.model")
    model.__path__ = [str(pkg_dir / "model")]
    sys.modules["kvref.model"] = model

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    load("kvref.model.utils", pkg_dir / "model" / "utils.py")
    load("kvref.model.nn", pkg_dir / "model" / "nn.py")
    return types.SimpleNamespace(
        unet=load("kvref.model.unet", pkg_dir / "model" / "unet.py"),
        interp=load("kvref.model.unet_interpolation", pkg_dir / "model" / "unet_interpolation.py"),
        movq=load("kvref.movq", pkg_dir / "movq.py"),
    )


def build_reference(ref, configs: dict, ours: dict, dtype, device, shared: bool = False) -> dict:
    def adopt(net, src):  # fp32 weights: autocast gives the reference its reduced precision
        net.load_state_dict({k: v.float() for k, v in src.state_dict().items()})
        return net.to(device=device).eval()

    with torch.device("meta"):
        t2v = ref.unet.UNet(**configs["t2v"])
        interp = ref.interp.UNet(**configs["interpolation"])
        movq = ref.movq.MoVQ(configs["video_movq"])
    if shared:  # the very tensors of ours (fp32 runs: no copy at all)
        def share(net, src):
            net.load_state_dict({k: v if dtype == torch.float32 else v.float()
                                 for k, v in src.state_dict().items()}, assign=True)
            for m in net.modules():  # non-persistent buffers the state dict does not carry
                for name, b in list(m.named_buffers(recurse=False)):
                    if b.is_meta:
                        raise RuntimeError(f"reference buffer {name} is not in our state dict")
            return net.requires_grad_(False).eval()
        return {"t2v": share(t2v, ours["t2v"]), "interpolation": share(interp, ours["interpolation"]),
                "video_movq": share(movq, ours["video_movq"])}
    return {
        "t2v": adopt(t2v.to_empty(device="cpu"), ours["t2v"]),
        "interpolation": adopt(interp.to_empty(device="cpu"), ours["interpolation"]),
        "video_movq": adopt(movq.to_empty(device="cpu"), ours["video_movq"]),
    }


def run_reference(nets: dict, name: str, inp: dict):
    if name == "keyframes":
        return nets["t2v"](inp["x"], inp["time"], inp["context"], inp["context_mask"], inp["temporal_embed"],
                           inp["num_frames"], inp["noise_aug_time"], inp["motion_score"])
    if name == "first_frame":
        return nets["t2v"](inp["x"], inp["time"], inp["context"], inp["context_mask"])
    if name == "interpolation":
        return nets["interpolation"](inp["x"], inp["time"], inp["context"], inp["context_mask"],
                                     num_predicted_groups=inp["num_groups"],
                                     perturbation_time=inp["perturbation_time"],
                                     skip_frames=inp["skip_frames"], temporal_mask=inp["temporal_mask"])
    if name == "decode":  # the reference pipeline's decode_video: chunk(N // 4), decode, map to [0, 1]
        chunks = inp["latents"].chunk(inp["latents"].shape[0] // 4)
        video = torch.cat([nets["video_movq"].decode(c) for c in chunks])
        return torch.clip((video + 1.0) / 2.0, 0.0, 1.0)
    raise KeyError(name)


# --- measuring -------------------------------------------------------------------------

class RssPeak:
    """Peak growth of this process's resident memory while the block runs (CPU runs):
    a thread samples /proc/self/statm every millisecond."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.growth = self.peak - self.base


def measure(fn, device, repeats: int):
    """Best-of-``repeats`` wall time (after one warm-up) and the peak memory one call adds:
    CUDA allocator peak on a GPU, growth of the resident set on the CPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with RssPeak() as rss:
            out = fn()
        peak = rss.growth
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, min(times) if times else float("nan"), peak


def _timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def measure_pair(fn_ours, fn_ref, device, repeats: int):
    """Both implementations timed in the same run, alternating (ours, ref, ref, ours, ...)
    so a change of machine load hits both alike. Returns ``(out, ref_out, times, peaks)``
    with ``times = {"ours": (best wall, best cpu), "ref": ...}`` (best = minimum over
    ``repeats``) and the peak memory of each warm-up call (see :func:`measure`)."""
    out, _, peak = measure(fn_ours, device, 0)
    rout, _, rpeak = measure(fn_ref, device, 0)
    runs = {"ours": [], "ref": []}
    fns = {"ours": fn_ours, "ref": fn_ref}
    for i in range(repeats):
        for name in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
            runs[name].append(_timed(fns[name], device))
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
    return out, rout, best, (peak, rpeak)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "official"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), action="append",
                    help="repeatable; default fp32 and bf16 (tiny) or bf16 (official)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", action="append", choices=["keyframes", "first_frame", "interpolation", "decode"])
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    ap.add_argument("--video-side", type=int, help="video side in pixels (multiple of 64; default "
                    "512 official, 128 tiny)")
    ap.add_argument("--shared-weights", action="store_true",
                    help="one random pool of weights shared by every layer and by the reference")
    ap.add_argument("--pool-mib", type=int, default=256)
    ap.add_argument("--decode-frames", type=int, default=45, help="latent frames decoded (45: 8 fps video)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtypes = args.dtype or (["bf16"] if args.size == "official" else ["fp32", "bf16"])
    ref_repo = os.environ.get("KV_REFERENCE_REPO")
    ref = load_reference(Path(ref_repo)) if ref_repo else None
    configs = configs_for(args.size)
    names = args.only or ["keyframes", "first_frame", "interpolation", "decode"]
    torch.set_grad_enabled(False)

    rows = []
    print(f"# networks benchmark: size={args.size} device={device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} video={args.video_side or (512 if args.size == 'official' else 128)}px"
          f"{' shared-weights' if args.shared_weights else ''} loadavg={os.getloadavg()[0]:.2f}"
          + (f" reference={ref_repo}" if ref else ""))
    print(f"{'workload':<14}{'dtype':<6}{'ours ms':>10}{'peak MiB':>10}" +
          (f"{'ref ms':>10}{'ref MiB':>10}{'ref/ours':>9}{'max|diff|':>11}{'ours cpu':>10}{'ref cpu':>10}"
           f"{'cpu ratio':>10}{'load':>6}" if ref else ""))
    for dname in dtypes:
        dtype = DTYPES[dname]
        ours = (build_ours_shared(configs, dtype, device, args.pool_mib) if args.shared_weights
                else build_ours(configs, dtype, device))
        refs = build_reference(ref, configs, ours, dtype, device, shared=args.shared_weights) if ref else None
        inputs = workloads(args.size, configs, dtype, device, video_side=args.video_side,
                           decode_frames=args.decode_frames)
        for name in names:
            inp = inputs[name]
            if refs:
                # the reference computes reduced precision under autocast, as the release does
                def ref_call():
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        return run_reference(refs, name, inp)

                out, rout, best, (peak, rpeak) = measure_pair(lambda: run_ours(ours, name, inp), ref_call,
                                                              device, args.repeats)
                (t, tc), (rt, rtc) = best["ours"], best["ref"]
                diff = float((out.float() - rout.float()).abs().max())
                row = {"workload": name, "dtype": dname, "ours_s": t, "ours_peak_bytes": peak, "ref_s": rt,
                       "ref_peak_bytes": rpeak, "ratio": rt / t, "max_abs_diff": diff, "ours_cpu_s": tc,
                       "ref_cpu_s": rtc, "cpu_ratio": rtc / tc, "loadavg": os.getloadavg()[0]}
                line = (f"{name:<14}{dname:<6}{t * 1e3:>10.1f}{peak / 2**20:>10.0f}{rt * 1e3:>10.1f}"
                        f"{rpeak / 2**20:>10.0f}{rt / t:>9.2f}{diff:>11.2e}{tc * 1e3:>10.1f}{rtc * 1e3:>10.1f}"
                        f"{rtc / tc:>10.2f}{row['loadavg']:>6.1f}")
            else:
                out, t, peak = measure(lambda: run_ours(ours, name, inp), device, args.repeats)
                row = {"workload": name, "dtype": dname, "ours_s": t, "ours_peak_bytes": peak}
                line = f"{name:<14}{dname:<6}{t * 1e3:>10.1f}{peak / 2**20:>10.0f}"
            print(line, flush=True)
            rows.append(row)
            del out
            gc.collect()
        del ours, refs, inputs
        gc.collect()
    if ref:
        print("# ours/ref: alternating runs, best of --repeats; cpu = this process's CPU time (on a "
              "shared machine steadier than the wall time); ratio > 1: ours is faster")
    if device.type == "cpu":
        print("# CPU peak = growth of the resident set during the first (warm-up) call; memory the "
              "allocator kept from earlier calls is not counted again")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
