"""Convert the official Kandinsky Video 1.1 files to our single-file safetensors form.

Each network becomes one ``.safetensors`` file carrying its official state-dict tensors (and
the U-Nets' ``null_embedding``), with metadata (all values strings)::

    kandinsky_video.format_version  "1"
    kandinsky_video.network         keyframe_unet | interpolation_unet | movq | video_movq
                                    | text_projections | t5_encoder
    kandinsky_video.config          JSON constructor kwargs (T5: the transformers T5Config)
    kandinsky_video.dtype           storage dtype: float32 | bfloat16 | float16 | float8_e4m3fn
    kandinsky_video.source          name of the file (or folder) it was converted from
    kandinsky_video.tokenizer       T5 only: JSON {file name: text} of the tokenizer files
    format                          "pt"

Storage dtypes. ``float32``, ``bfloat16`` and ``float16`` cast every floating tensor except
``null_embedding``, always float32. ``float8_e4m3fn`` stores as fp8 only the weight matrices
and convolution kernels of the inner layers (>= 2 dimensions) and keeps in bfloat16:
biases, norm parameters, learned merge scalars, embedding tables (``skip_embeddings``, the
T5 token embedding and relative-attention biases), T5's feed-forward outputs ``wo``, the
input and output layers of each
network (``in_layer``, ``image_in_layer``, ``out_layer``, MoVQ ``conv_in``/``conv_out``,
``quant_conv``/``post_quant_conv``) and any matrix whose plain fp8 cast would lose more than
:data:`~kv_core.dtypes.FP8_MAX_RELATIVE_ERROR` (25 %) of its norm (tiny-magnitude tensors that would flush to
zero). The fp8 tensors are plain casts (no scale), the form ComfyUI's fp8 weight storage
uses: with ComfyUI's ops they stay fp8 in memory and are cast per layer at run time;
elsewhere the loader casts them to the compute dtype.

Flan-UL2: :func:`convert_t5_encoder` reads a Hugging Face ``google/flan-ul2`` folder
(sharded ``*.safetensors`` with ``model.safetensors.index.json``, or ``pytorch_model*.bin``
read with ``weights_only``) and writes the encoder alone (the shared token embedding and
``encoder.*``), with its config and tokenizer inside. The decoder is never read: shards
holding only decoder tensors are not opened and tensors are read one key at a time.

Command line (also ``tools/kv_convert.py``)::

    python -m kv_core.convert release SRC_DIR OUT_DIR [--dtype bf16] [--movq-dtype fp32]
                              [--t5 FLAN_UL2_DIR] [--t5-dtype bf16] [--configs configs.json]
    python -m kv_core.convert network SRC OUT.safetensors [--network keyframe_unet]
                              [--dtype bf16] [--configs configs.json]
    python -m kv_core.convert t5 FLAN_UL2_DIR OUT.safetensors [--dtype bf16] [--tokenizer DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from .checkpoints import (
    CONFIG_SECTIONS, FORMAT_VERSION, INTERPOLATION_UNET, KEYFRAME_UNET, META_CONFIG, META_DTYPE, META_FORMAT,
    META_NETWORK, META_SOURCE, META_TOKENIZER, MOVQ, NULL_EMBEDDING_KEY, SAFETENSORS_DTYPES, T5_ENCODER,
    TEXT_PROJECTIONS, VIDEO_MOVQ, CheckpointError, build_network, check_state_dict, identify,
    load_t5_tokenizer, load_text_projections, network_tensors, open_tensor_file, resolve_config,
    t5_encoder_file, tokenizer_files,
)
from .checkpoints.formats import HeapTrimmer
from .dtypes import FP8_DTYPES, dtype_name, fp8_candidate, parse_dtype, storage_dtype

# official file names of a release, and the names the converter gives our files
OFFICIAL_FILES = {KEYFRAME_UNET: "t2v.pt", INTERPOLATION_UNET: "interpolation.pt", MOVQ: "movq.pt",
                  VIDEO_MOVQ: "video_movq.pt", TEXT_PROJECTIONS: "t5_projections.pt"}
_OUTPUT_STEMS = {KEYFRAME_UNET: "kv11_t2v", INTERPOLATION_UNET: "kv11_interpolation",
                 MOVQ: "kv11_movq", VIDEO_MOVQ: "kv11_video_movq",
                 TEXT_PROJECTIONS: "kv11_t5_projections", T5_ENCODER: "flan_ul2_encoder"}
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _short(dtype: torch.dtype) -> str:
    return _SHORT.get(dtype, "fp8" if dtype in FP8_DTYPES else dtype_name(dtype))


@dataclass
class Entry:
    """One tensor to write: its name, shape, stored dtype, how to read its values and (optional)
    how to give back the file pages of what ``read`` returned once written
    (:meth:`~kv_core.checkpoints.TensorFile.release`)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]
    release: Callable[[torch.Tensor], None] | None = None


