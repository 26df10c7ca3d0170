"""Host memory and time of loading (and converting) the release's files at full size.

Two steps, both on the CPU:

``write``
    Writes official-format files of the release's full size with random weights into a
    cache folder (default ``$KV_BIG_CACHE`` or ``/tmp/kv11_full``): ``t2v.pt`` and
    ``interpolation.pt`` in float16 (``{'unet': state_dict, 'null_embedding': [4096]}``),
    ``movq.pt`` and ``video_movq.pt`` in float32, and ``configs.json``. The files are real
    ``torch.save`` zip archives (same records, pickle and 64-byte storage alignment) but are
    written one tensor at a time: the pickle is made from placeholders and each tensor is
    drawn, written and freed before the next, so writing never holds more than one tensor.

``measure``
    Runs every loader of :mod:`kv_core.checkpoints` (the ComfyUI loaders call them) for each
    ``weight_dtype`` in a fresh subprocess, and ``tools/kv_convert.py network`` on the same
    files, and prints one row each: the weights loaded (bytes of the module's tensors), the
    process's peak resident set (``VmHWM``: anonymous *and* file-backed pages, so mmap'd
    pages that were touched count), its growth over the process before loading, the ratio
    growth / loaded weights, and the wall time. For the converter the ratio is growth / size
    of the output file, and the row also shows the largest tensor it wrote.

    python -m bench.bench_load_memory write  --cache /big/kv11 [--only t2v,movq]
    python -m bench.bench_load_memory measure --cache /big/kv11 [--only t2v] [--dtype bf16]
        [--convert bf16] [--json rows.json]

Full-size figures need about 9 GB of free memory per U-Net row in bf16/fp16 (fp32 U-Nets,
16.6 GB, are skipped unless ``--fp32``). Each row reports the load average when it ran:
times on a shared machine vary with it, memory does not.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch


from kv_core.checkpoints import (INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, NULL_EMBEDDING_KEY,  # noqa: E402
                                 VIDEO_MOVQ, build_network, expected_shapes, official_config)

#: official file -> (network kind, stored dtype, configs.json section)
RELEASE = {
    "t2v.pt": (KEYFRAME_UNET, torch.float16, "t2v"),
    "interpolation.pt": (INTERPOLATION_UNET, torch.float16, "interpolation"),
    "movq.pt": (MOVQ, torch.float32, "image_movq"),
    "video_movq.pt": (VIDEO_MOVQ, torch.float32, "video_movq"),
}
_STORAGE_TYPES = {torch.float16: "HalfStorage", torch.float32: "FloatStorage", torch.bfloat16: "BFloat16Storage"}
_ALIGNMENT = 64  # torch.save's storage alignment


# --- writing official-format files one tensor at a time ------------------------------------

class _Storage:
    """Placeholder pickled as torch.save pickles a storage (a persistent id)."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Placeholder pickled exactly as ``torch.Tensor.__reduce_ex__`` pickles a contiguous CPU
    tensor: ``_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())``."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.insert(0, acc)
            acc *= s
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, torch.Size(self.shape), tuple(stride), False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", getattr(torch, _STORAGE_TYPES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


