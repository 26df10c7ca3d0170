"""Peak host memory of Kandinsky Video Decode against the size of its output.

    python -m bench.bench_decode_memory                        # 477 frames of 640x360, each decode path
    python -m bench.bench_decode_memory --frames 237 --width 1280 --height 720 --paths encoded
    python -m bench.bench_decode_memory --decoder tiny --frames 45 --width 256 --height 144

The node (``nodes/decode.py``, with the pinned ComfyUI's modules in this process, ``--cpu``)
decodes one LATENT per decode path, each in a fresh process so that its peak resident set
(VmHWM, reset just before the node runs) is its own:

* ``encoded``: a video from Encode Video (``--width`` x ``--height``, fit ``pad``, as
  Interpolate passes it on: 120 input frames give 477), restored to the input's size;
* ``encoded-scale``: the same fitted with ``max_side`` 512 (``scale``), so every frame is
  resized back on the way out;
* ``release``: a batch of two generated videos (``--frames`` each, no fit);
* ``long``: a long video (a first segment of 12 keyframes) of ``--frames`` frames.

Reported: the output (the IMAGE batch, ``frames x H x W x 3 x 4`` bytes), the peak rise of
the resident set while the node ran, and their ratio. The decoder is the part this does not
measure: ``--decoder standin`` (default) is a stand-in with the video MoVQ's interface and
output size (a 1x1 convolution and an 8x nearest upsampling, a few MB per chunk), so the
numbers are the decode path's own copies; ``--decoder tiny`` runs kv_core's tiny random
video MoVQ (its activations add about one chunk at 32 channels: keep sizes small, it is
slow on a CPU). A real decoder on a GPU holds its activations in GPU memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tools.harness.inprocess import comfy_modules, comfyui_checkout, import_pack

REPO = Path(__file__).resolve().parents[1]
PATHS = ("encoded", "encoded-scale", "release", "long")


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _decoder(kind: str):
    import torch
    import torch.nn.functional as F

    if kind == "tiny":
        from kvpack.kv_core import tiny
        from kvpack.kv_core.checkpoints import VIDEO_MOVQ, build_network
        return build_network(VIDEO_MOVQ, tiny.TINY_VIDEO_MOVQ_CONFIG, device="cpu", dtype=torch.float32).eval()

    class StandIn(torch.nn.Module):
        """``decode([n, 4, h, w]) -> [n, 3, 8h, 8w]`` in about [-1, 1], cheaply."""

        downsampling_factor = 8

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(4, 3, 1)

        def decode(self, z):
            return torch.tanh(F.interpolate(self.proj(z), scale_factor=8, mode="nearest"))

    return StandIn().eval()


def measure(path: str, frames: int, width: int, height: int, decoder: str = "standin", chunk_size: int = 0) -> dict:
    """Run Decode once on ``path``'s latent in this process: output bytes, peak rise, ratio.
    Call it inside ``comfy_modules`` after ``import_pack`` (tools/harness/inprocess.py)."""
    import gc

    import torch

    gc.collect()
    from kvpack.kv_core.checkpoints import VIDEO_MOVQ
    from kvpack.kv_core.video_input import plan_fit
    from kvpack.nodes.decode import KandinskyVideoDecode
    from kvpack.nodes.host import networks
    from kvpack.nodes.host.latent import FIT_KEY, FPS_KEY

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    movq = networks.wrap(_decoder(decoder), VIDEO_MOVQ, decoder, torch.float32, load_device=cpu, offload_device=cpu)
    inputs = {}
    if path.startswith("encoded"):
        fit = plan_fit(width, height, 64, "pad" if path == "encoded" else "scale", 0 if path == "encoded" else 512)
        latent = {"samples": torch.randn(1, 4, frames, fit.net_height // 8, fit.net_width // 8),
                  FPS_KEY: 24.0 * 4, FIT_KEY: fit.to_dict()}
    else:
        h, w = -(-height // 64) * 64 // 8, -(-width // 64) * 64 // 8
        keyframes = (frames + 3) // 4
        if 4 * keyframes - 3 != frames:
            raise SystemExit(f"--frames {frames} is no interpolated video (4K - 3 frames) for the {path} path")
        latent = {"samples": torch.randn(2 if path == "release" else 1, 4, frames, h, w)}
        inputs = {"num_keyframes": keyframes, "segment_keyframes": 12 if path == "long" else 0}
        if path == "long" and keyframes <= 12:
            raise SystemExit("a long video needs more than 12 keyframes")
    # warm-up on two frames: kernels, the model management's first load, lazy imports
    small = dict(latent, samples=latent["samples"][:, :, :5].clone())
    KandinskyVideoDecode.execute(movq, small, chunk_size, **({"num_keyframes": 2} if inputs else {}))
    del small
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    result = KandinskyVideoDecode.execute(movq, latent, chunk_size, **inputs)
    peak = _vm("VmHWM")
    images = (result.result if hasattr(result, "result") else result)[0]
    output = images.numel() * images.element_size()
    rise = peak - before
    return {"path": path, "frames": int(images.shape[0]), "size": f"{images.shape[2]}x{images.shape[1]}",
            "output_bytes": output, "peak_rise_bytes": rise, "ratio": rise / output,
            "latent_bytes": latent["samples"].numel() * 4, "decoder": decoder, "chunk_size": chunk_size}


def run_child(path: str, args) -> dict:
    """:func:`measure` in a fresh interpreter (its own peak resident set)."""
    cmd = [sys.executable, "-m", "bench.bench_decode_memory", "--one", path, "--frames", str(args.frames), "--width", str(args.width),
           "--height", str(args.height), "--decoder", args.decoder, "--chunk-size", str(args.chunk_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{path}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=477, help="frames of each video (477: 120 input frames x4)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--decoder", choices=("standin", "tiny"), default="standin")
    parser.add_argument("--chunk-size", type=int, default=0, help="Decode's chunk_size (0: the release's chunks)")
    parser.add_argument("--json", action="store_true", help="one JSON object per path instead of the table")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every path in this process, one after another (VmHWM is reset before each; "
                             "quicker, for the tests), printing JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one or args.in_process:
        comfyui = comfyui_checkout()
        if comfyui is None:
            raise SystemExit("no ComfyUI checkout: set COMFYUI_PATH or run scripts/test.sh once")
        with comfy_modules(comfyui):  # the pinned ComfyUI's modules (--cpu) and this pack as ``kvpack``
            import_pack()
            for path in [args.one] if args.one else args.paths:
                print(json.dumps(measure(path, args.frames, args.width, args.height, args.decoder,
                                         args.chunk_size)), flush=True)
        return 0
    if not args.json:
        print(f"Decode, {args.frames} frames of {args.width}x{args.height}, {args.decoder} decoder, "
              f"chunk_size {args.chunk_size}, CPU, one process per path")
        print(f"{'path':>14} {'frames':>7} {'size':>10} {'output MB':>10} {'peak rise MB':>13} {'ratio':>6}")
    for path in args.paths:
        row = run_child(path, args)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{path:>14} {row['frames']:>7} {row['size']:>10} {row['output_bytes'] / 1e6:>10.1f} "
                  f"{row['peak_rise_bytes'] / 1e6:>13.1f} {row['ratio']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
