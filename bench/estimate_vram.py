"""Peak activation memory of every Kandinsky Video 1.1 stage at the release's size,
estimated on the CPU without allocating it.

    python bench/estimate_vram.py              # the release's size: estimate table (about a minute)
    python bench/estimate_vram.py --check      # the method against measured CPU peaks (small sizes)
    python bench/estimate_vram.py --json out.json

Method. Each stage runs the real code (``kv_core.stages``: the same calls the nodes make,
one sampling step) under ``torch.inference_mode()`` on *fake* tensors
(``torch._subclasses.FakeTensorMode``: shapes, dtypes and strides, no data), built from the
official configurations on the meta device, so nothing is allocated. A
``TorchDispatchMode`` (:class:`LiveBytes`) sees every aten op of the stage and counts the
bytes of each new storage an op returns from its creation until the last reference goes
(a ``weakref.finalize`` on the storage), which is what a caching allocator has handed out
at that moment; its maximum is the stage's peak activation memory. Weights and the
stage's inputs exist before counting starts and are accounted separately. fp8 weights are
held by layers that cast them to the compute dtype (bf16) at every call, as ComfyUI's
``comfy.ops`` layers do; the transient bf16 copy of each layer's weight is an allocation
like any other and is counted.

The same counter runs on real tensors, and :func:`measured_peak` takes the CPU allocator's
own record (the profiler's memory events) of a real run: ``--check`` compares the estimate
with both at small sizes (fp32 and bf16), and ``tests/test_estimate_vram.py`` keeps them
within :data:`COUNTER_AGREEMENT` (the counter) and :data:`ALLOCATOR_MARGIN` (the allocator,
bf16) so the method cannot rot.

What a GPU adds, not counted here (assumptions, stated with the table): the CUDA context
(about 0.3-0.6 GiB outside PyTorch's allocator), the caching allocator's rounding and
fragmentation (``max_memory_reserved`` above ``max_memory_allocated``, typically up to
10-20 %), cuDNN convolution workspaces, and ComfyUI's reserve (about 0.4 GiB,
``--reserve-vram``). Attention runs through SDPA; here it takes the CPU's flash kernel,
which like CUDA's flash / memory-efficient kernels never stores the attention matrix.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kv_core import dtypes  # noqa: E402
from kv_core.checkpoints import (INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ,  # noqa: E402
                                 build_network, official_config)
from kv_core.conditioning import TextCondition  # noqa: E402
from kv_core.stages.decode import decode_chunk_sizes, decode_frames  # noqa: E402
from kv_core.stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame  # noqa: E402
from kv_core.stages.interpolation import interpolate_frames  # noqa: E402
from kv_core.stages.keyframes import generate_keyframes  # noqa: E402

#: the estimate (fake tensors) and the same counter on a real run of the stage agree within this fraction
COUNTER_AGREEMENT = 0.02
#: in bf16 the CPU allocator's peak of a real run is at most this fraction above the estimate (the
#: kernels' own buffers, e.g. oneDNN convolution reorders); checked by tests/test_estimate_vram.py
ALLOCATOR_MARGIN = 0.25
GIB = 2 ** 30
FP8 = getattr(torch, "float8_e4m3fn", None)

# Flan-UL2's encoder (google/flan-ul2 config.json; only the encoder is built)
FLAN_UL2 = {"model_type": "t5", "d_model": 4096, "d_ff": 16384, "d_kv": 256, "num_heads": 16,
            "num_layers": 32, "vocab_size": 32128, "feed_forward_proj": "gated-silu",
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0, "tie_word_embeddings": False}
TOKENS_LENGTH = 128


# --------------------------------------------------------------------------- the counter

class Counter:
    """Bytes alive now (``live``) and the most alive at once (``peak``) of the storages
    handed to :meth:`count`; a storage counts once, from then until it is freed."""

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.finalize] = {}

    def ignore(self, tensors) -> None:
        """Never count the storages of ``tensors`` (weights, inputs: they exist before the
        counted run; an op that returns one of them, e.g. a ``.to`` that changes nothing,
        allocates nothing)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.count(t, known=True)

    def count(self, t: torch.Tensor, known: bool = False) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._alive:
            return
        n = 0 if known else storage.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)

        def freed(key=key, n=n):
            self._alive.pop(key, None)
            self.live -= n

        self._alive[key] = weakref.finalize(storage, freed)

    def transient(self, n: int) -> None:
        """``n`` bytes held for a moment on top of what is alive (a kernel's own buffers)."""
        self.peak = max(self.peak, self.live + n)


