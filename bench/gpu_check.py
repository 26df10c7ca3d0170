"""The GPU check (run by ``bench/gpu_check.sh``): one table of time and peak memory of every
stage at the release's size, the reference's forward beside ours, and the whole 8 fps
pipeline with offloading under memory budgets.

    bash bench/gpu_check.sh                 # a CUDA machine: official configurations, 512x512 (< 8 min on one H200)
    bash bench/gpu_check.sh --smoke         # tiny networks on the CPU, every code path (CI, seconds)
    KV_REFERENCE_REPO=/path/to/KandinskyVideo bash bench/gpu_check.sh   # with the reference's forwards

Rows (one table, ``|``-separated, a ``# machine`` line above it):

* ``stage`` rows: first frame (image mode at 1024x1024, 50 steps), keyframes (12 x 3
  guidance rows, 50 steps), interpolation passes 1 and 2 (11 and 44 groups x 2 rows, 10
  steps), decoding 45 and 177 frames in the release's chunks — the stages of
  ``kv_core.stages`` with random weights, bf16 U-Nets, text encoder and MoVQs. Time of the whole stage and its
  peak memory (``torch.cuda.max_memory_allocated``: the stage's network plus its
  activations; on the CPU the allocator's peak above the stage's start). With
  ``KV_REFERENCE_REPO`` (a local copy of the official code, never committed) one forward of
  ours and of the reference on the same weights and inputs (``bench/bench_networks.py``'s
  workloads and loaders): time, peak, and reference / ours.
* ``step cache`` rows: the keyframes and the first interpolation pass with step caching
  (``kv_core.sampling.step_cache``, branch 0, start step 2; 0 in the smoke run) at intervals 2, 3 and 5, each against the
  uncached stage run just before it on the same inputs and seed: time, peak, and in the
  note the full + cached steps, the speed-up and the distance of the latent to the
  uncached one (RMS of the difference / RMS of the uncached latent; random weights, so
  the distance says nothing about how a video looks).
* ``pipeline`` rows: text encoder -> first frame -> keyframes -> one interpolation pass ->
  decode (8 fps), each network on the device only for its stage (offloading, as
  ``KANDINSKY_VIDEO_OFFLOAD=1`` does in ComfyUI), in bf16 and with fp8 weights (text encoder
  and U-Nets, cast to bf16 per layer), without a budget and under
  ``torch.cuda.set_per_process_memory_fraction`` budgets for cards of 24, 16 and 12 GB (N GiB
  less :data:`CARD_OVERHEAD_GIB` for the CUDA context and ComfyUI's reserve). An
  out-of-memory error is a table entry naming the stage that failed, not a crash. (ComfyUI
  itself can go lower by loading a network in parts; that is not what is measured here.)

* ``lever`` rows (``bench/gpu_check.sh --levers-only`` runs these alone): one keyframe U-Net
  forward (the keyframes workload) per speed or memory lever of the host, each against
  the plain forward of the same run (``ratio`` = plain / lever time): the attention backends
  (PyTorch SDPA with each of its kernels the device offers — flash, memory-efficient,
  cuDNN, math — and the ``flash_attn`` / ``sageattention`` packages when installed, through
  the networks' one attention entry point ``kv_core.attention``; masked attentions stay on
  SDPA there), ``torch.compile`` (inductor on a GPU; the first call's extra time is the
  compile time), streamed weights (what dynamic VRAM does: every layer's weights copied
  from pinned host memory to the GPU for each call, none resident; the peak is the
  forward's memory without the network) and CFG split (the three guidance passes' rows
  split over two GPUs, a copy of the network on each, run in two threads, as core's
  multi-GPU work units do; skipped with one GPU).

On the CPU (``--smoke``) a budget is enforced by counting the bytes alive
(``bench/estimate_vram.py``'s counter plus the weights of the loaded networks), scaled to
the tiny networks, so the out-of-memory path runs too.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch


from bench import bench_networks as bn  # noqa: E402
from bench import estimate_vram as ev  # noqa: E402
from kv_core.checkpoints import (INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ,  # noqa: E402
                                 build_network, official_config)
from kv_core.conditioning import TextCondition  # noqa: E402
from kv_core.stages import Hooks  # noqa: E402
from kv_core.stages.decode import decode_frames  # noqa: E402
from kv_core.stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame  # noqa: E402
from kv_core.stages.interpolation import interpolate_frames  # noqa: E402
from kv_core.stages.keyframes import generate_keyframes  # noqa: E402
from kv_core.sampling.step_cache import StepCacheSettings  # noqa: E402
from kv_core.tiny import TINY_T5_DIM, tiny_configs  # noqa: E402

GIB = 2 ** 30
BUDGETS_GB = (24, 16, 12)
#: what a card of N GB (N GiB of memory) keeps from PyTorch: the CUDA context (about 0.5 GiB)
#: and ComfyUI's reserve (0.4 GiB); a budget row gives PyTorch's allocator the rest
CARD_OVERHEAD_GIB = 0.9
TEXT_TOKENS = 32  # context length a prompt of about 30 tokens keeps


class Setup:
    """What one check runs: sizes, steps, configurations, device and dtypes."""

    def __init__(self, smoke: bool, device: str):
        self.smoke = smoke
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.size = 64 if smoke else 512
        self.keyframes = 2 if smoke else 12  # videos of 2, 5 and 17 frames in the smoke run
        self.steps = {"first_frame": 2, "keyframes": 2, "interpolation": 1} if smoke else \
            {"first_frame": 50, "keyframes": 50, "interpolation": 10}
        if smoke:
            tiny = {k: v["configs"] for k, v in tiny_configs().items() if "configs" in v}
            self.configs = {KEYFRAME_UNET: tiny["t2v"], INTERPOLATION_UNET: tiny["interpolation"],
                            MOVQ: tiny["image_movq"], VIDEO_MOVQ: tiny["video_movq"]}
            self.t5 = dict(ev.FLAN_UL2, d_model=TINY_T5_DIM, d_ff=2 * TINY_T5_DIM, d_kv=8, num_heads=2,
                           num_layers=2, vocab_size=64, relative_attention_num_buckets=8,
                           relative_attention_max_distance=16)
        else:
            self.configs = {k: official_config(k) for k in (KEYFRAME_UNET, INTERPOLATION_UNET, MOVQ, VIDEO_MOVQ)}
            self.t5 = dict(ev.FLAN_UL2)
        self.compute = torch.bfloat16
        # bf16 MoVQs (ComfyUI's default where the GPU supports bf16)
        self.movq_dtype = torch.bfloat16
        # budgets: GB on a GPU; on the CPU scaled to the tiny networks (MB), so some fail
        self.budgets = {f"{b} GB card ({b - CARD_OVERHEAD_GIB:.1f} GiB)": int((b - CARD_OVERHEAD_GIB) * GIB)
                        for b in BUDGETS_GB} if not smoke else \
            {f"{b} MB (simulated)": int(b * 10 ** 6) for b in (40, 2, 0.5)}


# --------------------------------------------------------------------------- networks

def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Small random weights, drawn on the module's device (fast on a GPU)."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * 0.02)
        for b in module.buffers():
            if b.is_floating_point():
                b.zero_()
    return module.eval()


def build(setup: Setup, fp8: bool = False, seed: int = 0) -> dict:
    """The pipeline's networks with random weights, built on the run device and then left
    on the CPU (they are moved to the device for their stage). ``fp8``: text encoder and
    U-Nets store fp8 weights cast to bf16 per layer (``estimate_vram.CastOps``)."""
    from kv_core.checkpoints.t5 import _t5_encoder_model

    dev = setup.device
    nets = {}
    for i, (name, kind, dtype) in enumerate((("t2v", KEYFRAME_UNET, setup.compute),
                                             ("interpolation", INTERPOLATION_UNET, setup.compute),
                                             ("movq", MOVQ, setup.movq_dtype),
                                             ("video_movq", VIDEO_MOVQ, setup.movq_dtype))):
        unet = name in ("t2v", "interpolation")
        ops = ev.CastOps if fp8 and unet else None
        net = build_network(kind, setup.configs[kind], device="meta", dtype=dtype, operations=ops)
        net = _randomize(net.to_empty(device=dev), seed + i)
        if fp8 and unet:
            ev.dtypes.store_fp8(net, ev.FP8)
        nets[name] = net.to("cpu")
    t5 = _t5_encoder_model(setup.t5, path="flan-ul2 (random)")
    if fp8:
        ev._adopt_cast_linears(t5)
    t5 = t5.to(setup.compute).to_empty(device=dev)
    t5.encoder.embed_tokens.weight = t5.shared.weight
    _randomize(t5, seed + 9)
    if fp8:
        ev.dtypes.store_fp8(t5, ev.FP8)  # the rule keeps the feed-forward outputs (wo) as the loader does
    nets["text_encoder"] = t5.to("cpu")
    nets["null"] = torch.zeros(setup.configs[KEYFRAME_UNET]["context_dim"])
    _empty_cache(setup)
    return nets


# --------------------------------------------------------------------------- measuring

def _sync(setup):
    if setup.cuda:
        torch.cuda.synchronize()


def _empty_cache(setup):
    gc.collect()
    if setup.cuda:
        torch.cuda.empty_cache()


class OutOfBudget(RuntimeError):
    """The CPU stand-in for CUDA's out-of-memory error under a simulated budget."""


