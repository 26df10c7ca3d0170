"""The small text encoder at Flan-UL2's full width: file size, host memory and time of
converting, loading and encoding 128 tokens on the CPU, and the distance of its encodings
to the bf16 encoder's, for GGUF ``q8_0``, ``q4_1`` and ``q4_0`` (kv_core.checkpoints.gguf).

Proportional subset, as bench/bench_load_memory.py: a Hugging Face folder shaped like
google/flan-ul2 with the real token embedding (32128 x 4096) and ``--blocks`` of its 32
encoder blocks at their real shapes (random weights at T5's initialisation scales,
:func:`t5_init_fill`, bf16), written once into ``--cache``. Every row runs in a fresh subprocess and prints: the file size, the load time,
the resident set after loading and the peak after encoding (``VmHWM``: anonymous and
touched file-backed pages), each as growth over the process before loading, and the time of
encoding one prompt padded to 128 tokens (batch 1, ``torch.set_num_threads(--threads)``).
``full`` columns scale the subset to 32 blocks: the file's embedding counts once, its blocks
32 / ``--blocks`` times; the memory peak adds the missing blocks' weights as they are held
(float32 for the reference, packed for a .gguf); the encoding time is linear in the blocks
(the embedding's lookup costs nothing).

Distance: the last hidden states of each small encoder against those of the bf16 weights,
both computed in float32 (so only the quantization differs), per token of real English
prompts tokenized by ComfyUI's T5 tokenizer (comfy/text_encoders/t5_tokenizer: Flan-UL2's
32k SentencePiece vocabulary): ``|h_q - h| / |h|`` over the prompts' tokens (mean, 95th
percentile, max). Random weights lack the outlier features of trained T5 weights, so these
distances describe the quantization of weights of T5's scales through ``--blocks`` blocks,
not Flan-UL2's own activations (which this machine cannot hold to compare).

    python bench/bench_text_encoder.py --cache /tmp/kv11_full --blocks 2 [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROMPTS = [
    "A red panda climbing a snowy pine tree in a quiet forest, soft morning light, cinematic, highly detailed",
    "a red car drives along a coastal road at sunset, waves breaking on the rocks below",
    "An astronaut riding a horse across a desert of red sand, dust rising behind them",
    "Close-up of raindrops falling on a window, the city lights blurred behind the glass",
    "A golden retriever puppy runs through a field of tall grass chasing a butterfly",
    "Time-lapse of clouds rolling over snowy mountain peaks, dramatic shadows moving across the valley",
    "A steaming cup of coffee on a wooden table, morning sun through the curtains",
    "Aerial view of a river winding through an autumn forest of orange and yellow trees",
]
TOKENS = 128
VARIANTS = ("bf16", "q8_0", "q4_1", "q4_0")


def t5_init_fill(seed: int):
    """Random weights at T5's own initialisation scales (transformers' ``T5PreTrainedModel``:
    embedding N(0, 1); q N(0, (d_model d_kv)^-1/2), k and v N(0, d_model^-1/2), o
    N(0, (heads d_kv)^-1/2); wi N(0, d_model^-1/2), wo N(0, d_ff^-1/2); relative-attention
    bias N(0, d_model^-1/2); norms 1). At these scales the activations keep unit size
    through the blocks, as in a trained T5; with one N(0, 0.02) for every matrix (the load
    benchmark's filler, fine for memory) T5's unscaled attention logits grow to tens and the
    softmax turns into an argmax that a rounding flips, which says nothing about the
    trained encoder."""
    d_model, d_kv, heads, d_ff = 4096, 256, 16, 16384
    std = {"shared.weight": 1.0, ".q.weight": (d_model * d_kv) ** -0.5, ".k.weight": d_model ** -0.5,
           ".v.weight": d_model ** -0.5, ".o.weight": (heads * d_kv) ** -0.5, ".wi_0.weight": d_model ** -0.5,
           ".wi_1.weight": d_model ** -0.5, ".wo.weight": d_ff ** -0.5, "relative_attention_bias.weight": d_model ** -0.5}
    g = torch.Generator().manual_seed(seed)

    def fill(key: str, shape):
        if "layer_norm" in key:
            return torch.ones(shape)
        scale = next(v for k, v in std.items() if key.endswith(k))
        return torch.randn(shape, generator=g) * scale
    return fill


def write_t5_init_subset(cache: Path, blocks: int) -> Path:
    """:func:`bench_load_memory.write_t5_subset`'s folder (same shapes, shards, tokenizer and
    decoder shard) with :func:`t5_init_fill`'s weights."""
    import bench_load_memory

    folder = cache / f"flan_ul2_{blocks}blocks"
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    original = bench_load_memory.random_fill
    bench_load_memory.random_fill = t5_init_fill
    try:
        return bench_load_memory.write_t5_subset(cache, blocks)
    finally:
        bench_load_memory.random_fill = original


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def tokenizer():
    from kv_core.checkpoints import load_t5_tokenizer
    from tools.harness import ensure_comfyui

    return load_t5_tokenizer(ensure_comfyui(install_requirements=False) / "comfy" / "text_encoders" / "t5_tokenizer")


def _child_convert(src: str, dst: str, qtype: str) -> dict:
    from kv_core.convert import convert_t5_encoder

    before = _status("VmRSS")
    t0 = time.perf_counter()
    convert_t5_encoder(src, dst, dtype=qtype)
    return {"before": before, "hwm": _status("VmHWM"), "seconds": time.perf_counter() - t0}


