"""Which weights to store in fp8: the distortion of each candidate rule, measured.

    python bench/fp8_rule.py            # the golden networks (tests/data/golden), CPU, float32 compute

For each network of the golden release (the official architectures at reduced width, the
reference code's own initialisation) and one golden input, the output is computed with
float32 weights and again with the weights a rule stores in float8_e4m3fn rounded to fp8
(a plain cast, as stored; everything else float32, so only the rule differs):

``every``   every weight matrix of a layer that can cast at run time, embeddings aside
            (the former load-time rule of the ComfyUI loaders)
``inner``   the file rule (``kv_core.dtypes.storage_dtype``): no first or last layer,
            embedding table or null embedding, and no matrix whose fp8 cast loses more
            than ``FP8_MAX_RELATIVE_ERROR`` of its norm

Printed per network: the relative output error ``|out - ref| / |ref|`` of each rule, how
many matrices each stores in fp8, and the fp8 error of the first/last layers (the layers
the two rules disagree on).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from golden_support import golden_dir, load_cases  # noqa: E402
from kv_core.dtypes import fp8_matrix, storage_dtype  # noqa: E402
from kv_core.models.movq import MoVQ  # noqa: E402
from kv_core.models.unet import KeyframeUNet  # noqa: E402
from kv_core.models.unet_interpolation import InterpolationUNet  # noqa: E402

FP8 = torch.float8_e4m3fn


def _layer_weights(net):
    """state-dict key -> weight of every Linear/Conv layer (the layers ComfyUI's ops cast)."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) and fp8_matrix(m.weight):
            out[f"{name}.weight"] = m.weight
    return out


def rule_every(key, w):
    return True


def rule_inner(key, w):
    return storage_dtype(key, w, FP8) == FP8


def run(net, forward, rule):
    weights = _layer_weights(net)
    saved = {k: w.detach().clone() for k, w in weights.items()}
    chosen = [k for k, w in weights.items() if rule(k, w)]
    with torch.no_grad():
        for k in chosen:
            weights[k].copy_(weights[k].to(FP8).float())
        out = forward(net).float()
        for k, w in weights.items():
            w.copy_(saved[k])
    return out, chosen, len(weights)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    root = golden_dir()
    cases = {c.name: c for c in load_cases(root)}

    def load(cls, config_key, filename, unet=True):
        case = cases["t2v_unet_video"]
        net = cls(**case.configs[config_key]["configs"], device="meta")
        state = torch.load(root / filename, map_location="cpu", weights_only=True)
        net.load_state_dict(state["unet"] if unet else state, strict=True, assign=True)
        return net.eval().float()

    def t2v(net):
        i, c = cases["t2v_unet_video"].inputs, cases["t2v_unet_video"]
        return net(i["x"], i["time"], i["context"], i["context_mask"], mode="video", num_frames=c.args["num_frames"],
                   temporal_embed=i["temporal_embed"], noise_aug_time=i.get("noise_aug_time"),
                   motion_score=i.get("motion_score"))

    def interp(net):
        c = cases["interp_unet"]
        i = c.inputs
        return net(i["x"], i["time"], i["context"], i["context_mask"], num_groups=c.args["num_predicted_groups"],
                   perturbation_time=i.get("perturbation_time"), skip_frames=i.get("skip_frames"),
                   temporal_mask=i.get("temporal_mask"))

    nets = [
        ("keyframe U-Net", load(KeyframeUNet, "t2v", "t2v.pt"), t2v),
        ("image MoVQ decode", load(MoVQ, "image_movq", "movq.pt", unet=False),
         lambda n: n.decode(cases["movq_decode"].inputs["latent"])),
        ("image MoVQ encode", load(MoVQ, "image_movq", "movq.pt", unet=False),
         lambda n: n.encode(cases["movq_encode"].inputs["image"])),
        ("video MoVQ decode", load(MoVQ, "video_movq", "video_movq.pt", unet=False),
         lambda n: n.decode(cases["video_movq_decode_T5"].inputs["latents"])),
    ]
    interp_case = cases["interp_unet"]
    nets.insert(1, ("interpolation U-Net", load(InterpolationUNet, interp_case.args["config_key"],
                                                interp_case.args["checkpoint"]), interp))
    print("| network | rule | fp8 matrices | relative output error |")
    print("|---|---|---:|---:|")
    for name, net, forward in nets:
        with torch.no_grad():
            ref = forward(net).float()
        for rule_name, rule in (("every", rule_every), ("inner", rule_inner)):
            out, chosen, total = run(net, forward, rule)
            print(f"| {name} | {rule_name} | {len(chosen)} / {total} | {rel(out, ref):.4f} |")
        weights = _layer_weights(net)
        kept = [k for k in weights if not rule_inner(k, weights[k])]
        errs = ", ".join(f"{k} {rel(weights[k].to(FP8).float(), weights[k].float()):.3f}" for k in kept)
        print(f"|  | kept by inner (fp8 cast error) | {errs} | |")


if __name__ == "__main__":
    main()