def _safetensors_dtype(dtype: torch.dtype) -> str:
    for name, known in SAFETENSORS_DTYPES.items():
        if known == dtype:
            return name
    raise CheckpointError(f"safetensors cannot store {dtype}")


def write_safetensors(path, entries: list[Entry], metadata: dict[str, str]) -> Path:
    """Write a safetensors file one tensor at a time (at most one tensor in memory: each
    source tensor's mapped pages are released once it is written, and its bytes go to the
    file without another copy).

    The file is written under a temporary name and renamed when complete.
    """
    header: dict = {}
    offset = 0
    for e in entries:
        size = math.prod(e.shape) * torch.empty((), dtype=e.dtype).element_size()
        header[e.key] = {"dtype": _safetensors_dtype(e.dtype), "shape": list(e.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for e in entries:
                src = e.read()
                t = src.to(device="cpu", dtype=e.dtype).contiguous()
                if tuple(t.shape) != tuple(e.shape):
                    raise CheckpointError(f"{e.key}: shape {tuple(t.shape)} changed while writing")
                if t.numel():
                    fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                del t
                if e.release is not None:
                    e.release(src)
                del src
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _metadata(network: str, config: dict | None, dtype: torch.dtype, source: str,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    metadata = {"format": "pt", META_FORMAT: FORMAT_VERSION, META_NETWORK: network,
                META_DTYPE: dtype_name(dtype), META_SOURCE: source}
    if config is not None:
        metadata[META_CONFIG] = json.dumps(config)
    metadata.update(extra or {})
    return metadata


def plan_entries(keys, shapes: Mapping[str, tuple], dtypes: Mapping[str, torch.dtype],
                 read: Callable[[str], torch.Tensor], dtype: torch.dtype,
                 rename: Mapping[str, str] | None = None,
                 release: Callable[[torch.Tensor], None] | None = None) -> list[Entry]:
    """The stored dtype of every tensor under ``dtype``'s policy (:func:`storage_dtype`);
    only fp8 candidates are read here (their values decide; ``release`` then gives back the
    file pages read, see :meth:`~kv_core.checkpoints.TensorFile.release`)."""
    entries = []
    trimmer = HeapTrimmer()
    for key in keys:
        name = (rename or {}).get(key, key)
        meta = torch.empty(shapes[key], dtype=dtypes[key], device="meta")
        if dtype in FP8_DTYPES and fp8_candidate(name, meta):
            src = read(key)
            stored = storage_dtype(name, src, dtype)
            trimmer.count(src.numel() * src.element_size())
            if release is not None:
                release(src)
            del src
        else:
            stored = storage_dtype(name, meta, dtype)
        entries.append(Entry(name, tuple(shapes[key]), stored, lambda key=key: read(key), release))
    return entries


def convert_network(src, dst, *, network: str | None = None, configs=None, dtype="fp32") -> Path:
    """Convert one official file (or re-encode one of ours) to our safetensors form.

    ``network``: which network the file must hold (default: what it holds). ``configs``:
    ``configs.json`` (path or dict) or the kwargs; default: stored / detected config. The
    tensors are checked against the network built from that config before anything is
    written, so a written file always loads.
    """
    dtype = parse_dtype(dtype)
    tf = open_tensor_file(src)
    found = tf.network or identify(tf.keys())
    network = network or found
    if network == TEXT_PROJECTIONS:
        return convert_text_projections(tf, dst, dtype=dtype)
    if network not in CONFIG_SECTIONS:
        raise CheckpointError(f"{src}: not a Kandinsky Video network file "
                              f"(found {found or 'unknown keys'}); use 't5' for the text encoder")
    tensors = network_tensors(tf, network)
    config, _ = resolve_config(network, configs, tensors)
    module = build_network(network, config, device="meta", path=tf.path)
    check_state_dict({k: tuple(v.shape) for k, v in module.state_dict().items()}, tensors.shapes,
                     path=tf.path, network=network)
    del module
    shapes = tensors.shapes
    dtypes = {k: tf.dtypes[tensors.prefix + k] for k in shapes}
    entries = plan_entries(list(shapes), shapes, dtypes, tensors.get, dtype, release=tf.release)
    if tensors.null_key is not None:
        entries.append(Entry(NULL_EMBEDDING_KEY, tf.shapes[tensors.null_key], torch.float32,
                             tensors.null_embedding))
    return write_safetensors(dst, entries, _metadata(network, config, dtype, Path(src).name))


def convert_text_projections(src, dst, *, dtype="fp32") -> Path:
    """``t5_projections.pt`` -> safetensors (keys ``projection_base.0.weight``, ...)."""
    dtype = parse_dtype(dtype)
    tf = src if not isinstance(src, (str, Path)) else open_tensor_file(src)
    load_text_projections(tf.path)  # validates layout and shapes
    tensors = network_tensors(tf, TEXT_PROJECTIONS)
    entries = plan_entries(list(tensors.shapes), tensors.shapes, tf.dtypes, tensors.get, dtype, release=tf.release)
    return write_safetensors(dst, entries, _metadata(TEXT_PROJECTIONS, None, dtype, tf.path.name))


def convert_t5_encoder(src_folder, dst, *, dtype="bf16", tokenizer=None) -> Path:
    """Write the encoder of a Hugging Face T5 folder (e.g. ``google/flan-ul2``) as one
    safetensors with its config and tokenizer; the decoder is never read, and the encoder
    is written one tensor at a time."""
    dtype = parse_dtype(dtype)
    src_folder = Path(src_folder)
    config_file = src_folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{src_folder}: not a Hugging Face T5 folder (no config.json)")
    config = json.loads(config_file.read_text())
    tf = t5_encoder_file(src_folder)
    keys = list(tf.keys())
    if "shared.weight" in keys:  # the encoder's embedding is tied to the shared one
        keys = [k for k in keys if k != "encoder.embed_tokens.weight"]
    if not any(k in keys for k in ("shared.weight", "encoder.embed_tokens.weight")) \
            or not any(k.startswith("encoder.block.") for k in keys):
        raise CheckpointError(f"{src_folder}: no T5 encoder tensors found")
    entries = plan_entries(keys, tf.shapes, tf.dtypes, tf.get, dtype,
                           rename={"encoder.embed_tokens.weight": "shared.weight"}, release=tf.release)
    extra = {META_TOKENIZER: json.dumps(tokenizer_files(load_t5_tokenizer(tokenizer or src_folder)))}
    return write_safetensors(dst, entries, _metadata(T5_ENCODER, config, dtype, src_folder.name, extra))


def convert_release(src_folder, out_folder, *, dtype="bf16", movq_dtype="fp32", configs=None,
                    t5_folder=None, t5_dtype="bf16") -> dict[str, Path]:
    """Convert every official file found in ``src_folder`` (and the T5 folder if given).

    ``configs`` default: ``src_folder/configs.json`` if present. Returns ``{network: path}``;
    output names are ``kv11_<network>_<dtype>.safetensors`` and
    ``flan_ul2_encoder_<dtype>.safetensors``.
    """
    src_folder, out_folder = Path(src_folder), Path(out_folder)
    if configs is None and (src_folder / "configs.json").is_file():
        configs = src_folder / "configs.json"
    dtype, movq_dtype, t5_dtype = parse_dtype(dtype), parse_dtype(movq_dtype), parse_dtype(t5_dtype)
    written = {}
    for network, name in OFFICIAL_FILES.items():
        src = src_folder / name
        if not src.is_file():
            continue
        if network == TEXT_PROJECTIONS:
            written[network] = convert_text_projections(src, out_folder / f"{_OUTPUT_STEMS[network]}.safetensors")
            continue
        d = movq_dtype if network in (MOVQ, VIDEO_MOVQ) else dtype
        written[network] = convert_network(src, out_folder / f"{_OUTPUT_STEMS[network]}_{_short(d)}.safetensors",
                                           network=network, configs=configs, dtype=d)
    if t5_folder is not None:
        written[T5_ENCODER] = convert_t5_encoder(
            t5_folder, out_folder / f"{_OUTPUT_STEMS[T5_ENCODER]}_{_short(t5_dtype)}.safetensors", dtype=t5_dtype)
    if not written:
        raise CheckpointError(f"{src_folder}: none of {', '.join(OFFICIAL_FILES.values())} found")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kv_core.convert",
                                     description="Convert Kandinsky Video 1.1 checkpoints to safetensors.")
    sub = parser.add_subparsers(dest="command", required=True)
    dtypes = ["fp32", "bf16", "fp16", "fp8"]

    rel = sub.add_parser("release", help="convert every official file of a folder")
    rel.add_argument("src", type=Path, help="folder with t2v.pt, interpolation.pt, movq.pt, ...")
    rel.add_argument("out", type=Path, help="output folder")
    rel.add_argument("--dtype", default="bf16", choices=dtypes, help="U-Net storage dtype")
    rel.add_argument("--movq-dtype", default="fp32", choices=dtypes, help="MoVQ storage dtype")
    rel.add_argument("--configs", type=Path, help="configs.json (default: SRC/configs.json)")
    rel.add_argument("--t5", type=Path, help="Hugging Face google/flan-ul2 folder")
    rel.add_argument("--t5-dtype", default="bf16", choices=dtypes)

    net = sub.add_parser("network", help="convert one file")
    net.add_argument("src", type=Path)
    net.add_argument("out", type=Path)
    net.add_argument("--network", choices=[*CONFIG_SECTIONS, TEXT_PROJECTIONS])
    net.add_argument("--dtype", default="fp32", choices=dtypes)
    net.add_argument("--configs", type=Path, help="configs.json of the release")

    t5 = sub.add_parser("t5", help="write the encoder of a Hugging Face T5 folder")
    t5.add_argument("src", type=Path, help="google/flan-ul2 folder")
    t5.add_argument("out", type=Path)
    t5.add_argument("--dtype", default="bf16", choices=dtypes)
    t5.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: SRC)")

    args = parser.parse_args(argv)
    try:
        if args.command == "release":
            written = convert_release(args.src, args.out, dtype=args.dtype, movq_dtype=args.movq_dtype,
                                      configs=args.configs, t5_folder=args.t5, t5_dtype=args.t5_dtype)
            for network, path in written.items():
                print(f"{network}: {path}")
        elif args.command == "network":
            print(convert_network(args.src, args.out, network=args.network, configs=args.configs,
                                  dtype=args.dtype))
        else:
            print(convert_t5_encoder(args.src, args.out, dtype=args.dtype, tokenizer=args.tokenizer))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
