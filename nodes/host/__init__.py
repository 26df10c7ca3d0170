"""Host glue: what the node modules of ``nodes/`` share, and nothing that is a node.

The node modules (``nodes/<name>.py``, each exporting ``NODES``) import these modules and
never each other; these modules never import a node module (``tests/test_imports.py``
holds both rules). What lives here:

* ``sockets``: the pack's socket types and the values they carry (conditioning, first frame);
* ``latent``: the pack's LATENT record (keyframes, segments, fps, fit) and its readers;
* ``inputs``: inputs the stage nodes share, and the host's check of combo values;
* ``networks``: a loaded network in a ``ModelPatcher`` and how a stage loads it;
* ``unet_model``: a U-Net as a ComfyUI model (the one patcher both sampling paths load);
* ``core_path``: what only the core-sampling path uses (its MODEL, checks and guider);
* ``progress``, ``devices``, ``weight_dtype``, ``model_files``: progress bars and previews,
  the loaders' device and weight-dtype choices, the model folders.
"""