def attention_workspace(args, kwargs) -> int:
    """Bytes ``scaled_dot_product_attention(q, k, v, ...)`` holds beside its output while
    it runs, with the kernel PyTorch picks on a GPU.

    Fused kernels (flash / memory-efficient; the CPU's flash) need every input's last
    dimension contiguous (stride 1) and a head size that is a multiple of 8; they keep only
    the float32 log-sum-exp ``[B, heads, Lq]``. Otherwise PyTorch runs the plain
    ``softmax(q k^T) v`` (``_scaled_dot_product_attention_math``): the inputs upcast to
    float32 when they are bf16/fp16, a scaled copy of q and of k, and the attention matrix
    ``[B, heads, Lq, Lk]`` twice (the scores and their softmax)."""
    q, k, v = args[:3]
    if all(t.stride(-1) == 1 for t in (q, k, v)) and q.shape[-1] % 8 == 0:
        return q[..., 0].numel() * 4
    size = 4 if q.element_size() < 4 else q.element_size()
    upcast = sum(t.numel() for t in (q, k, v)) * size if q.element_size() < 4 else 0
    matrix = q[..., 0].numel() * k.shape[-2] * size
    return upcast + (q.numel() + k.numel()) * size + 2 * matrix


class LiveBytes(TorchDispatchMode):
    """Counts (in ``counter``, a :class:`Counter`) the storages created by the ops run under
    it while they are alive: a storage counts once, when an op first returns a tensor on it
    (views and in-place results add nothing), until it is freed. Storages that existed
    before (weights, inputs) are never counted. Works on real and on fake tensors."""

    def __init__(self, counter: Counter | None = None):
        super().__init__()
        self.counter = counter or Counter()

    @property
    def peak(self) -> int:
        return self.counter.peak

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.counter.count(t)
        if func is torch.ops.aten.scaled_dot_product_attention.default:
            self.counter.transient(attention_workspace(args, kwargs))
        return out


