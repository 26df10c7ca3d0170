"""The T5 text encoder (the encoder half of a Hugging Face ``google/flan-ul2`` folder, or our
encoder-only safetensors) and its tokenizer, with the checks that refuse a tokenizer the
encoder cannot use."""
from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..dtypes import load_dtype, parse_dtype
from .contents import identify, not_recognised
from ..kinds import DESCRIPTIONS, T5_ENCODER
from .formats import (META_CONFIG, META_TOKENIZER, SAFETENSORS_DTYPES, CheckpointError, PageReleaser, TensorFile,
                      listing, open_tensor_file, torch_load)
from .networks import check_state_dict


def t5_encoder_keys(keys) -> list[str]:
    """The keys of a full T5 checkpoint that the encoder needs (embedding + ``encoder.*``)."""
    return [k for k in keys if k.startswith("encoder.") or k == "shared.weight"]


def _t5_weight_files(folder: Path) -> tuple[list[tuple[Path, list[str] | None]], str]:
    """[(file, encoder keys in it or None for "look inside")], format ('safetensors'|'bin')."""
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"),
                            ("pytorch_model.bin.index.json", "bin")):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            by_file: dict[str, list[str]] = {}
            for key in t5_encoder_keys(weight_map):
                by_file.setdefault(weight_map[key], []).append(key)
            root = folder.resolve()
            outside = [f for f in by_file if root not in (folder / f).resolve().parents]
            if outside:
                raise CheckpointError(f"{index}: names weight files outside its folder ({', '.join(outside[:3])}); "
                                      "refusing to read them")
            return [(folder / f, keys) for f, keys in sorted(by_file.items())], fmt
    for name, fmt in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if (folder / name).is_file():
            return [(folder / name, None)], fmt
    raise CheckpointError(f"{folder}: no T5 weights (model.safetensors[.index.json] or "
                          "pytorch_model.bin[.index.json])")


def t5_encoder_file(folder) -> TensorFile:
    """The encoder tensors of a Hugging Face T5 folder, as a lazily read :class:`TensorFile`.

    Only the encoder is ever read: with an index, shards holding no encoder tensor are never
    opened; safetensors are read key by key; ``.bin`` shards are memory-mapped
    (``weights_only``), so the decoder tensors beside the encoder's are never read into memory.
    """
    from safetensors import safe_open

    folder = Path(folder)
    files, fmt = _t5_weight_files(folder)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    getters: dict[str, Callable[[], torch.Tensor]] = {}
    for file, keys in files:
        try:
            if fmt == "safetensors":
                handle = safe_open(str(file), framework="pt", device="cpu")
                for key in keys if keys is not None else t5_encoder_keys(handle.keys()):
                    sl = handle.get_slice(key)
                    shapes[key] = tuple(sl.get_shape())
                    dtypes[key] = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
                    getters[key] = lambda handle=handle, key=key: handle.get_tensor(key)
            else:
                state = torch_load(file)
                if not isinstance(state, Mapping):
                    raise CheckpointError(f"{file}: not a state dict")
                for key in keys if keys is not None else t5_encoder_keys(state.keys()):
                    if key not in state:
                        raise CheckpointError(f"{file}: the index names {key!r} but the shard lacks it")
                    shapes[key], dtypes[key] = tuple(state[key].shape), state[key].dtype
                    getters[key] = lambda t=state[key]: t
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"could not read {file}: {type(err).__name__}: {err}") from err

    def get(key: str) -> torch.Tensor:
        try:
            return getters[key]()
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{folder}: could not read tensor {key!r}: {err}") from err

    return TensorFile(folder, shapes, dtypes, {}, get, PageReleaser([file for file, _ in files]))


def _t5_encoder_model(config_dict: dict, *, path):
    from transformers import T5Config, T5EncoderModel

    if not isinstance(config_dict, Mapping):
        raise CheckpointError(f"{path}: the T5 config is a {type(config_dict).__name__}, not a JSON object")
    model_type = config_dict.get("model_type")
    if model_type not in (None, "t5"):
        raise CheckpointError(f"{path}: the config describes a {model_type!r} model, not T5 (Kandinsky Video "
                              "needs google/flan-ul2)")
    try:
        config = T5Config.from_dict(dict(config_dict))
        config.is_encoder_decoder = False
        config.use_cache = False
        with torch.device("meta"):
            model = T5EncoderModel(config)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not build a T5 encoder from its config: "
                              f"{type(err).__name__}: {err}") from err
    return model


