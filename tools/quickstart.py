"""Quick start: install everything, run the text-to-video workflow in a real ComfyUI, print
the path of the video.

    python3 -m tools.quickstart [--models DIR] [--prompt TEXT] [--workflow 8fps|32fps|i2v]

1. Environment: unless it already runs inside one, it creates ``.venv`` (``$KV_VENV``),
   installs torch/torchvision and the pack's ``requirements.txt`` there (each step only
   when missing) and re-runs itself with that interpreter.
2. ComfyUI: ``$COMFYUI_PATH`` or the pinned ComfyUI 0.3.75 (obtained once into
   ``.cache/comfyui`` with its requirements; see tools/harness/install.py).
3. Models: the Kandinsky Video 1.1 release files (``t2v.pt``, ``interpolation.pt``,
   ``movq.pt``, ``video_movq.pt``, ``t5_projections.pt``, ``configs.json`` and the
   ``google/flan-ul2`` folder) from ``--models``, ``$KV_MODELS``,
   ``$COMFYUI_PATH/models/kandinsky_video`` or ``models/kandinsky_video`` here. If they are
   not all there, a tiny random-weight release in the official formats (kv_core.tiny) is
   written instead — the video is then a wiring check, not a real generation.
4. It starts ComfyUI with this pack (on the GPU when there is one and the real files are
   used), runs ``workflows/kandinsky_video_text_to_video_8fps.json`` headless through the
   HTTP API, stops the server and prints the path of the video file.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = {
    "8fps": "kandinsky_video_text_to_video_8fps",
    "8fps-lowvram": "kandinsky_video_text_to_video_8fps_low_vram",
    "32fps": "kandinsky_video_text_to_video_32fps",
    "i2v": "kandinsky_video_image_to_video",
}
RELEASE = ("t2v.pt", "interpolation.pt", "movq.pt", "video_movq.pt", "t5_projections.pt")
#: the text encoder as the README lays it out: the google/flan-ul2 folder, or the encoder-only
#: file its step 3 writes; beside the release or in ComfyUI's models/text_encoders/
TEXT_ENCODERS = ("flan-ul2", "google/flan-ul2", "flan_ul2_encoder_bf16.safetensors",
                 "flan_ul2_encoder_fp8.safetensors", "flan-ul2-encoder.safetensors")


def find_encoder(folder: Path) -> Path | None:
    """The text encoder of the release in ``folder``: in it, or in ``../text_encoders/``."""
    for where in (folder, folder.parent / "text_encoders"):
        for name in TEXT_ENCODERS:
            if (where / name).exists():
                return where / name
    return None


def say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


# --------------------------------------------------------------------------- environment

def _venv_dir() -> Path:
    return Path(os.environ.get("KV_VENV") or REPO / ".venv")


def _in_venv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def _missing(python: str, modules: str) -> bool:
    return subprocess.run([python, "-c", f"import {modules}"], capture_output=True).returncode != 0


def ensure_environment(argv: list[str]) -> None:
    """Make sure the packages are there; re-exec inside .venv when started outside one."""
    if not _in_venv():
        venv = _venv_dir()
        python = venv / "bin" / "python"
        if not python.exists():
            say(f"creating the virtual environment {venv}")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        os.execv(str(python), [str(python), "-m", "tools.quickstart", *argv])
    python = sys.executable
    if _missing(python, "torch, torchvision"):
        say("installing torch and torchvision (the PyPI builds run with or without a GPU; a few GB)")
        _pip(python, "torch", "torchvision")
    if _missing(python, "transformers, safetensors, sentencepiece, google.protobuf, PIL, numpy, requests, websocket"):
        say("installing the pack's requirements and the harness's (tools/requirements.txt)")
        _pip(python, "-r", str(REPO / "requirements.txt"), "-r", str(REPO / "tools" / "requirements.txt"))


# --------------------------------------------------------------------------- models

def find_release(explicit: str | None) -> Path | None:
    """A folder holding the whole release, or None."""
    candidates = [explicit, os.environ.get("KV_MODELS")]
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(str(Path(os.environ["COMFYUI_PATH"]) / "models" / "kandinsky_video"))
    candidates.append(str(REPO / "models" / "kandinsky_video"))
    if REPO.parent.name == "custom_nodes":  # the pack inside a ComfyUI: that ComfyUI's models/
        candidates.append(str(REPO.parent.parent / "models" / "kandinsky_video"))
    for c in candidates:
        if not c:
            continue
        folder = Path(c).expanduser().resolve()
        missing = [n for n in RELEASE if not (folder / n).is_file()]
        encoder = find_encoder(folder)
        if not missing and encoder is not None:
            return folder
        if explicit and c == explicit:
            what = ", ".join(missing + ([] if encoder else [
                f"a text encoder ({' or '.join(TEXT_ENCODERS)}, here or in {folder.parent / 'text_encoders'})"]))
            raise SystemExit(f"{folder} lacks {what}")
    return None


def release_entries(folder: Path) -> tuple[list[Path], str]:
    """(files and folders to link into models/kandinsky_video/, the text encoder's name there)."""
    entries = [folder / n for n in (*RELEASE, "configs.json") if (folder / n).exists()]
    encoder = find_encoder(folder)
    return entries + [encoder], encoder.name


# --------------------------------------------------------------------------- the run

def prepare_prompt(host, name: str, *, prompt_text: str | None, steps: int | None, size: int | None,
                   encoder_name: str, seed: int) -> dict:
    workflow = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    prompt = copy.deepcopy(host.to_api(workflow))
    for node in prompt.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "KandinskyVideoTextEncode" and prompt_text:
            inputs["prompt"] = prompt_text
        if kind == "KandinskyVideoTextEncoderLoader":
            inputs["text_encoder_name"] = encoder_name
        if kind.startswith("KandinskyVideo"):
            if steps is not None and "steps" in inputs:
                inputs["steps"] = steps
            if size is not None:
                for key in ("width", "height"):
                    if key in inputs:
                        inputs[key] = size
            if "seed" in inputs:
                inputs["seed"] = seed
    return prompt


def _at_least(lo: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be {lo} or more, got {value}")
        return value
    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="folder with the Kandinsky Video 1.1 release files")
    parser.add_argument("--prompt", help="prompt for the video (default: the workflow's)")
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="8fps",
                        help="shipped workflow to run (default 8fps: text-to-video, 45 frames)")
    parser.add_argument("--steps", type=_at_least(1), help="override every sampling node's steps (1 or more)")
    parser.add_argument("--size", type=_at_least(8),
                        help="override the video width and height (a size the networks take: multiples of 64 "
                             "for the release, 32 for the tiny wiring-check release)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU even with a GPU")
    parser.add_argument("--out", default=str(REPO / ".cache" / "quickstart"),
                        help="folder for the ComfyUI base directory (outputs, log) of this run")
    args = parser.parse_args(argv)

    ensure_environment(argv)
    import torch

    from tools import harness

    say("preparing ComfyUI")
    comfyui = harness.ensure_comfyui()
    out = Path(args.out).resolve()
    release = find_release(args.models)
    if release is not None:
        say(f"using the Kandinsky Video 1.1 release in {release}")
        entries, encoder = release_entries(release)
        steps, size = args.steps, args.size
        wiring_check = False
    else:
        from kv_core.tiny import write_tiny_release

        release = out / "tiny_release"
        if not (release / "flan-ul2").is_dir():
            write_tiny_release(release)
        entries, encoder = release_entries(release)
        steps = args.steps if args.steps is not None else 4
        size = args.size if args.size is not None else 256
        wiring_check = True
        say("NO Kandinsky Video 1.1 files found (put t2v.pt, interpolation.pt, movq.pt, video_movq.pt, "
            "t5_projections.pt, configs.json and the google/flan-ul2 folder into models/kandinsky_video/ "
            "or pass --models DIR).")
        say(f"Using a tiny RANDOM-WEIGHT release in the official formats ({release}): the video is a "
            "WIRING CHECK of ComfyUI + this pack, not a real generation — expect noise.")
    base = out / "comfyui-base"
    if base.exists():
        shutil.rmtree(base / "models" / "kandinsky_video", ignore_errors=True)
    gpu = torch.cuda.is_available() and not args.cpu and not wiring_check
    host = harness.ComfyHost(comfyui, base_dir=base, models={"kandinsky_video": entries}, cpu=not gpu)
    example = Path(comfyui) / "input" / "example.png"
    (base / "input").mkdir(parents=True, exist_ok=True)
    if example.is_file():
        shutil.copy(example, base / "input" / "example.png")
    say(f"starting ComfyUI ({'GPU' if gpu else 'CPU'}) with the pack")
    host.start()
    try:
        problems = host.pack_import_problems()
        if problems:
            say("the pack reported problems while loading:\n  " + "\n  ".join(problems))
        name = WORKFLOWS[args.workflow]
        prompt = prepare_prompt(host, name, prompt_text=args.prompt, steps=steps, size=size,
                                encoder_name=encoder, seed=args.seed)
        say(f"running workflows/{name}.json" + (f" (steps {steps}, {size}x{size})" if wiring_check else ""))
        t0 = time.monotonic()
        result = host.run(prompt, timeout=6 * 3600)
        if not result.ok:
            say("the workflow failed:\n" + result.describe() + "\n--- ComfyUI log ---\n" + host.log_tail())
            return 1
        videos = [p for p in host.output_files(result) if p.suffix in (".mp4", ".webm", ".webp")]
        say(f"done in {time.monotonic() - t0:.0f} s")
    finally:
        host.stop()
    if not videos:
        say("the workflow ran but wrote no video")
        return 1
    if wiring_check:
        say("this video comes from RANDOM weights: a wiring check, not a real generation")
    print(videos[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
