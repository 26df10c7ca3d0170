"""The networks of Kandinsky Video 1.1 and the layers they are built from:

``layers``              the layer factory every network builds with (``operations``/``device``/``dtype``)
``unet_base``           the Kandinsky 3.0 blocks, levels and skip connections both U-Nets share
``unet``                keyframe U-Net3D (video mode) and its Kandinsky 3.0 image mode
``unet_interpolation``  interpolation U-Net
``movq_blocks``         the blocks of the MoVQs
``movq``                image MoVQ and the temporal (video) MoVQ decoder
``text_projection``     the two learned text projections
"""

#: constructor arguments that say where and how a network is built, not what it is
_PLACEMENT = ("self", "__class__", "operations", "device", "dtype")


def constructor_config(arguments: dict) -> dict:
    """A network's configuration from its constructor's ``locals()`` taken first thing in
    ``__init__``: every argument but the placement ones (``operations``, ``device``,
    ``dtype``). Each network keeps it as ``self.config`` (as diffusers' registered configs),
    so what it is (e.g. how many times it halves a latent: ``kv_core.rules.size_rule``)
    is read from it, not from its sub-modules."""
    return {name: value for name, value in arguments.items() if name not in _PLACEMENT}