def _assign_t5(model, shapes: Mapping[str, tuple], get, *, path, device, dtype, release=None):
    # the token embedding is shared by the model and its encoder stack
    embed = "shared.weight" if "shared.weight" in shapes else "encoder.embed_tokens.weight"
    if embed not in shapes:
        raise CheckpointError(f"{path}: the T5 encoder has no token embedding (shared.weight)")
    aliases = {"shared.weight": embed, "encoder.embed_tokens.weight": embed}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: shapes[aliases.get(k, k)] for k in expected if aliases.get(k, k) in shapes}
    found.update({k: s for k, s in shapes.items() if k not in aliases})
    check_state_dict(expected, found, path=path, network=T5_ENCODER)
    cache: dict[str, torch.Tensor] = {}
    state = {}
    for key in expected:
        src = aliases.get(key, key)
        if src not in cache:
            t = get(src)
            cache[src] = t.to(device=device or "cpu", dtype=load_dtype(src, t, dtype, False))
            if release is not None and cache[src].untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
                release(t)  # the file's pages of a tensor that was copied (see PageReleaser)
            del t
        state[key] = cache[src]
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()


def load_t5_encoder(path, *, device=None, dtype=torch.float32):
    """A transformers ``T5EncoderModel`` from a Hugging Face T5 folder (only its encoder
    tensors are read) or from our encoder-only safetensors."""
    path = Path(path)
    dtype = parse_dtype(dtype)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: a T5 folder needs config.json")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{config_file}: not a readable JSON file: {err}") from None
        model = _t5_encoder_model(config, path=path)
        tf = t5_encoder_file(path)
        return _assign_t5(model, tf.shapes, tf.get, path=path, device=device, dtype=dtype, release=tf.release)
    tf = open_tensor_file(path)
    found = tf.network or identify(tf.keys())
    if found is None:
        raise not_recognised(tf, T5_ENCODER)
    if found != T5_ENCODER:
        raise CheckpointError(f"{path}: expected the {DESCRIPTIONS[T5_ENCODER]}, but the file holds "
                              f"the {DESCRIPTIONS.get(found, found)}")
    config = tf.config
    if config is None:
        raise CheckpointError(f"{path}: a T5 encoder safetensors needs its config in the metadata "
                              f"({META_CONFIG}); convert the Hugging Face folder with kv_core.convert")
    model = _t5_encoder_model(config, path=path)
    keys = t5_encoder_keys(tf.keys())
    extra = [k for k in tf.keys() if k not in keys]
    if extra:
        raise CheckpointError(f"{path}: unexpected keys in the T5 encoder file: {listing(extra)}")
    return _assign_t5(model, tf.shapes, tf.get, path=path, device=device, dtype=dtype, release=tf.release)


#: files from which transformers can build a T5 tokenizer (either is enough)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
#: an English sentence every Flan-UL2 tokenizer reads without ``<unk>``
TOKENIZER_PROBE = "a red car driving along a coastal road at sunset"


def _missing_modules(*names: str) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _tokenizer_from_folder(folder: Path, what: str):
    """``AutoTokenizer`` of ``folder``, refusing folders it would build a useless tokenizer
    from: without ``tokenizer.json`` and ``spiece.model`` transformers makes one that maps
    every word to ``<unk>`` (every prompt then gives the same video); ``spiece.model`` alone
    needs sentencepiece and protobuf, without which transformers asks for ``tiktoken``."""
    from transformers import AutoTokenizer

    present = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        raise CheckpointError(
            f"{what} has no tokenizer: {folder} lacks both tokenizer.json and spiece.model "
            f"(found: {listing(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else 'nothing'}). "
            "Without them every word becomes <unk> and every prompt gives the same video: copy "
            "tokenizer.json (or spiece.model), tokenizer_config.json and special_tokens_map.json "
            "of google/flan-ul2 into that folder")
    if present == ["spiece.model"]:
        missing = _missing_modules("sentencepiece", "google.protobuf")
        if missing:
            names = " and ".join("protobuf" if m == "google.protobuf" else m for m in missing)
            raise CheckpointError(
                f"{what}: {folder} has spiece.model but no tokenizer.json, and reading spiece.model "
                f"needs the Python package{'s' if len(missing) > 1 else ''} {names}, not installed here: "
                f"`pip install {' '.join('protobuf' if m == 'google.protobuf' else m for m in missing)}` "
                "in ComfyUI's environment (both are in requirements.txt), or put the tokenizer.json of "
                "google/flan-ul2 into the folder")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds
        raise CheckpointError(f"{what}: could not build the T5 tokenizer from {folder} "
                              f"({', '.join(present)}): {type(err).__name__}: {err}") from err


