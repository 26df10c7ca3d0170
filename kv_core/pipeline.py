"""Kandinsky Video 1.1, the whole pipeline: :class:`KandinskyVideoPipeline` holds the networks
of a release and runs the stages of :mod:`kv_core.stages` in order (text, first frame,
keyframes, interpolation, decode).

``__call__`` takes either a prompt (with a text encoder) or a precomputed ``TextCondition``
and returns a ``VideoResult`` (uint8 frames, frame rate and, on request, the intermediate
values). Randomness and what a seed guarantees: see :mod:`kv_core.stages`.

The stages live in ``kv_core.stages`` (one module each) and the rules that span them in
``kv_core.rules``. Sizes: which widths and heights run follows from the networks
(``size_rule``: the MoVQ factor times the U-Nets' halvings, 64 for the release),
checked before any network runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import numpy as np
import torch

from .checks import check_guidance, is_int
from .conditioning import TextCondition
from .image import RESIZE_MODES, to_pil
from .models.movq import to_uint8_frames
from .rules import (FPS_PASSES, REFERENCE_KEYFRAMES, SizeRule, check_num_keyframes, check_size, fps_passes,
                    frame_rate, size_rule)
from .sampling.loop import CancelFn, check_cancel
from .sampling.noise import check_seed
from .sampling.schedulers import check_sampler
from .stages import STAGES, Hooks
from .stages.decode import decode_frames
from .stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame
from .stages.interpolation import interpolate_frames
from .stages.keyframes import check_noise_augmentation, generate_keyframes, motion_score
from .stages.text import encode_prompt
from .sampling.step_cache import check_step_cache

__all__ = ["GenerationSettings", "SETTING_NAMES", "VideoResult", "StageProgress", "KandinskyVideoPipeline"]


@dataclass
class GenerationSettings:
    """Every control of a generation, with the reference's defaults. ``None`` steps mean
    the stage's reference count (50, 50, 10). ``<stage>_step_cache``: DeepCache-style step
    caching of that stage (``kv_core.sampling.step_cache.StepCacheSettings`` or a dict of its
    fields); None, the default, runs every step in full."""

    width: int = 512
    height: int = 512
    num_keyframes: int = REFERENCE_KEYFRAMES
    fps: str = "low"
    motion: object = "medium"
    noise_augmentation: int = 20
    key_frame_guidance_scale: float = 5.0
    guidance_weight_prompt: float = 5.0
    guidance_weight_image: float = 2.0
    interpolation_guidance_scale: float = 0.5
    first_frame_sampler: str = "ddpm"
    first_frame_steps: Optional[int] = None
    keyframes_sampler: str = "ddpm"
    keyframes_steps: Optional[int] = None
    interpolation_sampler: str = "ddpm"
    interpolation_steps: Optional[int] = None
    image_mode: str = "reference"
    first_frame_step_cache: object = None
    keyframes_step_cache: object = None
    interpolation_step_cache: object = None

    def validate(self) -> "GenerationSettings":
        check_size(self.width, self.height)
        check_num_keyframes(self.num_keyframes)
        fps_passes(self.fps)
        motion_score(self.motion)
        check_noise_augmentation(self.noise_augmentation)
        for name in ("key_frame_guidance_scale", "guidance_weight_prompt", "guidance_weight_image",
                     "interpolation_guidance_scale"):
            check_guidance(name, getattr(self, name))
        for stage in STAGES:
            check_sampler(stage, getattr(self, f"{stage}_sampler"), getattr(self, f"{stage}_steps"))
        for stage in ("first_frame", "keyframes", "interpolation"):
            setattr(self, f"{stage}_step_cache", check_step_cache(getattr(self, f"{stage}_step_cache")))
        if self.image_mode not in RESIZE_MODES:
            raise ValueError(f"image_mode must be one of {RESIZE_MODES}, got {self.image_mode!r}")
        return self


SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))


@dataclass
class VideoResult:
    frames: torch.Tensor            # uint8 [F, H, W, 3], CPU
    fps: float
    intermediates: dict = field(default_factory=dict)


StageProgress = Callable[[str, int, int, Optional[torch.Tensor]], None]


class KandinskyVideoPipeline:
    """The networks of a release, run in order by ``__call__`` or stage by stage.

    ``text_encoder`` is optional: without it (and without ``load_text_encoder``)
    ``__call__`` needs ``conditioning``. ``load_text_encoder``: a function that returns the
    text encoder, called on first need (the first prompt that is not in ``prompt_cache``, or
    the first read of :attr:`text_encoder`). ``prompt_cache`` (a
    :class:`kv_core.prompt_cache.PromptCache`) with ``text_identity`` (the
    :class:`~kv_core.text_identity.TextIdentity` of the text parts) keeps encoded prompts on
    disk, so a known prompt never loads the encoder.
    """

    def __init__(self, *, unet, null_embedding, interpolation_unet, interpolation_null_embedding,
                 movq, video_movq, text_encoder=None, load_text_encoder: Optional[Callable[[], object]] = None,
                 prompt_cache=None, text_identity=None):
        self.unet = unet
        self.null_embedding = null_embedding
        self.interpolation_unet = interpolation_unet
        self.interpolation_null_embedding = interpolation_null_embedding
        self.movq = movq
        self.video_movq = video_movq
        self._text_encoder = text_encoder
        self._load_text_encoder = load_text_encoder
        self.prompt_cache = prompt_cache
        self.text_identity = text_identity
        self.prompt_cache_hit: Optional[bool] = None  # whether the last encode_prompt was served by the cache

    @property
    def text_encoder(self):
        """The text encoder, loaded now if it is not yet (None when the pipeline has none)."""
        if self._text_encoder is None and self._load_text_encoder is not None:
            self._text_encoder = self._load_text_encoder()
        return self._text_encoder

    @text_encoder.setter
    def text_encoder(self, value) -> None:
        self._text_encoder, self._load_text_encoder = value, None

    @property
    def has_text_encoder(self) -> bool:
        """True when the pipeline can encode prompts (the encoder loaded or loadable)."""
        return self._text_encoder is not None or self._load_text_encoder is not None

    @classmethod
    def from_release(cls, folder, *, device=None, unet_dtype=None, text_encoder_folder=None,
                     with_text_encoder: bool = True, prompt_cache=None,
                     text_encoder_dtype: torch.dtype = torch.float32) -> "KandinskyVideoPipeline":
        """Load a release folder in the official layout (``configs.json``, ``t2v.pt``,
        ``interpolation.pt``, ``movq.pt``, ``video_movq.pt``, ``t5_projections.pt`` and a
        T5 encoder folder, ``flan-ul2`` unless ``text_encoder_folder`` says otherwise, or
        an encoder file from ``kv_core.convert``).
        ``unet_dtype``: e.g. ``torch.float16`` for the U-Nets (the release's choice); the
        MoVQs stay float32 and the text encoder runs in ``text_encoder_dtype`` (float32, as
        the release; bfloat16 halves its memory). The text encoder is loaded on first need
        (:attr:`text_encoder`); ``prompt_cache`` (a :class:`kv_core.prompt_cache.PromptCache`
        or a folder) serves known prompts without loading it. The ``text_encoder`` section of
        configs.json is checked as :func:`kv_core.checkpoints.text_settings` does
        (``CheckpointError``) and its ``context_dim`` against the projections (``ValueError``,
        when the encoder is loaded)."""
        from pathlib import Path

        from .checkpoints import (load_interpolation_unet, load_keyframe_unet, load_movq, load_text_projections,
                                  text_settings)
        from .text import TextEncoder, check_text_parts

        folder = Path(folder)
        configs = folder / "configs.json"
        configs = configs if configs.exists() else None
        if with_text_encoder:  # a bad text_encoder section fails before the big reads
            tokens_length, context_dim = text_settings(configs)
        unet, null = load_keyframe_unet(folder / "t2v.pt", configs, device=device, dtype=unet_dtype)
        interp, interp_null = load_interpolation_unet(folder / "interpolation.pt", configs, device=device,
                                                      dtype=unet_dtype)
        load_text, identity = None, None
        if with_text_encoder:
            encoder_path = Path(text_encoder_folder or folder / "flan-ul2")
            projections_path = folder / "t5_projections.pt"
            if not encoder_path.exists():
                raise FileNotFoundError(f"{encoder_path}: no such text encoder")
            # the projections are small: loaded and checked now, the encoder on first need
            projections = load_text_projections(projections_path, device=device, dtype=torch.float32)
            check_text_parts(None, projections, context_dim)

            def load_text():
                return TextEncoder.from_files(encoder_path, projections, device=device, dtype=text_encoder_dtype,
                                              tokens_length=tokens_length, context_dim=context_dim)

            if prompt_cache is not None:
                from .prompt_cache import PromptCache
                from .text_identity import TextIdentity

                if not isinstance(prompt_cache, PromptCache):
                    prompt_cache = PromptCache(prompt_cache)
                identity = TextIdentity.of_files(encoder_path, projections_path, tokens_length=tokens_length,
                                                 weight_dtype=text_encoder_dtype, context_dim=context_dim)
        return cls(unet=unet.eval(), null_embedding=null, interpolation_unet=interp.eval(),
                   interpolation_null_embedding=interp_null,
                   movq=load_movq(folder / "movq.pt", configs, video=False, device=device).eval(),
                   video_movq=load_movq(folder / "video_movq.pt", configs, video=True, device=device).eval(),
                   load_text_encoder=load_text, prompt_cache=prompt_cache, text_identity=identity)

    def size_rule(self, *, interpolation: bool = True) -> SizeRule:
        """The video sizes these networks run (:func:`size_rule`); without
        ``interpolation`` the interpolation U-Net (unused at fps "low") does not count."""
        return size_rule(movq=self.movq, video_movq=self.video_movq, unet=self.unet,
                         interpolation_unet=self.interpolation_unet if interpolation else None)

    def encode_prompt(self, prompt: str, negative_prompt: Optional[str] = None) -> TextCondition:
        """The ``projection_base`` condition of a prompt pair: from ``prompt_cache`` when it
        holds it (the encoder is not loaded), else encoded (and stored in the cache)."""
        if not self.has_text_encoder:
            raise ValueError("this pipeline has no text encoder: pass conditioning=TextCondition(...)")
        if self.prompt_cache is None or self.text_identity is None:
            self.prompt_cache_hit = None
            return encode_prompt(self.text_encoder, prompt, negative_prompt)
        from .prompt_cache import encode_prompt_cached

        entry, self.prompt_cache_hit = encode_prompt_cached(
            self._text_encoder, prompt, negative_prompt, load_text_encoder=lambda: self.text_encoder,
            identity=self.text_identity, cache=self.prompt_cache)
        return entry.condition

    def __call__(
        self, prompt: Optional[str] = None, *, negative_prompt: Optional[str] = None,
        conditioning: Optional[TextCondition] = None, image=None, noise=0,
        progress: StageProgress | None = None, cancel: CancelFn | None = None,
        return_intermediates: bool = False, **settings,
    ) -> VideoResult:
        """Generate a video. ``settings``: the fields of ``GenerationSettings``
        (width, height, num_keyframes, fps, motion, noise_augmentation, the four guidance
        weights, ``<stage>_sampler``/``<stage>_steps``/``<stage>_step_cache``, image_mode). ``image``: a picture
        for image-to-video (PIL, array or tensor), else the first frame is generated.
        ``noise``: seed (int) or noise source. ``progress(stage, step, total, latent)``."""
        unknown = set(settings) - set(SETTING_NAMES)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; known: {SETTING_NAMES}")
        s = GenerationSettings(**settings).validate()
        if conditioning is None:
            if not isinstance(prompt, str):
                raise ValueError("give a prompt (string) or conditioning=TextCondition(...)")
            if not self.has_text_encoder:
                raise ValueError("this pipeline has no text encoder: pass conditioning=TextCondition(...)")
        elif not isinstance(conditioning, TextCondition):
            raise ValueError("conditioning must be a kv_core.conditioning.TextCondition")
        if image is not None:
            # converted once, here: fails fast on a wrong type or an empty picture, and the
            # encoding gets plain sRGB pixels (no second file read, warning or colour conversion)
            image = np.asarray(to_pil(image))
        if is_int(noise):
            check_seed(int(noise))
        self.size_rule(interpolation=FPS_PASSES[s.fps] > 0).check(s.width, s.height)

        def hook(stage):
            if progress is None:
                return None
            return lambda step, total, latent: progress(stage, step, total, latent)

        info: dict = {}
        with torch.inference_mode():
            cond = conditioning if conditioning is not None else self.encode_prompt(prompt, negative_prompt)
            if image is None:
                latent = generate_first_frame(
                    self.unet, self.null_embedding, cond, width=s.width, height=s.height,
                    guidance_scale=s.key_frame_guidance_scale, sampler=s.first_frame_sampler,
                    steps=s.first_frame_steps, noise=noise, movq=self.movq,
                    hooks=Hooks(progress=hook("first_frame"), cancel=cancel), step_cache=s.first_frame_step_cache)
                image = decode_first_frame(self.movq, latent)
                if return_intermediates:
                    info["first_frame_latent"], info["keyframe_image"] = latent, image
            check_cancel(cancel)
            key_latent = encode_first_frame(self.movq, image, width=s.width, height=s.height, mode=s.image_mode,
                                            layout="HWC")
            frames = generate_keyframes(
                self.unet, self.null_embedding, cond, key_latent, num_keyframes=s.num_keyframes,
                motion=s.motion, noise_augmentation=s.noise_augmentation,
                guidance_weight_prompt=s.guidance_weight_prompt, guidance_weight_image=s.guidance_weight_image,
                sampler=s.keyframes_sampler, steps=s.keyframes_steps, noise=noise,
                hooks=Hooks(progress=hook("keyframes"), cancel=cancel), step_cache=s.keyframes_step_cache)
            if return_intermediates:
                info["keyframe_latent"], info["base_frames"] = key_latent, frames
            for pass_index in range(1, FPS_PASSES[s.fps] + 1):
                frames = interpolate_frames(
                    self.interpolation_unet, self.interpolation_null_embedding, cond, frames,
                    pass_index=pass_index, guidance_scale=s.interpolation_guidance_scale,
                    sampler=s.interpolation_sampler, steps=s.interpolation_steps, noise=noise,
                    hooks=Hooks(progress=hook(f"interpolation_{pass_index}"), cancel=cancel),
                    step_cache=s.interpolation_step_cache)
                if return_intermediates:
                    info[f"interpolated_{pass_index}"] = frames
            decode_hook = None if progress is None else (lambda done, total: progress("decode", done, total, None))
            video = decode_frames(self.video_movq, frames, hooks=Hooks(progress=decode_hook, cancel=cancel))
            frames_uint8 = to_uint8_frames(video).cpu()
        return VideoResult(frames_uint8, frame_rate(int(frames_uint8.shape[0]), s.num_keyframes), info)
