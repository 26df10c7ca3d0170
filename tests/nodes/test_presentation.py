"""Expert inputs marked ``advanced`` and search aliases (nodes/host/presentation.py), on both
kinds of host, in this process with ComfyUI's modules (no server).

ComfyUI 0.3.75 (the pinned host) has neither field: there the node info must be exactly
what the schemas give without the presentation. Newer hosts (0.38.x) take
``Input(advanced=...)`` and ``Schema.search_aliases`` and send them in ``/object_info``;
that host is simulated here by giving the pinned classes those two fields the way the
newer ones declare and serialise them.
"""
from __future__ import annotations

import dataclasses

import pytest




def _inputs(info: dict) -> dict[str, dict]:
    """Input name -> its options, from a node info as /object_info sends it."""
    return {name: spec[1] if len(spec) > 1 else {} for section in ("required", "optional")
            for name, spec in info["input"].get(section, {}).items()}


def test_the_tables_name_real_nodes_and_inputs(pack):
    from kvpack.nodes import collect_nodes
    from kvpack.nodes.host import presentation

    schemas = {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA() for cls in collect_nodes()}
    for node_id, names in presentation.ADVANCED.items():
        assert node_id in schemas
        assert set(names) <= {i.id for i in schemas[node_id].inputs}, node_id
        # an expert input always has a default: folding it away never leaves a required value unset
        assert all(getattr(i, "default", None) is not None or i.optional
                   for i in schemas[node_id].inputs if i.id in names), node_id
    assert set(presentation.SEARCH_ALIASES) <= set(schemas)
    # the aliases the pack is found by in every language its users search in
    assert {"Кандинский", "康定斯基", "KV 1.1"} <= set(presentation.PACK_ALIASES)
    found = {a for v in presentation.SEARCH_ALIASES.values() for a in v}
    assert {"text to video", "image to video", "frame interpolation", "long video"} <= found


def test_the_host_features_are_detected_by_their_signatures(pack):
    from comfy_api.latest import io
    from kvpack.nodes.host import presentation

    class Old:
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None): ...

    class New:
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None,
                     raw_link=None, advanced=None): ...

    @dataclasses.dataclass
    class OldSchema:
        node_id: str

    @dataclasses.dataclass
    class NewSchema:
        node_id: str
        search_aliases: list = dataclasses.field(default_factory=list)

    assert presentation.accepts_advanced(New) and not presentation.accepts_advanced(Old)
    assert presentation.accepts_search_aliases(NewSchema) and not presentation.accepts_search_aliases(OldSchema)
    # the pinned host: neither
    assert not presentation.accepts_advanced(io.Input) and not presentation.accepts_search_aliases(io.Schema)
    with pytest.raises(TypeError):  # why it must be detected: 0.3.75 refuses both
        io.Schema(node_id="X", search_aliases=["y"])
    with pytest.raises(TypeError):
        io.Int.Input("x", advanced=True)


def test_nothing_changes_on_the_pinned_host(pack):
    from kvpack.nodes import collect_nodes
    from kvpack.nodes.host import presentation

    for cls in collect_nodes():
        assert cls.__dict__.get("_kv_presented")
        info = cls.GET_NODE_INFO_V1()
        raw = cls._kv_unpresented_schema()
        raw.finalize()
        assert info == dataclasses.asdict(raw.get_v1_info(cls)), cls.__name__
        assert not any("advanced" in spec for spec in _inputs(info).values())
        assert "search_aliases" not in info
    assert presentation.present(cls) is cls  # applying twice changes nothing


@pytest.fixture
def newer_host(pack, monkeypatch):
    """The pinned ``io`` with the newer host's two fields: ``Input.as_dict`` sends
    ``advanced`` when set, ``Schema`` has ``search_aliases`` and ``get_v1_info`` sends it."""
    from comfy_api.latest import _io

    as_dict = _io.Input.as_dict

    def input_as_dict(self):
        out = as_dict(self)
        if getattr(self, "advanced", None):
            out["advanced"] = True
        return out

    get_v1_info = _io.Schema.get_v1_info

    @dataclasses.dataclass
    class NewerNodeInfoV1(_io.NodeInfoV1):
        search_aliases: list = None

    def schema_v1_info(self, cls):
        info = get_v1_info(self, cls)
        return NewerNodeInfoV1(**dataclasses.asdict(info), search_aliases=getattr(self, "search_aliases", None) or None)

    def accepts(*_):
        return True

    monkeypatch.setattr(_io.Input, "as_dict", input_as_dict)
    monkeypatch.setattr(_io.Schema, "get_v1_info", schema_v1_info)
    from kvpack.nodes.host import presentation
    monkeypatch.setattr(presentation, "accepts_advanced", accepts)
    monkeypatch.setattr(presentation, "accepts_search_aliases", accepts)
    yield


def test_a_newer_host_gets_advanced_inputs_and_search_aliases(newer_host):
    from kvpack.nodes import collect_nodes
    from kvpack.nodes.host import presentation

    seen_advanced = {}
    for cls in collect_nodes():
        node_id = cls.GET_SCHEMA().node_id
        info = cls.GET_NODE_INFO_V1()
        assert info["search_aliases"] == presentation.aliases(node_id)
        advanced = {name for name, spec in _inputs(info).items() if spec.get("advanced")}
        assert advanced == set(presentation.ADVANCED.get(node_id, ())), node_id
        seen_advanced[node_id] = advanced
    # what a user still sees on the face of the main nodes
    keyframes = {cls.GET_SCHEMA().node_id: cls for cls in collect_nodes()}["KandinskyVideoKeyframes"]
    face = set(_inputs(keyframes.GET_NODE_INFO_V1())) - seen_advanced["KandinskyVideoKeyframes"]
    assert face == {"keyframe_unet", "conditioning", "first_frame", "motion", "steps", "sampler", "seed",
                    "model", "step_cache"}  # the optional sockets of the host's levers and the step cache
    assert {"noise_augmentation", "guidance_weight_prompt", "guidance_weight_image"} <= seen_advanced["KandinskyVideoExtend"]
    assert seen_advanced["KandinskyVideoInterpolate"] == {"guidance_scale", "window"}
    assert {"weight_dtype", "device"} == seen_advanced["KandinskyVideoTextEncoderLoader"]
