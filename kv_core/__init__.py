"""Host-independent PyTorch implementation of Kandinsky Video 1.1.

Nothing in this package imports ComfyUI: the ComfyUI glue lives in ``nodes/``.
Each stage has one obvious module:

- ``text``                text conditioning (T5 tokenizer, Flan-UL2 encoder, KV projections)
- ``text_projection``     the two learned text projections
- ``unet``                keyframe U-Net3D (video mode) and its Kandinsky 3.0 image mode
- ``unet_interpolation``  interpolation U-Net
- ``layers``              the layer factory every network builds with (``operations``/``device``/``dtype``)
- ``unet_base``           the Kandinsky 3.0 blocks, levels and skip connections both U-Nets share
- ``movq_blocks``         the blocks of the MoVQs
- ``movq``                image MoVQ and the temporal (video) MoVQ decoder
- ``checkpoints``         safe loading of the official files and of our safetensors form (a
                          package: formats, contents, configs, networks, t5)
- ``dtypes``              the dtype policy: compute dtype and fp8 storage
- ``schedulers``          DDPM (reference), DDIM and DPM-Solver++(2M)
- ``sampling``            the three sampling loops
- ``rules``               sizes, settings, frame counts and rates (checked before any network runs)
- ``stages``              the stage functions: the only orchestration (the nodes and the pipeline call them)
- ``pipeline``            the whole text/image-to-video pipeline over the stages
- ``extend``              long videos: segments continued from the last keyframe, joined, and the
                          prompt timeline of their interpolation
"""
