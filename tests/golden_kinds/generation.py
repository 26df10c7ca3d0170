"""Golden runners for generation: the reference schedulers, the three sampling loops and
the whole pipeline. Everything comes from the case (configs, files, inputs, args,
recorded noises); the recorded draws are replayed in order through ``ReplayNoise``."""
from __future__ import annotations

import torch

from golden_support import GoldenCase, golden_kind

from kv_core.sampling.noise import ReplayNoise
from kv_core.stages import Hooks, stage_sampler

_SAMPLER_OF = {"base": "keyframes", "interp": "interpolation"}


@golden_kind("ddpm_scheduler")
def run_ddpm_scheduler(case: GoldenCase) -> dict:
    inputs, noise = case.inputs, ReplayNoise(case.noises)
    samplers = {label: stage_sampler(stage) for label, stage in _SAMPLER_OF.items()}
    out = {
        "base_timesteps": samplers["base"].timesteps,
        "base_alphas_cumprod": samplers["base"].alphas_cumprod,
        "interp_timesteps": samplers["interp"].timesteps,
        "interp_alphas_cumprod": samplers["interp"].alphas_cumprod,
    }
    for i, step in enumerate(case.args["steps"]):
        sampler = samplers[step["sampler"]]
        index = step["index"]
        assert int(sampler.timesteps[index]) == step["timestep"]
        sample = inputs[f"step{i}_sample"]
        eps = noise.randn(sample.shape) if sampler.needs_noise(index) else None
        result = sampler.step(inputs[f"step{i}_model_output"], index, sample, eps)
        out[f"step{i}_prev_sample"] = result.prev_sample
        out[f"step{i}_pred_original_sample"] = result.pred_original_sample
    noise.assert_consumed()
    out["add_noise_out"] = samplers["base"].add_noise(
        inputs["add_noise_key_frame"], inputs["add_noise_noise"], case.args["add_noise_timestep"])
    return out


# --- networks of a case -------------------------------------------------------------

def _load_unet(case: GoldenCase, config_key: str, filename: str):
    if config_key == "t2v":
        from kv_core.models.unet import KeyframeUNet as cls
    else:
        from kv_core.models.unet_interpolation import InterpolationUNet as cls
    unet = cls(**case.configs[config_key]["configs"], device="meta")
    checkpoint = torch.load(case.path(filename), map_location="cpu", weights_only=True)
    unet.load_state_dict(checkpoint["unet"], strict=True, assign=True)
    return unet.eval(), checkpoint["null_embedding"]


def _load_movq(case: GoldenCase, config_key: str, filename: str):
    from kv_core.models.movq import MoVQ

    movq = MoVQ(**case.configs[config_key]["configs"], device="meta")
    movq.load_state_dict(torch.load(case.path(filename), map_location="cpu", weights_only=True),
                         strict=True, assign=True)
    return movq.eval()


def _trace_outputs(trace: dict) -> dict:
    return {"debug_eps_steps": torch.stack(trace["eps"]), "debug_x_steps": torch.stack(trace["x"])}


# --- loops ---------------------------------------------------------------------------

@golden_kind("loop_first_frame")
def run_loop_first_frame(case: GoldenCase) -> dict:
    from kv_core.conditioning import TextCondition
    from kv_core.stages.first_frame import sample_first_frame

    unet, null = _load_unet(case, "t2v", "t2v.pt")
    inputs, noise, trace = case.inputs, ReplayNoise(case.noises), {}
    cond = TextCondition(inputs["context"], inputs["context_mask"])
    out = sample_first_frame(unet, cond, null, latent_size=tuple(case.args["shape"][-2:]),
                             guidance_scale=case.args["guidance_weight"], noise=noise, hooks=Hooks(trace=trace))
    noise.assert_consumed()
    return {"out": out, **_trace_outputs(trace)}


@golden_kind("loop_keyframes")
def run_loop_keyframes(case: GoldenCase) -> dict:
    from kv_core.conditioning import TextCondition
    from kv_core.stages.keyframes import sample_keyframes

    unet, null = _load_unet(case, "t2v", "t2v.pt")
    inputs, args, noise, trace = case.inputs, case.args, ReplayNoise(case.noises), {}
    cond = TextCondition(inputs["context"], inputs["context_mask"])
    out = sample_keyframes(unet, cond, null, inputs["key_frame"], num_frames=args["num_frames"],
                           guidance_weight_prompt=args["guidance_weight"],
                           guidance_weight_image=args["guidance_weight_image"],
                           motion_score=args["motion_score"], noise_augmentation=args["noise_augmentation"],
                           noise=noise, hooks=Hooks(trace=trace))
    noise.assert_consumed()
    return {"out": out, **_trace_outputs(trace)}


