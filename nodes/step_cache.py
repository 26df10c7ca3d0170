"""Step Cache: the settings of DeepCache-style step caching (``kv_core.sampling.step_cache``) for the
stage nodes' optional ``step_cache`` input; Apply Step Cache: the same cache on a core
MODEL (the core sampling path)."""
from __future__ import annotations

from comfy_api.latest import io

from ..kv_core.sampling.step_cache import DEFAULT_START_STEP, MAX_INTERVAL, StepCacheSettings
from .host import sockets
from .host.unet_model import KandinskyVideoModel, apply_step_cache
from .host.inputs import CATEGORY

DESCRIPTION = (
    "Faster sampling for Kandinsky Video Keyframes, First Frame, Extend and Interpolate (connect it to "
    "their step_cache input): the U-Net runs in full only every `interval` steps; the steps in between "
    "recompute only its outer levels and reuse the deep features of the last full step (DeepCache, "
    "CVPR 2024). The result differs slightly from the uncached one. Published figures for other U-Nets "
    "with real weights: Stable Diffusion 1.5 2.3x faster (CLIP score -0.05), Stable Video Diffusion "
    "1.7x. For Kandinsky Video only speed is measured (the keyframes at interval 3: 18 full + 32 cached "
    "steps, about 2.5x less CPU time with the release's network sizes and random weights): compare your "
    "video with an uncached run. Without this node every step runs in full, as the release."
)


class KandinskyVideoStepCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoStepCache",
            display_name="Kandinsky Video Step Cache",
            category=f"{CATEGORY}/sampling",
            description=DESCRIPTION,
            inputs=[
                io.Int.Input("interval", default=3, min=1, max=MAX_INTERVAL,
                             tooltip="A full U-Net forward every this many steps; the steps between reuse its "
                                     "deep features. 1: no caching. 2-3 keep close to the uncached result, "
                                     "5 is faster and drifts more."),
                io.Int.Input("branch", default=0, min=0, max=2,
                             tooltip="Which skip connection stays computed on cached steps: 0 recomputes only "
                                     "the outermost level (fastest), 2 the three outer levels of the release's "
                                     "four (slowest, closest to the uncached result)."),
                io.Int.Input("start_step", default=DEFAULT_START_STEP, min=0, max=10000,
                             tooltip="Steps before this one (counted from 0) always run in full: the first "
                                     "steps shape the video."),
                io.Int.Input("end_step", default=-1, min=-1, max=10000,
                             tooltip="Last step that may be cached (-1: up to the last step); later steps run "
                                     "in full."),
            ],
            outputs=[sockets.StepCache.Output(display_name="step_cache",
                                              tooltip="To the step_cache input of a Kandinsky Video stage node.")],
        )

    # No validate_inputs (a message would show under every input it takes): an end_step
    # before start_step is refused when the node runs, naming both.

    @classmethod
    def execute(cls, interval, branch, start_step, end_step) -> io.NodeOutput:
        return io.NodeOutput(StepCacheSettings(interval=interval, branch=branch, start_step=start_step,
                                               end_step=end_step))


class KandinskyVideoApplyStepCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoApplyStepCache",
            display_name="Kandinsky Video Apply Step Cache",
            category=f"{CATEGORY}/core sampling",
            description=("The step cache of Kandinsky Video Step Cache on a core MODEL (Keyframe Model or "
                         "Interpolation Model) for the core sampling path: every sampling run with the returned "
                         "MODEL runs the U-Net in full only every `interval` steps (a step is found from its sigma "
                         "in the run's sigmas) and logs its full and cached steps. Core EasyCache and LazyCache "
                         "also work on these MODELs."),
            inputs=[
                io.Model.Input("model", tooltip="From Kandinsky Video Keyframe Model or Interpolation Model."),
                sockets.StepCache.Input("step_cache", tooltip="From Kandinsky Video Step Cache."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with the step cache (a clone).")],
        )

    @classmethod
    def execute(cls, model, step_cache) -> io.NodeOutput:
        if not isinstance(getattr(model, "model", None), KandinskyVideoModel):
            raise ValueError("Kandinsky Video Apply Step Cache: the MODEL is not a Kandinsky Video U-Net; connect "
                             "Kandinsky Video Keyframe Model or Interpolation Model (other models have their own "
                             "caching nodes, e.g. core EasyCache)")
        return io.NodeOutput(apply_step_cache(model, step_cache))


NODES = [KandinskyVideoStepCache, KandinskyVideoApplyStepCache]
