"""Where the Kandinsky Video model files live and how a loader's choice becomes a path.

The ``models/kandinsky_video/`` folder (registered with ComfyUI's ``folder_paths``), the
text-encoder folders (also ``models/text_encoders/``), and errors that name the file, the
network and the folders searched.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import folder_paths

from ..kv_core import checkpoints as ckpt
from ..kv_core.kinds import NETWORK_NAMES

MODEL_FOLDER = "kandinsky_video"
TEXT_ENCODER_FOLDERS = (MODEL_FOLDER, "text_encoders")


def register_model_folder() -> None:
    """Register ``models/kandinsky_video/`` (idempotent; extra paths from
    ``extra_model_paths.yaml`` under the key ``kandinsky_video`` are kept)."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, default, is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    # a key created by add_model_folder_path lists every file; keep checkpoints only
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))
    with contextlib.suppress(OSError):
        os.makedirs(default, exist_ok=True)


register_model_folder()

# what each loader expects, for the error messages and tooltips
EXPECTED_FILES = {
    ckpt.KEYFRAME_UNET: "t2v.pt (or its .safetensors conversion)",
    ckpt.INTERPOLATION_UNET: "interpolation.pt (or its .safetensors conversion)",
    ckpt.MOVQ: "movq.pt (or its .safetensors conversion)",
    ckpt.VIDEO_MOVQ: "video_movq.pt (or its .safetensors conversion)",
    ckpt.TEXT_PROJECTIONS: "t5_projections.pt (or its .safetensors conversion)",
    ckpt.T5_ENCODER: "a Flan-UL2 folder (google/flan-ul2: config.json, weights, tokenizer) "
                     "or our encoder-only .safetensors",
}


def model_files() -> list[str]:
    """Checkpoint files under the ``kandinsky_video`` model folders (relative names)."""
    return folder_paths.get_filename_list(MODEL_FOLDER)


def _folders(keys) -> list[str]:
    out = []
    for key in keys:
        with contextlib.suppress(KeyError):
            out += [p for p in folder_paths.get_folder_paths(key) if p not in out]
    return out


def text_encoder_choices() -> list[str]:
    """Text encoders under ``models/kandinsky_video/`` and ``models/text_encoders/``:
    Hugging Face T5 folders (a folder with ``config.json``, up to two levels deep) and
    ``.safetensors`` files outside such folders."""
    names: list[str] = []
    for base in _folders(TEXT_ENCODER_FOLDERS):
        if not os.path.isdir(base):
            continue
        hf_dirs = []
        for root, dirs, files in os.walk(base, followlinks=True):
            rel = os.path.relpath(root, base)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if depth > 0 and "config.json" in files:
                hf_dirs.append(rel)
                dirs[:] = []  # the weights inside are part of this folder
                continue
            if depth >= 2:
                dirs[:] = []
            names += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files) if f.endswith(".safetensors")]
        names += [d.replace(os.sep, "/") for d in hf_dirs]
    return sorted(dict.fromkeys(n.replace(os.sep, "/") for n in names))


class ModelFileError(FileNotFoundError):
    """A model file that is not where the loader looks."""


def missing_file_message(name: str, network: str, keys=(MODEL_FOLDER,)) -> str:
    folders = _folders(keys)
    return (f"{NETWORK_NAMES[network]} file '{name}' was not found. Expected "
            f"{EXPECTED_FILES[network]}. Folders searched: {', '.join(folders) or '(none)'}. "
            f"Put the file into models/{keys[0]}/ and press R (refresh) in ComfyUI.")


def resolve_model_file(name: str, network: str) -> str:
    """Full path of a checkpoint chosen in a loader (raises :class:`ModelFileError`)."""
    path = folder_paths.get_full_path(MODEL_FOLDER, name) if isinstance(name, str) and name else None
    if path is None:
        raise ModelFileError(missing_file_message(name, network))
    return path


def _inside(base: str, path: str) -> bool:
    """``path`` lies inside ``base`` by name (``..``, absolute and drive names lead out;
    links placed in a model folder are followed, as ComfyUI's own model lists do)."""
    real_base = os.path.abspath(base)
    real = os.path.abspath(path)
    try:
        return os.path.commonpath([real_base, real]) == real_base and real != real_base
    except ValueError:  # another drive
        return False


def resolve_text_encoder(name: str) -> str:
    """Full path of a text encoder folder or file from :func:`text_encoder_choices`."""
    if isinstance(name, str) and name:
        rel = os.path.normpath(name.replace("/", os.sep))
        for base in _folders(TEXT_ENCODER_FOLDERS):
            path = os.path.join(base, rel)
            if not _inside(base, path):
                continue  # a name never leads out of the model folders
            if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
                return path
            if os.path.isfile(path):
                return path
    raise ModelFileError(missing_file_message(name, ckpt.T5_ENCODER, TEXT_ENCODER_FOLDERS))


def release_configs(path: str) -> Optional[str]:
    """``configs.json`` of the release a checkpoint belongs to: beside the file or in a
    parent folder up to the model folder. None when there is none (official values and
    the checkpoint's shapes are used, or the config stored in our safetensors)."""
    roots = [os.path.abspath(p) for p in _folders(TEXT_ENCODER_FOLDERS)]
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(4):
        candidate = os.path.join(folder, "configs.json")
        if os.path.isfile(candidate):
            return candidate
        if folder in roots or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    return None


def check_model_name(name, network: str):
    """For ``validate_inputs``: True, or the message of a missing file."""
    if name is None:  # linked from another node: checked when it runs
        return True
    if not isinstance(name, str) or folder_paths.get_full_path(MODEL_FOLDER, name) is None:
        return missing_file_message(str(name), network)
    return True
