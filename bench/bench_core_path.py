"""The two ways to sample, side by side on the same tiny random networks (fp32, CPU): the pack's
own loops and ComfyUI's core sampling (nodes/core_model.py + nodes/core_sampling.py),
imported in this process from the pinned ComfyUI.

Prints, per stage: time per step of each path (DDIM / core ``ddim``, median of repeats),
the largest difference of their results from the same initial noise, and the difference
core's ``zsnr`` schedule (last alphas_cumprod 4.8973451890853435e-08 instead of our 2**-24
floor) makes in sigmas and results.

    .venv/bin/python bench/bench_core_path.py [--size 64] [--steps 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH") or Path(os.environ.get("KV_CACHE_DIR", REPO / ".cache")) / "comfyui")


def load_pack():
    sys.path.insert(0, str(COMFYUI))
    from comfy.cli_args import args
    args.cpu = True
    import comfy.samplers  # noqa: F401
    spec = importlib.util.spec_from_file_location("kvpack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["kvpack"] = pack
    spec.loader.exec_module(pack)
    import kvpack.nodes.core_sampling  # noqa: F401
    return pack


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="video size in pixels (first frame: twice)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=12, help="keyframes (interpolation: that many frames in)")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    load_pack()
    import comfy.model_sampling
    import comfy.samplers
    from kvpack.kv_core import checkpoints as ck, tiny
    from kvpack.kv_core.conditioning import TextCondition
    from kvpack.kv_core.sampling.noise import ReplayNoise
    from kvpack.kv_core.sampling.schedulers import make_sampler
    from kvpack.kv_core.stages import schedule_sigmas
    from kvpack.kv_core.stages.first_frame import sample_first_frame
    from kvpack.kv_core.stages.interpolation import sample_interpolation
    from kvpack.kv_core.stages.keyframes import keyframe_augmentation_noise, sample_keyframes
    from kvpack.nodes import core_sampling as cs, networks, sockets

    g = torch.Generator().manual_seed(0)

    def net(kind):
        module, null = tiny.random_unet(kind, g)
        cpu = torch.device("cpu")
        return networks.wrap(module, kind, "tiny", torch.float32, load_device=cpu, offload_device=cpu,
                             null_embedding=null)

    kf, ip = net(ck.KEYFRAME_UNET), net(ck.INTERPOLATION_UNET)
    cond = TextCondition(torch.randn(1, 8, tiny.TINY_CONTEXT_DIM, generator=g), torch.tensor([[1] * 6 + [0] * 2]))

    class Text:
        def text_condition(self):
            return cond

    res = lambda r: r.result  # noqa: E731
    kmodel = res(cs.KandinskyVideoKeyframeModel.execute(keyframe_unet=kf))[0]
    imodel = res(cs.KandinskyVideoInterpolationModel.execute(interpolation_unet=ip))[0]
    s, n, steps = opts.size, opts.frames, opts.steps
    h = s // 8

    def start(sigmas, noise):
        sig = float(sigmas[0])
        return noise * (sig / math.sqrt(1 + sig * sig) if sig < 4000 else 1.0)

    def timed(fn):
        times, result = [], None
        for _ in range(opts.repeats):
            t = time.perf_counter()
            with torch.inference_mode():
                result = fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) / steps * 1000, result

    rows = []
    # first frame
    pos, neg, lat = res(cs.KandinskyVideoFirstFrameConditioning.execute(kmodel, Text(), s, s))
    sig = res(cs.KandinskyVideoSigmas.execute("first_frame", steps, "default"))[0]
    guider = res(cs.KandinskyVideoGuider.execute(kmodel, pos, neg, 5.0, 2.0, True))[0]
    noise = torch.randn(lat["samples"].shape, generator=g)
    t_core, core = timed(lambda: guider.sample(noise, lat["samples"], comfy.samplers.sampler_object("ddim"), sig,
                                               seed=0, disable_pbar=True))
    t_loop, loop = timed(lambda: sample_first_frame(
        kf.module, cond, kf.null_embedding, latent_size=(2 * h, 2 * h), sampler=make_sampler("ddim", steps),
        noise=ReplayNoise([start(sig, noise)])))
    rows.append(("first_frame", t_loop, t_core, float((core - loop).abs().max())))
    # keyframes
    key = torch.randn(4, h, h, generator=g) * 0.5
    pos, io_, neg, lat = res(cs.KandinskyVideoKeyframesConditioning.execute(
        kmodel, Text(), sockets.FirstFrameCondition(key, s, s), n, "medium", 20, 7))
    sig = res(cs.KandinskyVideoSigmas.execute("keyframes", steps, "default"))[0]
    guider = res(cs.KandinskyVideoGuider.execute(kmodel, pos, neg, 5.0, 2.0, True, io_))[0]
    noise = torch.randn(lat["samples"].shape, generator=g)
    t_core, core = timed(lambda: guider.sample(noise, lat["samples"], comfy.samplers.sampler_object("ddim"), sig,
                                               seed=0, disable_pbar=True))
    uniform = keyframe_augmentation_noise(7, n, h, h)
    t_loop, loop = timed(lambda: sample_keyframes(
        kf.module, cond, kf.null_embedding, key, num_frames=n, sampler=make_sampler("ddim", steps),
        noise=ReplayNoise([start(sig, noise)[0].movedim(1, 0), uniform]))[None].movedim(2, 1))
    rows.append(("keyframes", t_loop, t_core, float((core - loop).abs().max())))
    # interpolation
    frames = torch.randn(n, 4, h, h, generator=g) * 0.5
    video = sockets.video_latent(frames, n)
    pos, neg, lat = res(cs.KandinskyVideoInterpolationConditioning.execute(imodel, video, 3, Text()))
    sig = res(cs.KandinskyVideoSigmas.execute("interpolation", steps, "default"))[0]
    guider = res(cs.KandinskyVideoGuider.execute(imodel, pos, neg, 0.5, 2.0, True))[0]
    noise = torch.randn(lat["samples"].shape, generator=g)
    t_core, core = timed(lambda: guider.sample(noise, lat["samples"], comfy.samplers.sampler_object("ddim"), sig,
                                               seed=0, disable_pbar=True))
    t_loop, loop = timed(lambda: sample_interpolation(
        ip.module, cond, ip.null_embedding, frames, skip_frames=3,
        sampler=make_sampler("ddim", steps, prediction_type="v_prediction"),
        noise=ReplayNoise([noise[0].movedim(1, 0)]))[None].movedim(2, 1))
    rows.append(("interpolation", t_loop, t_core, float((core - loop).abs().max())))

    print(f"tiny networks, fp32, CPU, {torch.get_num_threads()} thread(s), size {s}, {steps} DDIM steps, "
          f"{n} keyframes")
    print(f"{'stage':<14} {'loop ms/step':>13} {'core ms/step':>13} {'core/loop':>10} {'max |diff|':>11}")
    for stage, a, b, d in rows:
        print(f"{stage:<14} {a:13.1f} {b:13.1f} {b / a:10.2f} {d:11.2e}")

    # core's zsnr option on the same cosine schedule
    class Settings:
        sampling_settings = {"beta_schedule": "cosine", "zsnr": True}

    zsnr = type("ZSNR", (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION), {})(Settings())
    ours = schedule_sigmas()
    rel = ((zsnr.sigmas[:-1] - ours[:-1]).abs() / ours[:-1]).max()
    print(f"\ncore zsnr sigmas vs ours: t < 999 max relative difference {float(rel):.2e}; "
          f"t = 999: {float(zsnr.sigmas[-1]):.1f} (core) vs {float(ours[-1]):.1f} (ours)")
    patched = imodel.clone()
    patched.add_object_patch("model_sampling", zsnr)
    ts = imodel.get_model_object("model_sampling").timestep(sig[:-1])
    sig_z = torch.cat([zsnr.sigmas[ts], sig.new_zeros(1)])
    guider_z = res(cs.KandinskyVideoGuider.execute(patched, pos, neg, 0.5, 2.0, True))[0]
    with torch.inference_mode():
        out_z = guider_z.sample(noise, lat["samples"], comfy.samplers.sampler_object("ddim"), sig_z, seed=0,
                                disable_pbar=True)
    print(f"interpolation ({steps} steps from t = 999) with core zsnr instead of our floor: max |diff| "
          f"{float((out_z - core).abs().max()):.2e} (core path) / {float((out_z - loop).abs().max()):.2e} (loop)")


if __name__ == "__main__":
    main()
