"""Test-only ComfyUI custom node pack: turns a 0.3.x ComfyUI into one that builds layers
the way current ComfyUI does with dynamic VRAM, so the Kandinsky Video loaders meet them
through the real API (tests/host/test_lazy_weights_host.py).

On import it
* makes ``comfy.ops.disable_weight_init`` / ``manual_cast`` ``Linear`` and ``Embedding``
  lazy (tests/support/lazy_comfy_ops.py: no weight until ``_load_from_state_dict``);
* gives ``comfy.model_management`` the ``unload_model_and_clones`` of newer ComfyUI when
  the host lacks it (unload a patcher and its clones via ``free_memory`` with everything
  else kept), recording the models it was called with, so the pack's feature-detected
  offload path runs;
* registers ``KVTestHostState``, an output node that can add or remove that call (to run
  either offload path) and whose text is a JSON report: the lazy classes in place, the
  lazy layers built/loaded, the models ComfyUI holds loaded and the models passed to the
  simulated ``unload_model_and_clones``.

Never install this pack outside the tests.
"""
import importlib.util
import json
import sys
from pathlib import Path

import comfy.model_management as mm
import comfy.ops

_SIM = Path(__file__).resolve().parents[2] / "support" / "lazy_comfy_ops.py"
_spec = importlib.util.spec_from_file_location("kv_test_lazy_comfy_ops", _SIM)
lazy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lazy
_spec.loader.exec_module(lazy)

REPLACED = lazy.install(comfy.ops)
UNLOADED: list = []  # class names of the models given to unload_model_and_clones


def _name(model) -> str:
    """The class name of a patcher's network: a U-Net's kv_core module inside its core model
    (``kv_network``), the model itself for the others."""
    return type(getattr(model, "kv_network", model)).__name__


def _simulated_unload_model_and_clones(model, unload_additional_models=True, all_devices=False):
    UNLOADED.append(_name(model.model))
    keep = [m for m in mm.current_loaded_models if m.model is not None and not model.is_clone(m.model)]
    mm.free_memory(1e30, mm.get_torch_device(), keep)


NATIVE_UNLOAD = getattr(mm, "unload_model_and_clones", None)
if NATIVE_UNLOAD is None:
    mm.unload_model_and_clones = _simulated_unload_model_and_clones


class KVTestHostState:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unload_model_and_clones": (["as is", "present", "absent"],)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never cached: the state changes between prompts

    def report(self, unload_model_and_clones):
        """Set the host's unload_model_and_clones ("present": the host's own or the
        simulation, "absent": none, so the pack takes its 0.3.75 path), then report."""
        if unload_model_and_clones == "present":
            mm.unload_model_and_clones = NATIVE_UNLOAD or _simulated_unload_model_and_clones
        elif unload_model_and_clones == "absent" and hasattr(mm, "unload_model_and_clones"):
            del mm.unload_model_and_clones
        state = {
            "replaced": REPLACED,
            "lazy_linear": bool(getattr(comfy.ops.manual_cast.Linear, lazy.LAZY_MARK, False)),
            "counts": dict(lazy.COUNTS),
            "loaded": [_name(p.model) for p in mm.loaded_models() if p is not None],
            "unloaded": list(UNLOADED),
            "unload_model_and_clones": hasattr(mm, "unload_model_and_clones"),
            "native_unload": NATIVE_UNLOAD is not None,
        }
        return {"ui": {"text": [json.dumps(state)]}}


NODE_CLASS_MAPPINGS = {"KVTestHostState": KVTestHostState}