def check_t5_tokenizer(tokenizer, *, path, vocab_size: int | None = None):
    """Refuse a tokenizer the encoder cannot use: no pad or end-of-sequence token, more ids
    than the encoder's embedding has rows (``vocab_size``), or one that reads the English
    :data:`TOKENIZER_PROBE` mostly as ``<unk>`` (a vocabulary of another model)."""
    absent = [name for name in ("pad_token_id", "eos_token_id") if getattr(tokenizer, name, None) is None]
    if absent:
        raise CheckpointError(f"{path}: the tokenizer has no {' and no '.join(a[:-3] for a in absent)} "
                              "(a T5 tokenizer has <pad> = 0 and </s> = 1): it is not Flan-UL2's")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the encoder's embedding "
                              f"only {vocab_size} rows: the tokenizer is not this encoder's (Flan-UL2: 32100 "
                              "tokens, 32128 rows)")
    ids = tokenizer(TOKENIZER_PROBE)["input_ids"]
    unknown = sum(1 for i in ids if i == tokenizer.unk_token_id)
    if tokenizer.unk_token_id is not None and 2 * unknown >= len(ids) - 1:
        raise CheckpointError(f"{path}: the tokenizer reads {unknown} of the {len(ids) - 1} pieces of the English "
                              f"sentence {TOKENIZER_PROBE!r} as <unk>: its vocabulary is not Flan-UL2's "
                              "(every prompt would give nearly the same video)")
    return tokenizer


def load_t5_tokenizer(path, *, vocab_size: int | None = None):
    """The T5 tokenizer of a Hugging Face folder, or the one embedded in our encoder-only
    safetensors (or, for a safetensors without one, the tokenizer files beside it).

    Raises :class:`CheckpointError` naming the folder and what is missing for a folder
    without ``tokenizer.json``/``spiece.model``, for ``spiece.model`` without sentencepiece
    or protobuf, and for a tokenizer :func:`check_t5_tokenizer` refuses (``vocab_size``: the
    rows of the encoder's token embedding, checked when given).
    """
    path = Path(path)
    if path.is_dir():
        tokenizer = _tokenizer_from_folder(path, f"the T5 folder {path}")
    else:
        tf = open_tensor_file(path)
        embedded = tf.metadata.get(META_TOKENIZER)
        if embedded is None:
            if not any((path.parent / n).is_file() for n in TOKENIZER_FILES):
                raise CheckpointError(f"{path}: no tokenizer embedded in the file nor beside it "
                                      f"({' or '.join(TOKENIZER_FILES)} in {path.parent}); convert the "
                                      "Flan-UL2 folder with tools/kv_convert.py t5, which embeds it")
            tokenizer = _tokenizer_from_folder(path.parent, f"{path} (no embedded tokenizer)")
        else:
            try:
                files = json.loads(embedded)
                if not isinstance(files, Mapping):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                raise CheckpointError(f"{path}: the tokenizer in its metadata ({META_TOKENIZER}) is not "
                                      f"readable: {err}") from None
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / Path(name).name).write_text(text)
                tokenizer = _tokenizer_from_folder(Path(tmp), f"the tokenizer embedded in {path}")
    return check_t5_tokenizer(tokenizer, path=path, vocab_size=vocab_size)


def tokenizer_files(tokenizer) -> dict[str, str]:
    """The text files of a tokenizer's ``save_pretrained`` (to embed in our metadata)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        out = {}
        for f in sorted(Path(tmp).iterdir()):
            try:
                out[f.name] = f.read_text()
            except UnicodeDecodeError:
                continue  # binary files (spiece.model): tokenizer.json carries the same model
        if "tokenizer.json" not in out:
            raise CheckpointError("the tokenizer could not be saved as tokenizer.json")
        return out
