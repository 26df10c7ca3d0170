"""How the nodes present themselves where the host supports it: expert inputs folded away
(``advanced``) and search aliases (``search_aliases``).

Newer ComfyUI hosts (0.38.x) give every V3 input an ``advanced`` flag (the frontend keeps
such inputs behind one click, so a node shows what most users change) and every schema a
``search_aliases`` list (other words the node search finds it by). ComfyUI 0.3.75 has
neither: its ``Input`` takes no ``advanced`` argument and its ``Schema`` dataclass raises
on an unknown field. So both are detected by feature, and on 0.3.75 nothing changes.

The tables below are the one place that says which inputs are expert settings and which
words find the pack: :func:`present` applies them to a node class when
``nodes/__init__.py`` registers it, so the node modules' schemas stay as they are.
tests/nodes/test_presentation.py checks the tables against the schemas and both kinds of host.
"""
from __future__ import annotations

import dataclasses
import inspect

from comfy_api.latest import io

_LOADER_EXPERT = ("weight_dtype", "device")
_KEYFRAME_EXPERT = ("noise_augmentation", "guidance_weight_prompt", "guidance_weight_image", "num_keyframes")

#: node id -> the inputs that are expert settings: the release's values suit most runs.
ADVANCED: dict[str, tuple[str, ...]] = {
    "KandinskyVideoKeyframeUNetLoader": _LOADER_EXPERT,
    "KandinskyVideoInterpolationUNetLoader": _LOADER_EXPERT,
    "KandinskyVideoMoVQLoader": _LOADER_EXPERT,
    "KandinskyVideoVideoMoVQLoader": _LOADER_EXPERT,
    "KandinskyVideoTextEncoderLoader": _LOADER_EXPERT,
    "KandinskyVideoFirstFrame": ("guidance_scale",),
    "KandinskyVideoKeyframes": _KEYFRAME_EXPERT,
    "KandinskyVideoExtend": _KEYFRAME_EXPERT + ("condition_frames", "condition_source"),
    "KandinskyVideoInterpolate": ("guidance_scale", "window"),
    "KandinskyVideoDecode": ("chunk_size", "num_keyframes", "segment_keyframes"),
    "KandinskyVideoKeyframesConditioning": ("noise_augmentation", "num_keyframes"),
    "KandinskyVideoGuider": ("clamp_x0",),
    "KandinskyVideoSigmas": ("spacing",),
}

#: Words every node of the pack is found by: the model's name in the scripts its users read.
PACK_ALIASES = ("Kandinsky", "Кандинский", "康定斯基", "KV 1.1", "KV1.1")
_TEXT_TO_VIDEO = ("text to video", "t2v", "текст в видео", "文生视频")
_IMAGE_TO_VIDEO = ("image to video", "i2v", "изображение в видео", "图生视频")
_INTERPOLATION = ("frame interpolation", "интерполяция кадров", "帧插值", "补帧")
_LONG_VIDEO = ("long video", "длинное видео", "长视频")

#: node id -> what else it is searched by (besides :data:`PACK_ALIASES`).
SEARCH_ALIASES: dict[str, tuple[str, ...]] = {
    "KandinskyVideoTextEncode": _TEXT_TO_VIDEO,
    "KandinskyVideoFirstFrame": _TEXT_TO_VIDEO,
    "KandinskyVideoKeyframes": _TEXT_TO_VIDEO + _IMAGE_TO_VIDEO,
    "KandinskyVideoEncodeFirstFrame": _IMAGE_TO_VIDEO,
    "KandinskyVideoInterpolate": _INTERPOLATION,
    "KandinskyVideoEncodeVideo": _INTERPOLATION,
    "KandinskyVideoExtend": _LONG_VIDEO,
}


def accepts_advanced(input_class: type = io.Input) -> bool:
    """Whether the host's V3 inputs take ``advanced`` (newer hosts; not 0.3.75)."""
    return "advanced" in inspect.signature(input_class.__init__).parameters


def accepts_search_aliases(schema_class: type = io.Schema) -> bool:
    """Whether the host's ``Schema`` has a ``search_aliases`` field (newer hosts; not 0.3.75)."""
    return dataclasses.is_dataclass(schema_class) and any(
        f.name == "search_aliases" for f in dataclasses.fields(schema_class))


def aliases(node_id: str) -> list[str]:
    return [*PACK_ALIASES, *SEARCH_ALIASES.get(node_id, ())]


def presented(schema: io.Schema, *, advanced: bool | None = None, search_aliases: bool | None = None) -> io.Schema:
    """``schema`` with this module's presentation, where the host supports each part
    (detected unless ``advanced`` / ``search_aliases`` say)."""
    if accepts_advanced() if advanced is None else advanced:
        expert = ADVANCED.get(schema.node_id, ())
        for item in schema.inputs or ():
            if item.id in expert:
                item.advanced = True
    if accepts_search_aliases() if search_aliases is None else search_aliases:
        schema.search_aliases = aliases(schema.node_id)
    return schema


def present(cls: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """Have ``cls``'s schema :func:`presented` wherever the host builds it (every host path
    goes through ``define_schema``). Applied once per class; returns ``cls``."""
    if cls.__dict__.get("_kv_presented"):
        return cls
    define = cls.define_schema.__func__

    def define_schema(klass):
        return presented(define(klass))

    define_schema.__doc__ = define.__doc__
    cls.define_schema = classmethod(define_schema)
    cls._kv_presented = True
    cls._kv_unpresented_schema = classmethod(define)  # the module's own schema (tests compare)
    cls._kv_advanced = ADVANCED.get(cls.GET_SCHEMA().node_id, ())  # what the help pages call expert settings
    return cls
