"""UI-format workflows (what users save and share) to API-format prompts."""
from __future__ import annotations

from typing import Any, Mapping

class WorkflowError(ValueError):
    """A UI-format workflow that cannot be turned into an API prompt."""


#: Node types that exist only in the frontend (never sent to the server).
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "Comfy.NoteNode"}
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_MODE_MUTED, _MODE_BYPASS = 2, 4


def is_api_prompt(data: dict) -> bool:
    return bool(data) and "nodes" not in data and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def _input_specs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of the visible inputs of a node type, in the frontend's order."""
    specs = []
    inputs = info.get("input") or {}
    order = info.get("input_order") or {k: list((inputs.get(k) or {}).keys()) for k in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section) or []:
            spec = (inputs.get(section) or {}).get(name)
            if spec is None:
                continue
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, "COMBO" if isinstance(kind, list) else kind, opts))
    return specs


def _widget_slots(name: str, kind: str, opts: dict) -> int:
    """How many entries of ``widgets_values`` an input takes (0 for a plain socket)."""
    if kind not in _WIDGET_TYPES or opts.get("forceInput"):
        return 0
    slots = 1
    if kind == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
        slots += 1  # the "control after generate" combo (fixed/increment/decrement/randomize)
    elif kind == "COMBO" and opts.get("control_after_generate"):
        slots += 2  # control combo and its filter-list text
    if kind == "COMBO" and any(opts.get(k) for k in ("image_upload", "video_upload", "audio_upload", "animated_image_upload")):
        slots += 1  # the upload button widget
    return slots


def workflow_to_prompt(workflow: dict, object_info: Mapping[str, dict]) -> dict:
    """Convert a UI-format workflow (``nodes``/``links``/positional ``widgets_values``) to
    an API-format prompt, as the frontend's ``graphToPrompt`` does.

    Widget values are matched to the node type's inputs in ``/object_info`` order, skipping
    the extra values the frontend stores after some widgets (the "control after generate"
    value of seed-like INT inputs, a combo's control and filter list, upload buttons).
    Links override widget values; links are followed through Reroute nodes, PrimitiveNodes
    give their value, bypassed nodes pass a matching input through, muted nodes and notes are
    dropped. Subgraphs (group nodes) are not supported and raise :class:`WorkflowError`.
    """
    nodes = {int(n["id"]): n for n in workflow.get("nodes", [])}
    links: dict[int, tuple[int, int]] = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]))
        else:
            links[int(link[0])] = (int(link[1]), int(link[2]))
    subgraphs = {sg.get("id") for sg in (workflow.get("definitions") or {}).get("subgraphs") or []}
    missing = sorted({n["type"] for n in nodes.values()
                      if n["type"] not in object_info and n["type"] not in FRONTEND_ONLY_NODES
                      and n["type"] not in subgraphs and n.get("mode", 0) != _MODE_MUTED})
    if missing:
        raise WorkflowError(f"node types unknown to this server: {', '.join(missing)}")

    def source_of(link_id: int | None, want_type: str | None, seen: frozenset = frozenset()):
        """Resolve a link to ``[node_id, slot]``, a literal value, or None (drop the input)."""
        if link_id is None or link_id not in links:
            return None
        src_id, slot = links[link_id]
        src = nodes.get(src_id)
        if src is None or src_id in seen:
            return None
        seen = seen | {src_id}
        if src["type"] in subgraphs:
            raise WorkflowError(f"node {src_id} is a subgraph; subgraphs are not supported")
        if src["type"] == "Reroute":
            return source_of((src.get("inputs") or [{}])[0].get("link"), want_type, seen)
        if src["type"] == "PrimitiveNode":
            values = src.get("widgets_values") or []
            return values[0] if values else None
        mode = src.get("mode", 0)
        if mode == _MODE_MUTED:
            return None
        if mode == _MODE_BYPASS:
            out_type = ((src.get("outputs") or [])[slot] or {}).get("type") if slot < len(src.get("outputs") or []) else want_type
            ins = src.get("inputs") or []
            order = ([ins[slot]] if slot < len(ins) else []) + ins
            for inp in order:
                if inp.get("link") is not None and (inp.get("type") == out_type or out_type in (None, "*")):
                    return source_of(inp["link"], want_type, seen)
            return None
        return [str(src_id), slot]

    prompt: dict[str, dict] = {}
    for node_id, node in sorted(nodes.items()):
        ntype = node["type"]
        if ntype in FRONTEND_ONLY_NODES or node.get("mode", 0) in (_MODE_MUTED, _MODE_BYPASS):
            continue
        if ntype in subgraphs:
            raise WorkflowError(f"node {node_id} is a subgraph; subgraphs are not supported")
        specs = _input_specs(object_info[ntype])
        values = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        if isinstance(values, dict):  # some packs save widgets by name
            inputs.update({n: values[n] for n, k, o in specs if _widget_slots(n, k, o) and n in values})
        else:
            values = list(values or [])
            pos = 0
            for name, kind, opts in specs:
                slots = _widget_slots(name, kind, opts)
                if slots and pos < len(values):
                    inputs[name] = values[pos]
                pos += slots
        spec_names = [n for n, _, _ in specs]
        sockets = [n for n, k, o in specs if not _widget_slots(n, k, o)]
        socket_pos = 0
        for inp in node.get("inputs") or []:
            widget = (inp.get("widget") or {}).get("name")
            name = widget or inp.get("name")
            if name not in spec_names and not widget and socket_pos < len(sockets):
                name = sockets[socket_pos]  # a socket saved under an older or translated name
            if not widget:
                socket_pos += 1
            if inp.get("link") is None:
                continue
            value = source_of(inp["link"], inp.get("type"))
            if value is None:
                if not widget:
                    inputs.pop(name, None)
                continue
            inputs[name] = value
        entry = {"class_type": ntype, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node_id)] = entry
    return prompt