class CpuBudget(ev.LiveBytes):
    """Raises :class:`OutOfBudget` when the bytes alive (counted) plus ``resident`` (the
    weights of the networks on the "device") exceed ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.resident = 0

    def check(self, extra: int = 0):
        if self.counter.live + self.resident + extra > self.limit:
            raise OutOfBudget(f"{(self.counter.live + self.resident + extra) / 1e6:.2f} MB needed, "
                              f"budget {self.limit / 1e6:.2f} MB")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        self.check()
        return out


class Meter:
    """Time and peak memory of one block: ``torch.cuda.max_memory_allocated`` on a GPU
    (everything the process holds there, or with ``above_start`` what the block added), the
    CPU allocator's peak above the block's start (``estimate_vram.measured_peak``) on the
    CPU."""

    def __init__(self, setup: Setup, above_start: bool = False):
        self.setup = setup
        self.above_start = above_start

    def run(self, fn):
        setup = self.setup
        _sync(setup)
        if setup.cuda:
            torch.cuda.reset_peak_memory_stats(setup.device)
            start = torch.cuda.memory_allocated(setup.device) if self.above_start else 0
        t0 = time.perf_counter()
        if setup.cuda:
            out = fn()
            _sync(setup)
            peak = torch.cuda.max_memory_allocated(setup.device) - start
        else:
            out, peak = ev.measured_peak(fn)
        return out, time.perf_counter() - t0, peak


@contextmanager
def on_device(setup: Setup, budget: CpuBudget | None, *nets):
    """The networks on the run device for one stage, back on the CPU afterwards (offloading)."""
    for n in nets:
        n.to(setup.device)
    if budget is not None:
        budget.resident = sum(ev.weight_bytes(n) for n in nets)
        budget.check()
    try:
        yield
    finally:
        for n in nets:
            n.to("cpu")
        if budget is not None:
            budget.resident = 0
        _empty_cache(setup)


def _oom_types():
    types = [OutOfBudget]
    if hasattr(torch, "OutOfMemoryError"):
        types.append(torch.OutOfMemoryError)
    elif hasattr(torch.cuda, "OutOfMemoryError"):
        types.append(torch.cuda.OutOfMemoryError)
    return tuple(types)


# --------------------------------------------------------------------------- the stages

def _condition(setup: Setup, context: torch.Tensor) -> TextCondition:
    ctx = context[:, :TEXT_TOKENS].float().cpu()
    return TextCondition(ctx, torch.ones(1, ctx.shape[1], dtype=torch.int64))


def pipeline(setup: Setup, nets: dict, *, passes: int, meter: Meter, budget: CpuBudget | None = None,
             decode_also: int | None = None, rows: list | None = None) -> dict:
    """Text -> first frame -> keyframes -> ``passes`` interpolation passes -> decode, each
    network on the device only for its stage. Appends ``(stage, seconds, peak)`` to ``rows``;
    ``decode_also``: after pass ``decode_also``, decode that video too (the 45-frame decode
    of a 32 fps run)."""
    s, dev, st = setup.size, setup.device, setup.steps
    kw = dict(sampler="ddpm", noise=0)
    rows = rows if rows is not None else []
    state = {}

    def stage(name, fn, *networks):
        with on_device(setup, budget, *networks):
            out, seconds, peak = meter.run(fn)
        rows.append((name, seconds, peak))
        return out

    ids = torch.randint(0, setup.t5["vocab_size"], (1, 128), generator=torch.Generator().manual_seed(0))
    null = nets["null"]
    with torch.inference_mode():
        context = stage("text_encoder", lambda: nets["text_encoder"](
            input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev)).last_hidden_state.cpu(),
            nets["text_encoder"])
        cond = _condition(setup, context)
        latent = stage("first_frame", lambda: generate_first_frame(
            nets["t2v"], null, cond, width=s, height=s, steps=st["first_frame"], **kw,
            hooks=Hooks(device=dev, dtype=setup.compute)).cpu(), nets["t2v"])
        image = stage("decode_first_frame", lambda: decode_first_frame(
            nets["movq"], latent, hooks=Hooks(device=dev, dtype=setup.movq_dtype)), nets["movq"])
        key = stage("encode_first_frame", lambda: encode_first_frame(
            nets["movq"], image, width=s, height=s, layout="HWC",
            hooks=Hooks(device=dev, dtype=setup.movq_dtype)).cpu(),
            nets["movq"])
        frames = stage("keyframes", lambda: generate_keyframes(
            nets["t2v"], null, cond, key, num_keyframes=setup.keyframes, steps=st["keyframes"], **kw,
            hooks=Hooks(device=dev, dtype=setup.compute)).cpu(), nets["t2v"])
        for p in range(1, passes + 1):
            frames = stage(f"interpolation_{p}", lambda: interpolate_frames(
                nets["interpolation"], null, cond, frames, pass_index=p, steps=st["interpolation"], **kw,
                hooks=Hooks(device=dev, dtype=setup.compute)).cpu(), nets["interpolation"])
            if decode_also == p:
                stage(f"decode_{frames.shape[0]}", lambda: decode_frames(
                    nets["video_movq"], frames, hooks=Hooks(device=dev, dtype=setup.movq_dtype)).cpu(),
                    nets["video_movq"])
        video = stage(f"decode_{frames.shape[0]}", lambda: decode_frames(
            nets["video_movq"], frames, hooks=Hooks(device=dev, dtype=setup.movq_dtype)).cpu(), nets["video_movq"])
    state["frames"] = int(video.shape[0])
    return state


CACHE_INTERVALS = (2, 3, 5)


def cache_rows(setup: Setup, nets: dict) -> list[str]:
    """Keyframes and interpolation pass 1 with step caching at :data:`CACHE_INTERVALS`,
    each against the uncached stage of this run (same inputs, seed and steps)."""
    s, dev, st = setup.size, setup.device, setup.steps
    g = torch.Generator().manual_seed(5)
    cond = _condition(setup, torch.randn(1, TEXT_TOKENS, setup.configs[KEYFRAME_UNET]["context_dim"], generator=g))
    key = torch.randn(4, s // 8, s // 8, generator=g)
    frames = torch.randn(setup.keyframes, 4, s // 8, s // 8, generator=g)
    runs = {
        "keyframes": (nets["t2v"], lambda cache: generate_keyframes(
            nets["t2v"], nets["null"], cond, key, num_keyframes=setup.keyframes, steps=st["keyframes"], noise=0,
            hooks=Hooks(device=dev, dtype=setup.compute), step_cache=cache)),
        "interpolation_1": (nets["interpolation"], lambda cache: interpolate_frames(
            nets["interpolation"], nets["null"], cond, frames, pass_index=1, steps=st["interpolation"], noise=0,
            hooks=Hooks(device=dev, dtype=setup.compute), step_cache=cache)),
    }
    lines = []
    meter = Meter(setup)
    with torch.inference_mode():
        for name, (net, run) in runs.items():
            with on_device(setup, None, net):
                base, base_seconds, peak = meter.run(lambda: run(None).float().cpu())
                lines.append(f"| step cache | {name} | bf16 | — | {_sec(base_seconds)} | {_mem(peak)} | — | — | — | "
                             f"— | — | no cache |")
                for interval in CACHE_INTERVALS:
                    # the smoke run's 2 and 1 steps cache from step 0, so the cached path runs too
                    settings = StepCacheSettings(interval=interval, branch=0, start_step=0 if setup.smoke else 2)
                    out, seconds, peak = meter.run(lambda: run(settings).float().cpu())
                    full, cached = settings.counts(st[name.split("_")[0]])
                    distance = float((out - base).pow(2).mean().sqrt() / base.pow(2).mean().sqrt())
                    lines.append(f"| step cache | {name} | bf16 | — | {_sec(seconds)} | {_mem(peak)} | — | — | — | "
                                 f"— | — | interval {interval}: {full} full + {cached} cached steps, "
                                 f"{base_seconds / seconds:.2f}x, distance {distance:.4f} |")
    return lines


def budgeted_pipeline(setup: Setup, nets: dict, label: str, limit: int | None) -> tuple:
    """The 8 fps pipeline under a memory budget: ``(seconds, peak, failed stage or None,
    message)``."""
    rows: list = []
    budget = None
    meter = Meter(setup)
    _empty_cache(setup)
    t0 = time.perf_counter()
    try:
        if limit is None:
            pipeline(setup, nets, passes=1, meter=meter, rows=rows)
        elif setup.cuda:
            total = torch.cuda.get_device_properties(setup.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), setup.device)
            try:
                pipeline(setup, nets, passes=1, meter=meter, rows=rows)
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0, setup.device)
        else:
            budget = CpuBudget(limit)
            with budget:
                pipeline(setup, nets, passes=1, meter=meter, budget=budget, rows=rows)
    except _oom_types() as err:
        for n in nets.values():
            if isinstance(n, torch.nn.Module):
                n.to("cpu")
        _empty_cache(setup)
        failed = _next_stage(rows)
        return time.perf_counter() - t0, max((r[2] for r in rows), default=0), failed, \
            f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return time.perf_counter() - t0, max(r[2] for r in rows), None, ""


_ORDER = ("text_encoder", "first_frame", "decode_first_frame", "encode_first_frame", "keyframes",
          "interpolation_1", "decode")


def _next_stage(rows) -> str:
    """The stage of the 8 fps pipeline after the last one that finished."""
    done = {r[0].split("_")[0] if r[0].startswith("decode_") and r[0][7:].isdigit() else r[0] for r in rows}
    return next((s for s in _ORDER if s not in done), "?")


# --------------------------------------------------------------------------- the reference

def forwards(setup: Setup, nets: dict) -> dict:
    """One forward of ours, and of the reference when ``KV_REFERENCE_REPO`` is set, per
    workload of ``bench_networks`` (keyframes, first_frame, interpolation, decode), on the
    same weights and inputs: ``{workload: (ours s, ours peak, ref s, ref peak)}``."""
    repo = os.environ.get("KV_REFERENCE_REPO")
    configs = {"t2v": setup.configs[KEYFRAME_UNET], "interpolation": setup.configs[INTERPOLATION_UNET],
               "video_movq": setup.configs[VIDEO_MOVQ]}
    dev = setup.device
    inputs = bn.workloads("tiny" if setup.smoke else "official", configs, setup.compute, dev)
    decode = inputs["decode"]["latents"][:4 * setup.keyframes - 3]  # the first pass's video
    inputs["decode"]["latents"] = decode.to(setup.movq_dtype)
    ours = {k: nets[k] for k in ("t2v", "interpolation", "video_movq")}
    meter = Meter(setup, above_start=True)
    out = {}
    with torch.inference_mode(), on_device(setup, None, *ours.values()):
        for name in inputs:
            bn.run_ours(ours, name, inputs[name])  # warm-up
            _, seconds, peak = meter.run(lambda: bn.run_ours(ours, name, inputs[name]))
            out[name] = [seconds, peak, None, None]
    if not repo:
        return out
    ref = bn.load_reference(Path(repo))
    plain = {k: v for k, v in ours.items()}
    if any(ev.dtypes.is_fp8(p.dtype) for n in plain.values() for p in n.parameters()):
        raise ValueError("the reference comparison needs the bf16 networks")
    refs = bn.build_reference(ref, configs, plain, setup.compute, dev)
    _empty_cache(setup)
    with torch.inference_mode():
        for name in inputs:
            def call():
                with torch.autocast(dev.type, dtype=setup.compute):
                    return bn.run_reference(refs, name, inputs[name])
            call()  # warm-up
            _, seconds, peak = meter.run(call)
            out[name][2:] = [seconds, peak]
    del refs
    _empty_cache(setup)
    return out


# --------------------------------------------------------------------------- the table

def _forward_of(setup: Setup) -> dict:
    """Stage row -> the bench_networks workload that is one forward of it."""
    return {"first_frame": "first_frame", "keyframes": "keyframes", "interpolation_1": "interpolation",
            f"decode_{4 * setup.keyframes - 3}": "decode"}


def _mem(n) -> str:
    return "—" if n is None else f"{n / GIB:.2f} GiB" if n >= GIB / 8 else f"{n / 2**20:.1f} MiB"


def _sec(n) -> str:
    return "—" if n is None else f"{n:.2f}"


def run(setup: Setup, *, reference: bool = True, fp8: bool = True, levers: bool = True,
        levers_only: bool = False) -> list[str]:
    lines = []
    where = torch.cuda.get_device_name(setup.device) if setup.cuda else platform.processor() or "cpu"
    ref = os.environ.get("KV_REFERENCE_REPO")
    lines.append(f"# gpu_check {'--smoke ' if setup.smoke else ''}device={setup.device} ({where}) "
                 f"torch={torch.__version__} size={setup.size} steps={setup.steps} "
                 f"reference={'KV_REFERENCE_REPO' if ref else 'not set'}")
    lines.append("# peak: " + ("torch.cuda.max_memory_allocated (the stage's networks + activations; forwards: "
                               "what the call added)" if setup.cuda else
                               "the CPU allocator's peak above the block's start (activations)"))
    lines.append("| kind | stage | weights | budget | seconds | peak | ref forward s | ref peak | "
                 "our forward s | our forward peak | ref/ours | note |")
    lines.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    torch.set_grad_enabled(False)
    nets = build(setup)
    if levers_only:
        _flush(lines)
        lever_rows(setup, nets, lines)
        return lines
    # stages: one 32 fps run (both passes, 45- and 177-frame decodes), no budget
    rows: list = []
    pipeline(setup, nets, passes=2, meter=Meter(setup), decode_also=1, rows=rows)
    fw = forwards(setup, nets) if reference else {}
    for name, seconds, peak in rows:
        f = fw.get(_forward_of(setup).get(name, ""), [None] * 4)
        ratio = f"{f[2] / f[0]:.2f}" if f[2] and f[0] else "—"
        lines.append(f"| stage | {name} | bf16 | — | {_sec(seconds)} | {_mem(peak)} | {_sec(f[2])} | {_mem(f[3])} | "
                     f"{_sec(f[0])} | {_mem(f[1])} | {ratio} | |")
    _flush(lines)
    lines += cache_rows(setup, nets)
    _flush(lines)
    for label, limit in [("none", None), *setup.budgets.items()]:
        seconds, peak, failed, msg = budgeted_pipeline(setup, nets, label, limit)
        lines.append(_pipeline_row("bf16", label, seconds, peak, failed, msg))
        _flush(lines)
    if levers:
        lever_rows(setup, nets, lines)
    del nets
    _empty_cache(setup)
    if fp8:
        nets = build(setup, fp8=True)
        for label, limit in list(setup.budgets.items())[1:]:
            seconds, peak, failed, msg = budgeted_pipeline(setup, nets, label, limit)
            lines.append(_pipeline_row("fp8", label, seconds, peak, failed, msg))
            _flush(lines)
    return lines


# --------------------------------------------------------------------------- the levers

def _attention_backends(setup: Setup) -> dict:
    """name -> a ``kv_core.attention`` backend, for every kernel this device and this
    environment offer (SDPA's own kernels, ``flash_attn``, ``sageattention``)."""
    import torch.nn.functional as F
    from kv_core.attention import sdpa

    out = {"sdpa (default)": None}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        sdpa_kernel = None
    if sdpa_kernel is not None and setup.cuda:
        for label, kernel in (("sdpa flash", "FLASH_ATTENTION"), ("sdpa mem-efficient", "EFFICIENT_ATTENTION"),
                              ("sdpa cudnn", "CUDNN_ATTENTION"), ("sdpa math", "MATH")):
            if hasattr(SDPBackend, kernel):
                def backend(q, k, v, heads, mask=None, _k=getattr(SDPBackend, kernel)):
                    if mask is not None:  # the kernels without masks: the masked ones stay on the default
                        return sdpa(q, k, v, heads, mask)
                    with sdpa_kernel(_k):
                        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
                out[label] = backend
    try:
        from flash_attn import flash_attn_func

        def flash(q, k, v, heads, mask=None):
            if mask is not None or not setup.cuda:
                return sdpa(q, k, v, heads, mask)
            return flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v))).flatten(-2)
        out["flash_attn"] = flash
    except ImportError:
        pass
    try:
        from sageattention import sageattn

        def sage(q, k, v, heads, mask=None):
            if mask is not None or not setup.cuda:
                return sdpa(q, k, v, heads, mask)
            return sageattn(q, k, v, tensor_layout="HND", is_causal=False).transpose(1, 2).flatten(-2)
        out["sageattention"] = sage
    except ImportError:
        pass
    return out


