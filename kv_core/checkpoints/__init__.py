"""Loading Kandinsky Video 1.1 checkpoints: the official release files and our safetensors.

Official files (``ai-forever/KandinskyVideo_1_1``), read exactly as released and only with
``torch.load(weights_only=True)``:

- ``t2v.pt``, ``interpolation.pt``: ``{'unet': state_dict, 'null_embedding': [context_dim]}``
- ``movq.pt``, ``video_movq.pt``: MoVQ state dicts (the second with the temporal decoder)
- ``t5_projections.pt``: ``{'projection_base': sd, 'projection_interpolation': sd}``
- ``configs.json``: ``{"t2v": {"configs": kwargs}, "interpolation": {...}, "image_movq": {...},
  "video_movq": {...}, "text_encoder": {...}}``
- ``google/flan-ul2``: a Hugging Face T5 folder, of which only the encoder is read.

Our single-file form (written by :mod:`kv_core.convert`) is a safetensors file holding the
network's tensors under their official state-dict names (plus ``null_embedding`` for the
U-Nets) and, in its metadata, the format version, the network kind and its constructor config.

The package, one module per concern (everything public is importable from here):

- :mod:`.formats`   the file formats, safe reading (:func:`open_tensor_file`), network kinds,
  :class:`CheckpointError`
- :mod:`.contents`  which network a file holds (:func:`identify`, :func:`describe_file`,
  :func:`network_tensors`)
- :mod:`.configs`   constructor configs: official, ``configs.json``, detected from shapes;
  the text settings of ``configs.json`` (:func:`text_settings`)
- :mod:`.networks`  building on the meta device and loading (:func:`load_keyframe_unet`,
  :func:`load_interpolation_unet`, :func:`load_movq`, :func:`load_text_projections`)
- :mod:`.t5`        the Flan-UL2 encoder (folder or our file) and its tokenizer checks

Which dtype each tensor gets is the policy of :mod:`kv_core.dtypes`.
"""
from .configs import (DEFAULT_TOKENS_LENGTH, config_from, detect_config, network_class, official_config,
                      read_configs_json, resolve_config, text_settings)
from .contents import NetworkTensors, describe_file, identify, network_tensors
from ..kinds import INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, T5_ENCODER, TEXT_PROJECTIONS, VIDEO_MOVQ
from .formats import (CONFIG_SECTIONS, FORMAT_VERSION, META_CONFIG, META_DTYPE, META_FORMAT, META_NETWORK,
                      META_SOURCE, META_TOKENIZER, NULL_EMBEDDING_KEY, SAFETENSORS_DTYPES, CheckpointError,
                      TensorFile, open_tensor_file)
from .networks import (LoadedNetwork, assign_state_dict, build_network, check_state_dict, expected_shapes,
                       load_interpolation_unet, load_keyframe_unet, load_movq, load_network, load_null_embedding,
                       load_text_projections)
from .t5 import (TOKENIZER_FILES, TOKENIZER_PROBE, check_t5_tokenizer, load_t5_encoder, load_t5_tokenizer,
                 t5_encoder_file, t5_encoder_keys, tokenizer_files)

__all__ = [
    "CONFIG_SECTIONS", "DEFAULT_TOKENS_LENGTH", "FORMAT_VERSION", "INTERPOLATION_UNET", "KEYFRAME_UNET",
    "META_CONFIG", "META_DTYPE",
    "META_FORMAT", "META_NETWORK", "META_SOURCE", "META_TOKENIZER", "MOVQ", "NULL_EMBEDDING_KEY",
    "SAFETENSORS_DTYPES", "T5_ENCODER", "TEXT_PROJECTIONS", "TOKENIZER_FILES", "TOKENIZER_PROBE", "VIDEO_MOVQ",
    "CheckpointError", "LoadedNetwork", "NetworkTensors", "TensorFile",
    "assign_state_dict", "build_network", "check_state_dict", "check_t5_tokenizer", "config_from",
    "describe_file", "detect_config", "expected_shapes", "identify", "load_interpolation_unet",
    "load_keyframe_unet", "load_movq", "load_network", "load_null_embedding", "load_t5_encoder",
    "load_t5_tokenizer", "load_text_projections", "network_class", "network_tensors", "official_config",
    "open_tensor_file", "read_configs_json", "resolve_config", "t5_encoder_file", "t5_encoder_keys",
    "text_settings", "tokenizer_files",
]
