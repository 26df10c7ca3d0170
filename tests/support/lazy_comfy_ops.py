"""A CPU simulation of the lazy weights of current ComfyUI's ``comfy.ops``.

With dynamic VRAM on (ComfyUI newer than 0.3.x, NVIDIA, torch >= 2.8, unless started with
``--cpu``, ``--highvram``, ``--gpu-only``, ``--novram`` or ``--disable-dynamic-vram``),
``comfy.ops.disable_weight_init`` — and so ``manual_cast``, which subclasses it — builds:

* ``Linear`` with no tensors at all: ``weight = None``, ``bias = None`` (plain attributes,
  not registered parameters, so ``state_dict()`` lists neither), the ``bias`` argument kept
  as ``comfy_need_lazy_init_bias``, and ``weight_comfy_model_dtype`` /
  ``bias_comfy_model_dtype`` set to the ``dtype`` argument;
* ``Embedding`` with a meta-device ``weight`` of the declared shape and ``bias = None``.

Both create their tensors only in ``_load_from_state_dict``: ``weight`` (and, for
``Linear``, ``bias``) become ``Parameter(tensor, requires_grad=False)`` of whatever shape
and dtype the state dict holds (no shape check, no cast; the tensor itself with
``load_state_dict(assign=True)``, a clone otherwise); any other key under the layer's
prefix is reported unexpected; a missing weight (or a missing bias the layer was declared
with) is filled with zeros and reported missing. Only classes that do not override
``_load_from_state_dict`` behave so; convolutions, norms and the other layers are
unchanged. This module reproduces that behaviour (from reading ComfyUI's ``comfy/ops.py``)
without importing ComfyUI, on top of any operations namespace:

* :func:`lazy_operations` — a namespace like ``base`` whose ``Linear``/``Embedding`` are lazy
  (the kv_core tests use it on torch.nn-like namespaces);
* :func:`install` — swaps lazy classes into a real ``comfy.ops`` module in place (the
  test-only custom node pack ``tests/data/lazy_weights_pack`` calls it inside a real,
  older ComfyUI, so the pack's loaders meet the newer layers through the API).
"""
from __future__ import annotations

import types

import torch
from torch import nn

#: attribute set on the classes made here (tests check the simulation is in place)
LAZY_MARK = "kv_lazy_weights_simulation"
#: lazy layers built and lazy loads done in this process (for the host checks)
COUNTS = {"built": 0, "loaded": 0}


def _lazy_load(layer: nn.Module, state_dict, prefix: str, local_metadata, missing_keys, unexpected_keys,
               weight_shape, bias_shape=None) -> None:
    COUNTS["loaded"] += 1
    keep = local_metadata.get("assign_to_params_buffers", False)
    for key, value in state_dict.items():
        name = key[len(prefix):]
        if name == "weight":
            layer.weight = nn.Parameter(value if keep else value.clone(), requires_grad=False)
        elif name == "bias" and bias_shape is not None and value is not None:
            layer.bias = nn.Parameter(value if keep else value.clone(), requires_grad=False)
        else:
            unexpected_keys.append(key)
    if layer.weight is None:
        # ComfyUI fills a missing Linear weight with zeros of (in_features, out_features)
        layer.weight = nn.Parameter(torch.zeros(weight_shape), requires_grad=False)
        missing_keys.append(prefix + "weight")
    if bias_shape is not None and layer.bias is None and getattr(layer, "comfy_need_lazy_init_bias", False):
        layer.bias = nn.Parameter(torch.zeros(bias_shape), requires_grad=False)
        missing_keys.append(prefix + "bias")


def lazy_linear(base: type) -> type:
    """A subclass of the ``Linear`` class ``base`` that registers no tensor until loaded."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        nn.Module.__init__(self)
        COUNTS["built"] += 1
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None
        self.comfy_need_lazy_init_bias = bias
        self.weight_comfy_model_dtype = dtype
        self.bias_comfy_model_dtype = dtype

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        _lazy_load(self, state_dict, prefix, local_metadata, missing_keys, unexpected_keys,
                   weight_shape=(self.in_features, self.out_features), bias_shape=(self.out_features,))

    return type(base.__name__, (base,), {"__init__": __init__, "_load_from_state_dict": _load_from_state_dict,
                                         "__module__": __name__, LAZY_MARK: True})


def lazy_embedding(base: type) -> type:
    """A subclass of the ``Embedding`` class ``base`` with a meta weight until loaded."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None, dtype=None):
        nn.Module.__init__(self)
        COUNTS["built"] += 1
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        self.weight = nn.Parameter(torch.empty((num_embeddings, embedding_dim), device="meta",
                                               dtype=dtype or torch.get_default_dtype()), requires_grad=False)
        self.bias = None
        self.weight_comfy_model_dtype = dtype

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # the meta weight is not None: a missing key is reported, the meta tensor stays
        _lazy_load(self, state_dict, prefix, local_metadata, missing_keys, unexpected_keys,
                   weight_shape=(self.num_embeddings, self.embedding_dim))

    return type(base.__name__, (base,), {"__init__": __init__, "_load_from_state_dict": _load_from_state_dict,
                                         "__module__": __name__, LAZY_MARK: True})


def lazy_operations(base) -> type:
    """A namespace like ``base`` (a class or module with ``Linear``, ``Embedding``, convs,
    norms) whose ``Linear`` and ``Embedding`` are lazy; the other layers are ``base``'s."""
    members = {name: getattr(base, name) for name in dir(base) if not name.startswith("_")}
    members.update(Linear=lazy_linear(base.Linear), Embedding=lazy_embedding(base.Embedding))
    return type(f"Lazy{getattr(base, '__name__', 'Ops').split('.')[-1]}", (), members)


def install(comfy_ops: types.ModuleType) -> list[str]:
    """Make the ``Linear``/``Embedding`` of ``comfy_ops.disable_weight_init`` and
    ``manual_cast`` lazy, as current ComfyUI's are with dynamic VRAM. Returns what was
    replaced."""
    done = []
    for name in ("disable_weight_init", "manual_cast"):
        namespace = getattr(comfy_ops, name)
        for layer, make in (("Linear", lazy_linear), ("Embedding", lazy_embedding)):
            cls = getattr(namespace, layer)
            if not getattr(cls, LAZY_MARK, False):
                setattr(namespace, layer, make(cls))
                done.append(f"{name}.{layer}")
    return done


def is_lazy(layer: nn.Module) -> bool:
    return bool(getattr(type(layer), LAZY_MARK, False))
