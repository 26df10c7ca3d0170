"""The networks of Kandinsky Video 1.1 and the layers they are built from:

``layers``              the layer factory every network builds with (``operations``/``device``/``dtype``)
``unet_base``           the Kandinsky 3.0 blocks, levels and skip connections both U-Nets share
``unet``                keyframe U-Net3D (video mode) and its Kandinsky 3.0 image mode
``unet_interpolation``  interpolation U-Net
``movq_blocks``         the blocks of the MoVQs
``movq``                image MoVQ and the temporal (video) MoVQ decoder
``text_projection``     the two learned text projections
"""