@golden_kind("loop_interpolation")
def run_loop_interpolation(case: GoldenCase) -> dict:
    from kv_core.conditioning import TextCondition
    from kv_core.stages.interpolation import assemble_interpolated, sample_interpolation

    unet, null = _load_unet(case, "interpolation", "interpolation.pt")
    inputs, args, noise, trace = case.inputs, case.args, ReplayNoise(case.noises), {}
    cond = TextCondition(inputs["context"], inputs["context_mask"])
    base = inputs["base_frames"]
    groups = sample_interpolation(unet, cond, null, base, skip_frames=args["skip_frames"],
                                  guidance_scale=args["guidance_scale"],
                                  perturbation_time=args["perturbation_time"],
                                  use_temporal_mask=args["use_temporal_mask"], noise=noise, hooks=Hooks(trace=trace))
    noise.assert_consumed()
    return {"interpolated": groups, "video": assemble_interpolated(base, groups), **_trace_outputs(trace)}


# --- pipeline ------------------------------------------------------------------------

@golden_kind("pipeline")
def run_pipeline(case: GoldenCase) -> dict:
    """The reference ``__call__`` with the text encoder replaced by the case's context.

    Two runs, both replaying the recorded draws in order:

    * a free run of the whole pipeline gives the results a user gets: ``frames`` and
      ``debug_keyframe_image`` (the first stage, which nothing feeds);
    * a teacher-forced run gives every other ``debug_*`` intermediate: each stage starts
      from the official value of the intermediate that feeds it, as the golden README
      describes for locating a difference. Every stage is thus held to its own tight
      tolerance, while a uint8 value that truncates one level differently (allowed in the
      image and in the frames) cannot push later float intermediates past theirs.

    The number of draws a stage makes does not depend on its inputs, so both runs consume
    the recorded noises in the same order.
    """
    import warnings

    from PIL import Image

    from kv_core import pipeline as kvp
    from kv_core import rules
    from kv_core.conditioning import TextCondition
    from kv_core.stages import first_frame, interpolation, keyframes

    args, inputs, expected = case.args, case.inputs, case.expected
    unet, null = _load_unet(case, "t2v", "t2v.pt")
    interp, interp_null = _load_unet(case, "interpolation", "interpolation.pt")
    movq = _load_movq(case, "image_movq", "movq.pt")
    video_movq = _load_movq(case, "video_movq", "video_movq.pt")
    cond = TextCondition(inputs["context"], inputs["context_mask"])
    image = None
    if args.get("image"):
        with Image.open(case.path(args["image"])) as im:
            image = im.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        motion = keyframes.reference_motion_score(args["motion"])
    size = dict(width=args["width"], height=args["height"])
    keyframe_settings = dict(num_keyframes=args["num_frames"], motion=motion,
                             noise_augmentation=args["noise_augmentation"],
                             guidance_weight_prompt=args["guidance_weight_prompt"],
                             guidance_weight_image=args["guidance_weight_image"])

    # free run: the pipeline as a user calls it
    pipe = kvp.KandinskyVideoPipeline(unet=unet, null_embedding=null, interpolation_unet=interp,
                                      interpolation_null_embedding=interp_null, movq=movq,
                                      video_movq=video_movq)
    noise = ReplayNoise(case.noises)
    result = pipe(conditioning=cond, image=image, noise=noise, return_intermediates=True,
                  fps=args["fps"], key_frame_guidance_scale=args["key_frame_guidance_scale"],
                  interpolation_guidance_scale=args["interpolation_guidance_scale"],
                  **size, **keyframe_settings)
    noise.assert_consumed()
    out = {"frames": result.frames}
    if "keyframe_image" in result.intermediates:
        out["debug_keyframe_image"] = result.intermediates["keyframe_image"]

    # teacher-forced run: each stage from the official value that feeds it
    noise = ReplayNoise(case.noises)
    if image is None:
        first_frame.generate_first_frame(unet, null, cond, guidance_scale=args["key_frame_guidance_scale"],
                                 noise=noise, **size)  # consumes the first-frame draws
        image = Image.fromarray(expected["debug_keyframe_image"].numpy())
    out["debug_keyframe_latent"] = first_frame.encode_first_frame(movq, image, **size)
    out["debug_base_frames"] = keyframes.generate_keyframes(unet, null, cond, expected["debug_keyframe_latent"],
                                                      noise=noise, **keyframe_settings)
    feed = expected["debug_base_frames"]
    for pass_index in range(1, rules.FPS_PASSES[args["fps"]] + 1):
        name = f"debug_interpolated_{pass_index}"
        out[name] = interpolation.interpolate_frames(interp, interp_null, cond, feed, pass_index=pass_index,
                                           guidance_scale=args["interpolation_guidance_scale"], noise=noise)
        feed = expected[name]
    noise.assert_consumed()
    return out