def release_shapes(network: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of ``network`` at its official configuration (meta device)."""
    module = build_network(network, official_config(network), device="meta")
    return expected_shapes(module)


def write_torch_file(path: Path, layout, fill, dtype: torch.dtype) -> int:
    """Write ``torch.save(obj)`` where ``layout`` is ``obj`` with shapes in place of tensors
    (nested dicts), each tensor drawn by ``fill(key, shape)`` only when its record is written.
    Returns the file size. Readable by ``torch.load(weights_only=True, mmap=True)``."""
    storages: list[tuple[str, _Storage, tuple]] = []

    def placeholders(obj, prefix=""):
        if isinstance(obj, dict):
            return {k: placeholders(v, f"{prefix}{k}.") for k, v in obj.items()}
        numel = 1
        for s in obj:
            numel *= s
        st = _Storage(str(len(storages)), dtype, numel)
        storages.append((prefix[:-1], st, tuple(obj)))
        return _Tensor(st, tuple(obj))

    import io
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(placeholders(layout))
    tmp = path.with_name(path.name + ".partial")
    writer = torch._C.PyTorchFileWriter(str(tmp), True, _ALIGNMENT)
    data = buf.getvalue()
    writer.write_record("data.pkl", data, len(data))
    writer.write_record(".format_version", "1", 1)
    writer.write_record(".storage_alignment", str(_ALIGNMENT), len(str(_ALIGNMENT)))
    writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
    for key, st, shape in storages:
        t = fill(key, shape).to(dtype).contiguous()
        writer.write_record(f"data/{st.key}", t.untyped_storage(), t.numel() * t.element_size())
        del t
    writer.write_end_of_file()
    del writer
    tmp.replace(path)
    return path.stat().st_size


def random_fill(seed: int):
    """Random weights of a plausible scale: norms' weights near 1, other tensors N(0, 0.02)."""
    g = torch.Generator().manual_seed(seed)

    def fill(key: str, shape):
        t = torch.randn(shape, generator=g) * 0.02
        if key.endswith("norm.weight") or ".norm" in key and key.endswith(".weight") and len(shape) == 1:
            t += 1.0
        return t
    return fill


def write_release(cache: Path, only=None) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    configs = {}
    for name, (network, dtype, section) in RELEASE.items():
        configs[section] = {"configs": official_config(network)}
    configs["text_encoder"] = {"configs": {"tokens_length": 128, "context_dim": 4096}}
    (cache / "configs.json").write_text(json.dumps(configs, indent=1))
    for i, (name, (network, dtype, _)) in enumerate(RELEASE.items()):
        if only and name.removesuffix(".pt") not in only:
            continue
        target = cache / name
        if target.is_file():
            print(f"{target}: exists ({target.stat().st_size / 1e9:.2f} GB)")
            continue
        shapes = release_shapes(network)
        layout = ({"unet": shapes, NULL_EMBEDDING_KEY: (4096,)} if network in (KEYFRAME_UNET, INTERPOLATION_UNET)
                  else shapes)
        t0 = time.perf_counter()
        size = write_torch_file(target, layout, random_fill(i), dtype)
        print(f"{target}: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)


# --- Flan-UL2's encoder: a proportional subset ---------------------------------------------

#: google/flan-ul2's config.json (the values the encoder's shapes depend on)
FLAN_UL2 = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 4096, "d_ff": 16384,
            "d_kv": 256, "num_heads": 16, "num_layers": 32, "num_decoder_layers": 32, "vocab_size": 32128,
            "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
            "is_encoder_decoder": True, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}


def t5_encoder_shapes(blocks: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of Flan-UL2's encoder with ``blocks`` of its 32 blocks (meta device)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config.from_dict(dict(FLAN_UL2, num_layers=blocks))
    with torch.device("meta"):
        model = T5EncoderModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_t5_subset(cache: Path, blocks: int) -> Path:
    """A Hugging Face folder shaped like google/flan-ul2 (bf16 safetensors shards with an
    index, two blocks per shard, plus a decoder shard the encoder loaders must never read)
    holding the embedding and ``blocks`` encoder blocks of the real shapes, and a tiny
    tokenizer (the converter embeds one)."""
    from kv_core.convert import Entry, write_safetensors
    from kv_core.tiny import write_tiny_tokenizer

    folder = cache / f"flan_ul2_{blocks}blocks"
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(dict(FLAN_UL2, num_layers=blocks), indent=1))
    shapes = t5_encoder_shapes(blocks)
    fill = random_fill(7)
    shards: dict[str, dict[str, tuple]] = {}
    for key, shape in shapes.items():
        block = int(key.split(".")[2]) if key.startswith("encoder.block.") else -1
        shards.setdefault(f"encoder-{max(block, 0) // 2:05d}.safetensors", {})[key] = shape
    shards["decoder-00000.safetensors"] = {"decoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096)}
    weight_map = {}
    for name, keys in shards.items():
        entries = [Entry(k, shape, torch.bfloat16, lambda k=k, shape=shape: fill(k, shape)) for k, shape in keys.items()]
        write_safetensors(folder / name, entries, {"format": "pt"})
        weight_map.update({k: name for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


# --- measuring in fresh subprocesses ------------------------------------------------------

def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _child_load(network: str, path: str, dtype: str, configs: str) -> dict:
    from kv_core import checkpoints as ckpt
    from kv_core.dtypes import parse_dtype
    before = _status("VmRSS")
    t0 = time.perf_counter()
    kwargs = dict(dtype=parse_dtype(dtype) if dtype != "default" else None, keep_fp8=True)
    if network in (KEYFRAME_UNET, INTERPOLATION_UNET):
        loader = ckpt.load_keyframe_unet if network == KEYFRAME_UNET else ckpt.load_interpolation_unet
        module, _ = loader(path, configs, **kwargs)
    else:
        module = ckpt.load_movq(path, configs, video=network == VIDEO_MOVQ, **kwargs)
    seconds = time.perf_counter() - t0
    tensors = [*module.parameters(), *module.buffers()]
    hwm = _status("VmHWM")
    _touch(tensors)  # what a forward or a move to the GPU reads: every page of every tensor
    return {"before": before, "hwm": hwm, "hwm_used": _status("VmHWM"), "seconds": seconds,
            "weights": sum(t.numel() * t.element_size() for t in tensors)}


def _touch(tensors) -> None:
    """Read one byte of every page of every tensor (mapped pages become resident)."""
    for t in tensors:
        if t.numel():
            flat = t.detach().reshape(-1).view(torch.uint8)
            int(flat[::4096].sum()) + int(flat[-1])


def _child_load_t5(path: str, dtype: str) -> dict:
    from kv_core import checkpoints as ckpt
    from kv_core.dtypes import parse_dtype
    before = _status("VmRSS")
    t0 = time.perf_counter()
    module = ckpt.load_t5_encoder(path, dtype=None if dtype == "default" else parse_dtype(dtype))
    seconds = time.perf_counter() - t0
    tensors = list({t.data_ptr(): t for t in [*module.parameters(), *module.buffers()]}.values())
    hwm = _status("VmHWM")
    _touch(tensors)
    return {"before": before, "hwm": hwm, "hwm_used": _status("VmHWM"), "seconds": seconds,
            "weights": sum(t.numel() * t.element_size() for t in tensors)}


def _child_convert(src: str, dst: str, dtype: str, command: str = "network") -> dict:
    from kv_core.convert import main as convert_main
    before = _status("VmRSS")
    t0 = time.perf_counter()
    rc = convert_main([command, src, dst, "--dtype", dtype])
    seconds = time.perf_counter() - t0
    from safetensors import safe_open
    with safe_open(dst, framework="pt") as f:
        largest = max(f.get_slice(k).get_shape() and _nbytes(f.get_slice(k)) for k in f.keys())
    return {"rc": rc, "before": before, "hwm": _status("VmHWM"), "seconds": seconds,
            "weights": Path(dst).stat().st_size, "largest_tensor": largest}


def _nbytes(sl) -> int:
    n = 1
    for s in sl.get_shape():
        n *= s
    return n * {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}.get(sl.get_dtype(), 4)


def run_child(args: list[str]) -> dict:
    """Run this script's hidden ``_child`` command in a fresh interpreter; its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run([sys.executable, __file__, "_child", *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _row(label, dtype, file_size, res) -> dict:
    growth = res["hwm"] - res["before"]
    used = res.get("hwm_used", res["hwm"])
    row = {"network": label, "weight_dtype": dtype, "file_bytes": file_size, "loaded_bytes": res["weights"],
           "peak_rss_bytes": res["hwm"], "growth_bytes": growth, "ratio": growth / res["weights"],
           "peak_rss_used_bytes": used, "ratio_used": (used - res["before"]) / res["weights"],
           "seconds": res["seconds"], "loadavg": os.getloadavg()[0]}
    if "largest_tensor" in res:
        row["largest_tensor_bytes"] = res["largest_tensor"]
    gb = 1e9
    print(f"{label:<26}{dtype:<12}{file_size / gb:>8.2f}{res['weights'] / gb:>9.2f}{res['hwm'] / gb:>9.2f}"
          f"{growth / gb:>9.2f}{row['ratio']:>7.2f}{used / gb:>9.2f}{row['ratio_used']:>7.2f}"
          f"{res['seconds']:>8.1f}{row['loadavg']:>7.2f}", flush=True)
    return row


def measure(cache: Path, only, dtypes, convert_dtypes, fp32: bool, keep_converted: bool) -> list[dict]:
    rows = []
    configs = str(cache / "configs.json")
    print(f"# host load memory: torch={torch.__version__} cpus={os.cpu_count()} "
          f"MemAvailable={_available() / 1e9:.1f} GB")
    print(f"{'network / command':<26}{'dtype':<12}{'file GB':>8}{'loaded':>9}{'VmHWM':>9}{'growth':>9}"
          f"{'ratio':>7}{'used':>9}{'ratio':>7}{'s':>8}{'load':>7}")
    print("# VmHWM/growth/ratio: at the end of the load; used/ratio: after reading every weight once "
          "(a forward or a move to the GPU); ratio = growth over the process before loading / loaded weights")
    for name, (network, stored, _) in RELEASE.items():
        stem = name.removesuffix(".pt")
        path = cache / name
        if (only and stem not in only) or not path.is_file():
            continue
        size = path.stat().st_size
        for dtype in dtypes:
            # fp32 of a U-Net is twice the fp16 file: skip unless asked (16.6 GB)
            bytes_needed = size * (2 if dtype == "fp32" and stored == torch.float16 else 1) * 1.2
            if dtype == "fp32" and stored == torch.float16 and not fp32:
                print(f"{stem:<26}{dtype:<12} skipped (needs ~{bytes_needed / 1e9:.0f} GB; --fp32 to run)")
                continue
            if _available() < bytes_needed + 2e9:
                print(f"{stem:<26}{dtype:<12} skipped (MemAvailable {_available() / 1e9:.1f} GB)")
                continue
            rows.append(_row(stem, dtype, size, run_child(["load", network, str(path), dtype, configs])))
        for dtype in convert_dtypes:
            dst = cache / f"converted_{stem}_{dtype}.safetensors"
            rows.append(_row(f"kv_convert {stem}", dtype, size, run_child(["convert", str(path), str(dst), dtype])))
            for d2 in (["default"] if keep_converted else []):
                rows.append(_row(f"{stem} (converted)", f"{dtype}", dst.stat().st_size,
                                 run_child(["load", network, str(dst), d2, configs])))
            dst.unlink(missing_ok=True)
    return rows


def measure_t5(cache: Path, blocks: int, dtypes, convert_dtypes) -> list[dict]:
    """Flan-UL2's encoder at ``blocks`` of its 32 blocks (real shapes), loaded and converted."""
    folder = write_t5_subset(cache, blocks)
    size = sum(f.stat().st_size for f in folder.glob("encoder-*.safetensors"))
    label = f"flan_ul2 enc {blocks}/32"
    rows = []
    for dtype in dtypes:
        rows.append(_row(label, dtype, size, run_child(["load_t5", str(folder), dtype])))
    for dtype in convert_dtypes:
        dst = cache / f"converted_t5_{blocks}_{dtype}.safetensors"
        rows.append(_row(f"kv_convert t5 {blocks}/32", dtype, size,
                         run_child(["convert", str(folder), str(dst), dtype, "t5"])))
        rows.append(_row(f"{label} (converted)", dtype, dst.stat().st_size,
                         run_child(["load_t5", str(dst), "default" if dtype != "fp8" else "bf16"])))
        dst.unlink(missing_ok=True)
    full = sum(math.prod(s) for s in t5_encoder_shapes(32).values())
    part = sum(math.prod(s) for s in t5_encoder_shapes(blocks).values())
    print(f"# Flan-UL2 encoder: {full / 1e9:.2f}B parameters in all, {part / 1e9:.2f}B in this subset "
          f"(x{full / part:.2f} for the full encoder; the peak scales with the weights)")
    return rows


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_child":
        torch.set_grad_enabled(False)
        kind, *rest = sys.argv[2:]
        res = {"load": _child_load, "load_t5": _child_load_t5, "convert": _child_convert}[kind](*rest)
        print(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["write", "measure"])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("KV_BIG_CACHE", "/tmp/kv11_full")))
    ap.add_argument("--only", help="comma-separated: t2v, interpolation, movq, video_movq")
    ap.add_argument("--dtype", action="append", help="weight_dtype to load with (repeatable; default: "
                    "default, bf16, fp16, fp8_e4m3fn and fp32 where it fits)")
    ap.add_argument("--convert", action="append", default=[], help="converter dtype to run (repeatable)")
    ap.add_argument("--load-converted", action="store_true", help="also load each converted file")
    ap.add_argument("--fp32", action="store_true", help="also load the U-Nets in fp32 (~17 GB each)")
    ap.add_argument("--t5-blocks", type=int, default=0,
                    help="also measure Flan-UL2's encoder with this many of its 32 blocks (real shapes)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if args.command == "write":
        write_release(args.cache, only)
        return 0
    dtypes = args.dtype or ["default", "fp32", "bf16", "fp16", "fp8_e4m3fn"]
    rows = measure(args.cache, only, dtypes, args.convert, args.fp32, args.load_converted) if only != {"none"} else []
    if args.t5_blocks:
        rows += measure_t5(args.cache, args.t5_blocks, [d for d in dtypes if d in ("fp32", "bf16")],
                           args.convert)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