def _child_encode(path: str, out: str, threads: str) -> dict:
    from kv_core.checkpoints import load_t5_encoder

    torch.set_num_threads(int(threads))
    tok = tokenizer()
    batches = [tok(p, max_length=TOKENS, truncation=True, padding="max_length", return_tensors="pt") for p in PROMPTS]
    before = _status("VmRSS")
    t0 = time.perf_counter()
    model = load_t5_encoder(path, dtype=torch.float32)
    load_seconds = time.perf_counter() - t0
    after_load = _status("VmRSS")
    states, seconds = [], []
    with torch.inference_mode():
        for b in batches:
            t0 = time.perf_counter()
            states.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state)
            seconds.append(time.perf_counter() - t0)
    torch.save({"states": torch.cat(states), "mask": torch.cat([b["attention_mask"] for b in batches])}, out)
    return {"before": before, "after_load": after_load, "hwm": _status("VmHWM"), "load_seconds": load_seconds,
            "encode_seconds": sorted(seconds)[len(seconds) // 2], "prompts": len(PROMPTS)}


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "child", *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, *rest = sys.argv[2:]
        print(json.dumps({"convert": _child_convert, "encode": _child_encode}[kind](*rest)))
        return 0
    from bench_load_memory import t5_encoder_shapes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("KV_BIG_CACHE", "/tmp/kv11_full")))
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    folder = write_t5_init_subset(args.cache, args.blocks)
    shapes, full_shapes = t5_encoder_shapes(args.blocks), t5_encoder_shapes(32)
    embedding = math.prod(shapes["shared.weight"])  # the shapes hold it once (shared.weight)
    part = sum(math.prod(s) for s in shapes.values())
    full = sum(math.prod(s) for s in full_shapes.values())
    block_share = (part - embedding) / part  # of the subset's weights (and of bytes, near enough)
    scale = lambda x: x * (1 - block_share) + x * block_share * 32 / args.blocks  # noqa: E731
    load = os.getloadavg()[0]
    print(f"# Flan-UL2 encoder subset: embedding + {args.blocks}/32 blocks = {part / 1e9:.2f}B parameters "
          f"(full: {full / 1e9:.2f}B); load average {load:.1f}, {args.threads} threads")
    rows = []
    outputs = {}
    for variant in VARIANTS:
        if variant == "bf16":
            path = folder
            size = sum(f.stat().st_size for f in folder.glob("encoder-*.safetensors"))
            conv = None
        else:
            path = args.cache / f"flan_ul2_{args.blocks}blocks_{variant}.gguf"
            conv = run_child(["convert", str(folder), str(path), variant])
            size = path.stat().st_size
        out = args.cache / f"states_{variant}.pt"
        enc = run_child(["encode", str(path), str(out), str(args.threads)])
        outputs[variant] = torch.load(out, weights_only=True)
        # memory holds each block's weights as loaded: float32 for the bf16 reference (computed in
        # float32), the packed bytes of a .gguf; the missing blocks add that much, the rest is fixed
        held = 2 if variant == "bf16" else 1
        extra = (scale(size) - size) * held
        row = {"variant": variant, "file_bytes": size, "full_file_bytes": scale(size),
               "load_seconds": enc["load_seconds"], "load_rss_bytes": enc["after_load"] - enc["before"],
               "encode_peak_bytes": enc["hwm"] - enc["before"], "encode_seconds": enc["encode_seconds"],
               "full_encode_seconds": enc["encode_seconds"] * 32 / args.blocks,
               "full_encode_peak_bytes": enc["hwm"] - enc["before"] + extra}
        if conv is not None:
            row.update(convert_seconds=conv["seconds"], convert_peak_bytes=conv["hwm"] - conv["before"])
        rows.append(row)
    ref = outputs["bf16"]
    mask = ref["mask"].bool()
    for row in rows:
        h = outputs[row["variant"]]["states"]
        rel = ((h - ref["states"]).norm(dim=-1) / ref["states"].norm(dim=-1))[mask]
        row.update(rel_mean=float(rel.mean()), rel_p95=float(rel.quantile(0.95)), rel_max=float(rel.max()),
                   tokens=int(mask.sum()))
    print("| variant | file (full) | convert s / peak GiB | load s | RSS after load GiB | peak after encode GiB "
          "(full) | encode 128 tokens s (full) | rel. error per token mean / p95 / max |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        conv = (f"{r['convert_seconds']:.0f} / {_gb(r['convert_peak_bytes'])}" if "convert_seconds" in r else "—")
        print(f"| {r['variant']} | {_gb(r['file_bytes'])} ({_gb(r['full_file_bytes'])}) | {conv} | "
              f"{r['load_seconds']:.1f} | {_gb(r['load_rss_bytes'])} | {_gb(r['encode_peak_bytes'])} "
              f"({_gb(r['full_encode_peak_bytes'])}) | {r['encode_seconds']:.1f} ({r['full_encode_seconds']:.0f}) | "
              f"{r['rel_mean']:.4f} / {r['rel_p95']:.4f} / {r['rel_max']:.4f} |")
    print(f"# {rows[0]['tokens']} prompt tokens of {len(PROMPTS)} English prompts; hidden states computed in float32")
    if args.json:
        args.json.write_text(json.dumps({"blocks": args.blocks, "threads": args.threads, "load_average": load,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