class FakeNetwork:
    """A network whose calls run on fake tensors (no memory) while the code around it runs
    on real ones: the sampling loops read their schedules as numbers, which fake tensors
    cannot give, and their own tensors (latents, guidance rows) are small.

    ``module(...)``, ``.encode``/``.decode`` take real inputs, run the network inside
    ``fake`` with every storage it creates counted in the current :class:`Counter`
    (:func:`estimate` sets it), and return real zero tensors of the output's shape and
    dtype (allocated after the fake output is gone, so never both at once). Every other
    attribute is the module's."""

    def __init__(self, module: nn.Module, fake):
        self.module = module
        self.fake = fake
        self.counter: Counter | None = None

    def __getattr__(self, name):
        return getattr(self.module, name)

    def _run(self, fn, *args, **kwargs):
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils._pytree import tree_map

        counter = self.counter if self.counter is not None else Counter()
        with _disable_current_modes():  # the outer (real) counter must not see the fake run's meta ops
            with self.fake, LiveBytes(counter):
                args, kwargs = tree_map(lambda t: self.fake.from_tensor(t) if isinstance(t, torch.Tensor)
                                        and not isinstance(t, FakeTensor) else t, (args, kwargs))
                counter.ignore(tree_flatten((args, kwargs))[0])  # their real twins are counted already
                counter.ignore(_state(self.module))
                out = fn(*args, **kwargs)
                spec = tree_map(lambda t: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t, out)
                del out, args, kwargs
        return tree_map(lambda x: torch.zeros(x[0], dtype=x[1]) if isinstance(x, tuple) and len(x) == 2
                        and isinstance(x[1], torch.dtype) else x, spec, is_leaf=lambda x: isinstance(x, tuple))

    def __call__(self, *args, **kwargs):
        return self._run(self.module, *args, **kwargs)

    def encode(self, *args, **kwargs):
        return self._run(self.module.encode, *args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._run(self.module.decode, *args, **kwargs)


def measured_peak(fn) -> tuple[object, int]:
    """``(fn(), peak bytes)``: the CPU allocator's record of a real run (the profiler's
    memory events: every allocation and free of the CPU allocator while ``fn`` runs, in
    order); the peak of their running sum is the most memory ``fn`` held at once above what
    was allocated before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [(e.start_ns(), i, e.nbytes()) for i, e in enumerate(prof.profiler.kineto_results.events())
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for _, _, n in sorted(events):
        live += n
        peak = max(peak, live)
    return out, peak


# --------------------------------------------------------------------------- networks

def _cast(t, dtype):
    return None if t is None else t.to(dtype)


class _CastConv:
    """``forward`` of a Conv2d/Conv3d that casts its weights when ``comfy_cast_weights``."""

    comfy_cast_weights = False

    def forward(self, x):
        if not self.comfy_cast_weights:
            return super().forward(x)
        return self._conv_forward(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))


class CastOps:
    """Layers that cast their weights to the input's dtype at every call when
    ``comfy_cast_weights`` is set (as ComfyUI's ``comfy.ops.manual_cast`` does for fp8
    weights): the transient copy is what fp8 storage costs at run time."""

    class Linear(nn.Linear):
        comfy_cast_weights = False

        def forward(self, x):
            if not self.comfy_cast_weights:
                return super().forward(x)
            return F.linear(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))

    class Conv2d(_CastConv, nn.Conv2d):
        pass

    class Conv3d(_CastConv, nn.Conv3d):
        pass

    class ConvTranspose2d(nn.ConvTranspose2d):
        comfy_cast_weights = False

        def forward(self, x, output_size=None):
            if not self.comfy_cast_weights:
                return super().forward(x, output_size)
            return F.conv_transpose2d(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.stride,
                                      self.padding, self.output_padding, self.groups, self.dilation)

    class GroupNorm(nn.GroupNorm):
        comfy_cast_weights = False

    class LayerNorm(nn.LayerNorm):
        comfy_cast_weights = False

    class Embedding(nn.Embedding):
        comfy_cast_weights = False


def network(kind: str, config: dict, dtype: torch.dtype, *, fake=None,
            fp8: bool = False, seed: int = 0) -> nn.Module:
    """A network of ``kind`` with ``config``: built on the meta device, then given storage
    inside ``fake`` (no memory) or real random weights (``fake`` None). ``dtype`` is its
    compute dtype; ``fp8`` stores the weight matrices of its casting layers in
    float8_e4m3fn (:func:`kv_core.dtypes.store_fp8`, as the loaders do)."""
    module = build_network(kind, config, device="meta", dtype=dtype, operations=CastOps if fp8 else None)
    if fake is not None:
        with fake:
            module = module.to_empty(device="cpu")
    else:
        module = module.to_empty(device="cpu")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            for b in module.buffers():
                if b.is_floating_point():
                    b.zero_()
    if fp8:
        with fake or contextlib.nullcontext():
            dtypes.store_fp8(module, FP8)
    module.eval()
    return module if fake is None else FakeNetwork(module, fake)


def text_encoder(dtype: torch.dtype, *, fake, fp8: bool = False, config: dict = FLAN_UL2):
    """Flan-UL2's encoder (transformers ``T5EncoderModel``) with fake weights."""
    from kv_core.checkpoints.t5 import _t5_encoder_model

    model = _t5_encoder_model(config, path="flan-ul2 (estimate)")
    if fp8:
        _adopt_cast_linears(model)
    model = model.to(dtype)
    with fake:
        model = model.to_empty(device="cpu")
        model.encoder.embed_tokens.weight = model.shared.weight  # one table, as loaded
        if fp8:  # the feed-forward output (wo) keeps the compute dtype, as the loader does
            dtypes.store_fp8(model, FP8, keep_names=("wo",))
    return FakeNetwork(model.eval(), fake)


def _adopt_cast_linears(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                new = CastOps.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                     device="meta")
                setattr(parent, name, new)


def _state(module) -> list:
    module = getattr(module, "module", module)
    return list(module.parameters()) + list(module.buffers())


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a network's parameters and buffers (shared tensors once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------- stages

def _condition(dim: int, length: int) -> TextCondition:
    mask = torch.ones(1, length, dtype=torch.int64)
    return TextCondition(torch.randn(1, length, dim), mask)


def stage_runs(nets: dict, *, size: int, keyframes: int, compute: torch.dtype, movq_dtype: torch.dtype,
               context_dim: int, text_length: int = 32, chunk_size=None, decode_frames_list=(45, 177),
               steps: int = 1) -> dict:
    """``{stage name: (prepare, run)}``: ``prepare()`` makes the stage's inputs (not counted),
    ``run(inputs)`` runs the stage as the node does (one sampling step: each step of a loop
    needs the same memory). ``nets``: keyframe/interpolation U-Nets, image/video MoVQ,
    optionally the text encoder. ``size``: the video side in pixels."""
    lat = size // 8
    null = torch.zeros(context_dim)
    kw = dict(sampler="ddim", steps=steps, noise=0)
    runs = {}

    def cond():
        return _condition(context_dim, text_length)

    if "text_encoder" in nets:
        def encode(inp):
            enc = nets["text_encoder"]
            return enc(input_ids=inp[0], attention_mask=inp[1]).last_hidden_state
        runs["text_encoder"] = (lambda: (torch.zeros(1, TOKENS_LENGTH, dtype=torch.int64),
                                         torch.ones(1, TOKENS_LENGTH, dtype=torch.int64)), encode)
    if "t2v" in nets:
        runs["first_frame"] = (cond, lambda c: generate_first_frame(
            nets["t2v"], null, c, width=size, height=size, **kw, hooks=Hooks(dtype=compute)))
        runs["keyframes"] = (lambda: (cond(), torch.randn(4, lat, lat)), lambda inp: generate_keyframes(
            nets["t2v"], null, inp[0], inp[1], num_keyframes=keyframes, **kw, hooks=Hooks(dtype=compute)))
    if "movq" in nets:
        runs["decode_first_frame"] = (lambda: torch.randn(1, 4, 2 * lat, 2 * lat), lambda x: decode_first_frame(
            nets["movq"], x, hooks=Hooks(dtype=movq_dtype)))
        runs["encode_first_frame"] = (lambda: torch.zeros(size, size, 3, dtype=torch.uint8),
                                      lambda x: encode_first_frame(nets["movq"], x, width=size, height=size,
                                                                   layout="HWC", hooks=Hooks(dtype=movq_dtype)))
    if "interpolation" in nets:
        n = keyframes
        for p in (1, 2):
            runs[f"interpolation_{p}"] = (
                (lambda n=n: (cond(), torch.randn(n, 4, lat, lat))),
                lambda inp, p=p: interpolate_frames(nets["interpolation"], null, inp[0], inp[1], pass_index=p, **kw,
                                                    hooks=Hooks(dtype=compute)))
            n = 4 * n - 3
    if "video_movq" in nets:
        for f in decode_frames_list:
            runs[f"decode_{f}"] = ((lambda f=f: torch.randn(f, 4, lat, lat)), lambda x: decode_frames(
                nets["video_movq"], x, chunk_size=chunk_size, hooks=Hooks(dtype=movq_dtype)))
    return runs


def estimate(prepare, run, nets: dict) -> int:
    """Peak bytes alive while ``run(prepare())`` runs with the :class:`FakeNetwork` networks of
    ``nets``: the storages their fake calls create plus the real ones the stage's own code
    creates, counted together by one :class:`Counter`."""
    counter = Counter()
    for net in nets.values():
        net.counter = counter
    with torch.inference_mode():
        inputs = prepare()
        counter.ignore(tree_flatten(inputs)[0])
        with LiveBytes(counter):
            out = run(inputs)
        del out
    for net in nets.values():
        net.counter = None
    return counter.peak


def measure(prepare, run, nets: dict) -> tuple[int, int]:
    """``(allocator peak, LiveBytes peak)`` of ``run(prepare())`` on real CPU tensors with
    the networks of ``nets``."""
    with torch.inference_mode():
        inputs = prepare()
        counter = LiveBytes()
        counter.counter.ignore(tree_flatten(inputs)[0])
        for net in nets.values():
            counter.counter.ignore(_state(net))

        def counted():
            with counter:
                return run(inputs)

        out, peak = measured_peak(counted)
        del out
    return peak, counter.peak


# --------------------------------------------------------------------------- the release

def release_estimates(*, size: int = 512, keyframes: int = 12, chunk_sizes=(None, 2, 1),
                      movq_dtypes=(torch.bfloat16, torch.float32), text: bool = True) -> dict:
    """Estimates at the release's size: ``{"weights": {...}, "stages": [rows]}``.

    Rows: stage, U-Net weights ("bf16"/"fp8"), MoVQ dtype, decode chunk size, the
    activation peak in bytes, the rows/frames it ran and the resident weights of the stage's
    network in bytes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    bf16 = torch.bfloat16
    cfg = {k: official_config(k) for k in (KEYFRAME_UNET, INTERPOLATION_UNET, MOVQ, VIDEO_MOVQ)}
    dim = cfg[KEYFRAME_UNET]["context_dim"]
    rows, weights = [], {}
    for mode in ("bf16", "fp8"):
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        fp8 = mode == "fp8"
        nets = {"t2v": network(KEYFRAME_UNET, cfg[KEYFRAME_UNET], bf16, fake=fake, fp8=fp8),
                "interpolation": network(INTERPOLATION_UNET, cfg[INTERPOLATION_UNET], bf16, fake=fake, fp8=fp8)}
        if text:
            nets["text_encoder"] = text_encoder(bf16, fake=fake, fp8=fp8)
        for name, net in nets.items():
            weights[f"{name} {mode}"] = weight_bytes(net)
        for name, (prep, run) in stage_runs(nets, size=size, keyframes=keyframes, compute=bf16, movq_dtype=bf16,
                                            context_dim=dim).items():
            net = {"text_encoder": "text_encoder", "first_frame": "t2v", "keyframes": "t2v"}.get(
                name, "interpolation")
            rows.append({"stage": name, "weights": mode, "movq": "", "chunk": "",
                         "activation_bytes": estimate(prep, run, nets),
                         "weight_bytes": weights[f"{net} {mode}"]})
    for mdt in movq_dtypes:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        name = dtypes.dtype_name(mdt)
        nets = {"movq": network(MOVQ, cfg[MOVQ], mdt, fake=fake),
                "video_movq": network(VIDEO_MOVQ, cfg[VIDEO_MOVQ], mdt, fake=fake)}
        weights[f"movq {name}"] = weight_bytes(nets["movq"])
        weights[f"video_movq {name}"] = weight_bytes(nets["video_movq"])
        for chunk in chunk_sizes:
            for stage, (prep, run) in stage_runs(nets, size=size, keyframes=keyframes, compute=bf16,
                                                 movq_dtype=mdt, context_dim=dim, chunk_size=chunk).items():
                if chunk is not None and not stage.startswith("decode_") or stage == "decode_first_frame" \
                        and chunk is not None:
                    continue
                video = stage.startswith("decode_") and stage != "decode_first_frame"
                frames = int(stage.split("_")[1]) if video else 0
                rows.append({"stage": stage, "weights": "", "movq": name,
                             "chunk": (chunk or max(decode_chunk_sizes(frames))) if video else "",
                             "activation_bytes": estimate(prep, run, nets),
                             "weight_bytes": weights[f"{'video_movq' if video else 'movq'} {name}"]})
    return {"weights": weights, "stages": rows}


# --------------------------------------------------------------------------- the check

def check_configs(kind: str) -> dict:
    """Small configurations for the check: the golden cases' (``tests/data/golden``) for the
    U-Nets and the video MoVQ, kv_core.tiny's image MoVQ; ``kind`` "tiny" uses kv_core.tiny's
    for all."""
    from kv_core.tiny import tiny_configs
    from kv_core.stages import Hooks

    tiny = {k: v["configs"] for k, v in tiny_configs().items() if "configs" in v}
    if kind == "tiny":
        return {KEYFRAME_UNET: tiny["t2v"], INTERPOLATION_UNET: tiny["interpolation"],
                MOVQ: tiny["image_movq"], VIDEO_MOVQ: tiny["video_movq"]}
    golden = json.loads((ROOT / "tests" / "data" / "golden" / "configs.json").read_text())
    return {KEYFRAME_UNET: golden["t2v"]["configs"], INTERPOLATION_UNET: golden["interpolation"]["configs"],
            MOVQ: golden["image_movq"]["configs"] if "image_movq" in golden else tiny["image_movq"],
            VIDEO_MOVQ: golden["video_movq"]["configs"]}


def check(kind: str = "small", *, size: int = 128, keyframes: int = 4,
          dtypes_=(torch.float32, torch.bfloat16), frames=(9,)) -> list[dict]:
    """Estimated (fake tensors) against measured (the CPU allocator, real tensors) peaks of
    every stage at a small size. Rows: stage, dtype, estimated, measured, counted (the
    counter on the real run) and the relative difference of estimated to measured."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = check_configs(kind)
    dim = cfg[KEYFRAME_UNET]["context_dim"]
    rows = []
    for dt in dtypes_:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        fake_nets = {k: network(n, cfg[n], dt, fake=fake) for k, n in
                     (("t2v", KEYFRAME_UNET), ("interpolation", INTERPOLATION_UNET), ("movq", MOVQ),
                      ("video_movq", VIDEO_MOVQ))}
        real_nets = {k: network(n, cfg[n], dt) for k, n in
                     (("t2v", KEYFRAME_UNET), ("interpolation", INTERPOLATION_UNET), ("movq", MOVQ),
                      ("video_movq", VIDEO_MOVQ))}
        opts = dict(size=size, keyframes=keyframes, compute=dt, movq_dtype=dt, context_dim=dim,
                    decode_frames_list=frames)
        fake_runs, real_runs = stage_runs(fake_nets, **opts), stage_runs(real_nets, **opts)
        for name in fake_runs:
            est = estimate(*fake_runs[name], fake_nets)
            meas, counted = measure(*real_runs[name], real_nets)
            rows.append({"stage": name, "dtype": dtypes.dtype_name(dt), "estimated": est, "measured": meas,
                         "counted": counted, "difference": (est - meas) / meas if meas else 0.0})
    return rows


# --------------------------------------------------------------------------- output

def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def print_estimates(result: dict) -> None:
    print("| stage | U-Net weights | MoVQ dtype | decode chunk | activations GiB | weights GiB | sum GiB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in result["stages"]:
        print(f"| {r['stage']} | {r['weights'] or '—'} | {r['movq'] or '—'} | {r['chunk'] or '—'} | "
              f"{_gib(r['activation_bytes'])} | {_gib(r['weight_bytes'])} | "
              f"{_gib(r['activation_bytes'] + r['weight_bytes'])} |")
    print()
    print("| network | weights GiB |")
    print("|---|---:|")
    for k, v in result["weights"].items():
        print(f"| {k} | {_gib(v)} |")


def print_check(rows: list[dict]) -> None:
    print("| stage | dtype | estimated MiB | measured MiB | counter on the real run MiB | difference |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['dtype']} | {r['estimated'] / 2**20:.2f} | {r['measured'] / 2**20:.2f} | "
              f"{r['counted'] / 2**20:.2f} | {100 * r['difference']:+.1f} % |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", choices=["tiny", "small"], nargs="?", const="small",
                    help="compare the method with measured CPU peaks at a small size instead")
    ap.add_argument("--size", type=int, default=None, help="video side (512 release; 128 --check)")
    ap.add_argument("--no-text", action="store_true", help="leave out the text encoder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.check:
        rows = check(args.check, size=args.size or 128)
        print_check(rows)
        out = rows
    else:
        out = release_estimates(size=args.size or 512, text=not args.no_text)
        print_estimates(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
