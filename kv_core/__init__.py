"""Host-independent PyTorch implementation of Kandinsky Video 1.1.

Nothing in this package imports ComfyUI: the ComfyUI glue lives in ``nodes/``. The package
is cut along the stages of a generation:

- ``models/``        the networks (U-Nets, MoVQs, text projections) and their layers
- ``text``           the text encoder (T5 tokenizer, Flan-UL2 encoder, projections), prompt reports
- ``conditioning``   ``TextCondition``, the null text, guidance contexts and cfg
- ``sampling/``      schedulers and samplers, the noise streams, the step loop
- ``stages/``        one module per stage (text, first_frame, keyframes, interpolation,
                     decode), each with its network inputs, guidance, loop, checks and
                     public functions; ``stages.STAGE_TABLE`` is the list of the stages and
                     ``stages.Hooks`` what a host gives one
- ``rules``          what spans the stages: sizes, frame counts, frame rates
- ``checks``         the type checks of user values
- ``kinds``          the network kinds named once: keys, message names, release files and
                     the activation memory a call needs
- ``pipeline``       the whole text/image-to-video pipeline over the stages
- ``extend``         long videos: segments continued from the last keyframe, joined, and the
                     prompt timeline of their interpolation
- ``video_input``    any video interpolated: fit, encode, interpolation passes, decode
- ``checkpoints/``   safe loading of the official files and of our safetensors form
- ``dtypes``         the dtype policy: compute dtype and fp8 storage
- ``image``          pictures in (first frames), ``convert`` the checkpoint converter,
                     ``tiny`` tiny random releases for tests and demos
"""