@contextmanager
def _streamed(setup: Setup, net: torch.nn.Module):
    """Every leaf module's weights on the device only while it runs, copied from pinned host
    memory each call (dynamic VRAM's way); the network stays in host memory."""
    leaves = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
    net.to("cpu")
    if setup.cuda:
        for m in leaves:
            for p in m.parameters(recurse=False):
                p.data = p.data.pin_memory()
    host = {}

    def pre(module, args):
        host[module] = [p.data for p in module.parameters(recurse=False)]
        for p in module.parameters(recurse=False):
            p.data = p.data.to(setup.device, non_blocking=True)

    def post(module, args, output):
        for p, data in zip(module.parameters(recurse=False), host.pop(module)):
            p.data = data

    handles = [h for m in leaves for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _cfg_split(setup: Setup, net, inp: dict):
    """The keyframes workload's rows split over two devices (a deep copy of the network on the
    second), both halves at once in two threads; on the CPU two copies stand in for two GPUs.
    Returns a function running it, or None with fewer than two GPUs."""
    import copy
    import threading

    devices = ([torch.device("cuda", i) for i in range(2)] if setup.cuda and torch.cuda.device_count() >= 2
               else [setup.device] * 2 if not setup.cuda else None)
    if devices is None:
        return None
    copies = [net, copy.deepcopy(net).to(devices[1])]
    frames = inp["num_frames"]
    rows = inp["x"].shape[0]
    cut = (rows // frames + 1) // 2 * frames  # whole passes: 2 passes on the first device, 1 on the second
    halves = []
    for i, (lo, hi) in enumerate(((0, cut), (cut, rows))):
        d = devices[i]
        halves.append({k: (v[lo:hi].to(d) if isinstance(v, torch.Tensor) and v.shape[:1] == (rows,) else v)
                       for k, v in inp.items()})

    def run():
        out = [None, None]

        def one(i):
            h = halves[i]
            with torch.inference_mode():
                out[i] = copies[i](h["x"], h["time"], h["context"], h["context_mask"], mode="video",
                                   num_frames=frames, temporal_embed=h["temporal_embed"],
                                   noise_aug_time=h["noise_aug_time"], motion_score=h["motion_score"])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return torch.cat([out[0], out[1].to(out[0].device)])
    return run


def lever_rows(setup: Setup, nets: dict, lines: list) -> list[str]:
    """One keyframe U-Net forward per lever, beside the plain forward of the same run
    (appended to ``lines`` and printed as they come)."""
    from kv_core.attention import attention_backend

    configs = {"t2v": setup.configs[KEYFRAME_UNET], "interpolation": setup.configs[INTERPOLATION_UNET],
               "video_movq": setup.configs[VIDEO_MOVQ]}
    inp = bn.workloads("tiny" if setup.smoke else "official", configs, setup.compute, setup.device)["keyframes"]
    net = nets["t2v"]
    meter = Meter(setup, above_start=True)

    def forward(module=net):
        return bn.run_ours({"t2v": module}, "keyframes", inp)

    def row(lever, seconds, peak, base, note=""):
        ratio = f"{base / seconds:.2f}" if seconds and base else "—"
        lines.append(f"| lever | {lever} | {'bf16' if setup.cuda else 'fp32'} | — | {_sec(seconds)} | {_mem(peak)} | "
                     f"— | — | {_sec(base)} | — | {ratio} | {note} |")
        _flush(lines)

    with torch.inference_mode(), on_device(setup, None, net):
        forward()  # warm-up
        want, base, _ = meter.run(forward)
        for name, backend in _attention_backends(setup).items():
            with attention_backend(backend, net):
                forward()
                got, seconds, peak = meter.run(forward)
            row(f"attention: {name}", seconds, peak, base, f"max diff {float((got - want).abs().max()):.1e}")
        if setup.smoke:  # tracing alone takes minutes on a loaded CPU; the tests compile the networks
            row("torch.compile (inductor)", None, None, base, "skipped in --smoke")
        else:
            compiled = torch.compile(net, backend="inductor")
            _, first, _ = meter.run(lambda: forward(compiled))
            got, seconds, peak = meter.run(lambda: forward(compiled))
            row("torch.compile (inductor)", seconds, peak, base,
                f"compile {first - seconds:.1f} s; max diff {float((got - want).abs().max()):.1e}")
            del compiled
            torch._dynamo.reset()
    with torch.inference_mode(), _streamed(setup, net):
        forward()
        got, seconds, peak = meter.run(forward)
        row("streamed weights (dynamic VRAM's way)", seconds, peak, base,
            f"max diff {float((got - want.to(got.device)).abs().max()):.1e}")
    with torch.inference_mode(), on_device(setup, None, net):
        split = _cfg_split(setup, net, inp)
        if split is None:
            row("CFG split over 2 GPUs", None, None, base, f"skipped: {torch.cuda.device_count()} GPU")
        else:
            split()
            got, seconds, peak = meter.run(split)
            row("CFG split over 2 GPUs" if setup.cuda else "CFG split (2 CPU copies stand in)", seconds, peak, base,
                f"max diff {float((got - want.to(got.device)).abs().max()):.1e}")
    return lines


def _pipeline_row(weights, label, seconds, peak, failed, msg) -> str:
    status = f"OOM in {failed}" if failed else "ok"
    return (f"| pipeline 8 fps, offload | {status} | {weights} | {label} | {_sec(seconds)} | {_mem(peak)} | — | — | "
            f"— | — | — | {msg} |")


_printed = 0


def _flush(lines):
    """Print the lines not printed yet (a run cut short still shows what it measured)."""
    global _printed
    for line in lines[_printed:]:
        print(line, flush=True)
    _printed = len(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny networks on the CPU (CI)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    ap.add_argument("--no-fp8", action="store_true", help="leave out the fp8 pipeline rows")
    ap.add_argument("--no-levers", action="store_true", help="leave out the lever rows")
    ap.add_argument("--levers-only", action="store_true", help="only the lever rows")
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    setup = Setup(args.smoke, device)
    lines = run(setup, fp8=not args.no_fp8, levers=not args.no_levers, levers_only=args.levers_only)
    _flush(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
