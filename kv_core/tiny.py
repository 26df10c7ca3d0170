"""A complete, tiny, random-weight Kandinsky Video 1.1 release, for tests and the quick start.

:func:`write_tiny_release` writes, in the official on-disk formats::

    folder/
      configs.json          {"t2v": {"configs": ...}, "interpolation": ..., "image_movq": ...,
                             "video_movq": ..., "text_encoder": {"tokens_length", "context_dim"}}
      t2v.pt                {'unet': state_dict, 'null_embedding': [context_dim]}
      interpolation.pt      {'unet': state_dict, 'null_embedding': [context_dim]}
      movq.pt, video_movq.pt   state dicts
      t5_projections.pt     {'projection_base': sd, 'projection_interpolation': sd}
      flan-ul2/             a Hugging Face T5 folder (config.json, model.safetensors with
                            encoder *and* decoder like google/flan-ul2, tokenizer files)

The networks keep every code path of the release (temporal ResNet and attention blocks,
noise-augmentation and motion-score embeddings, cross- and self-attention, the
interpolation U-Net's skip-frame and perturbation embeddings and, by default, its
``add_new_temporal_params`` layers, the video MoVQ's temporal convolutions and attention)
while a whole pipeline runs in seconds on a CPU. Weights are random but never degenerate:
the layers the official code zero-initialises are random too, merge scalars lie in
[0.2, 0.8], and the last layer of every residual branch is damped (x0.1) so that the
samplers stay well-behaved. The tokenizer is a small SentencePiece unigram model trained
here on a built-in corpus: it works offline with ``AutoTokenizer``/``T5Tokenizer``.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import INTERPOLATION_UNET, KEYFRAME_UNET, MOVQ, VIDEO_MOVQ, build_network
from .models.text_projection import PROJECTION_LABELS, TextProjection

TINY_CONTEXT_DIM = 16
TINY_TOKENS_LENGTH = 32
TINY_T5_DIM = 16

_UNET_BASE = {
    "model_channels": 8, "init_channels": 8, "time_embed_dim": 16, "context_dim": TINY_CONTEXT_DIM,
    "groups": 4, "head_dim": 8, "expansion_ratio": 2, "compression_ratio": 2,
    "dim_mult": [1, 2, 2], "num_blocks": [2, 2, 2],
    "add_cross_attention": [False, True, True], "add_self_attention": [False, True, True],
}
TINY_T2V_CONFIG = {**_UNET_BASE, "num_channels": 9, "out_channels": 4,
                   "noise_augmentation": True, "motion_score": True}
TINY_INTERPOLATION_CONFIG = {
    **_UNET_BASE, "num_channels": 20, "out_channels": 12, "time_downsample": [False, False, False],
    "temporal": True, "use_perturbation_time_embed": True,
    "merge_perturbation_time_with_diffusion_time": True, "merge_perturbation_time_with_context": False,
    "pass_skip_frames": True, "temporal_type": "conv3D", "add_temporal_attention": True,
    "add_new_temporal_params": True,
}
# 4 levels keep the 8x spatial factor of the release; 32 channels: its GroupNorms have 32 groups
TINY_IMAGE_MOVQ_CONFIG = {
    "double_z": False, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0,
}
TINY_VIDEO_MOVQ_CONFIG = {
    **TINY_IMAGE_MOVQ_CONFIG, "temporal": True, "temporal_mid_blocks": True, "build_3D_decoder": False,
    "temporal_attention_block": True, "temporal_blocks": False,
    "temporal_kernel_size": [3, 3, 3], "temporal_conv_padding": [1, 1, 1],
}

_CORPUS = [
    "a red car driving along a coastal road at sunset",
    "a cat sleeping on a sofa next to the window",
    "waves crashing on a rocky beach, cinematic",
    "a dog running through a green park in the morning",
    "fireworks over the city skyline at night",
    "an astronaut riding a horse on the moon",
    "a timelapse of clouds moving over mountains",
    "a hot air balloon floating above a river valley",
    "autumn leaves falling in a quiet forest",
    "a cup of coffee with steam rising slowly",
    "snow falling on a small wooden house",
    "a sailboat on a calm blue lake, high quality",
]

# last layer of each residual branch (damped like the golden sets' random weights)
_BRANCH_OUTPUT = re.compile(
    r"(output_layer|feed_forward\.2|resnet_blocks\.3\.projection|temporal_resnet_blocks\.3\.2"
    r"|temporal_projection(_new)?\.temporal_projection|proj_out|conv2|temporal_projection2)\.weight$")


@dataclass
class TinyRelease:
    """Paths of a release written by :func:`write_tiny_release`."""

    folder: Path
    configs: Path
    t2v: Path
    interpolation: Path
    movq: Path
    video_movq: Path
    t5_projections: Path
    t5_folder: Path


def tiny_configs(*, interpolation_new_params: bool = True) -> dict:
    """The ``configs.json`` content of the tiny release."""
    interpolation = dict(TINY_INTERPOLATION_CONFIG, add_new_temporal_params=interpolation_new_params)
    return {
        "t2v": {"configs": dict(TINY_T2V_CONFIG)},
        "interpolation": {"configs": interpolation},
        "image_movq": {"configs": dict(TINY_IMAGE_MOVQ_CONFIG)},
        "video_movq": {"configs": dict(TINY_VIDEO_MOVQ_CONFIG)},
        "text_encoder": {"tokens_length": TINY_TOKENS_LENGTH, "context_dim": TINY_CONTEXT_DIM},
    }


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator, *, damp: float = 0.1) -> nn.Module:
    """Fill every parameter of ``module`` with non-trivial random values (in place).

    Weights uniform(+-1/sqrt(fan_in)), biases uniform(+-0.1), norm scales 1 +- 0.3 and
    shifts +-0.2, embeddings N(0, 1), scalar parameters (merge weights) uniform [0.2, 0.8];
    the last layer of each residual branch is then scaled by ``damp``.
    """
    def uniform(p, lo, hi):
        p.copy_(torch.rand(p.shape, generator=generator) * (hi - lo) + lo)

    norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)
    done = set()
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) in done:
                continue
            done.add(id(p))
            if isinstance(mod, norm_types) or (p.ndim == 1 and "norm" in name and p_name in ("weight", "bias")):
                uniform(p, 0.7, 1.3) if p_name == "weight" else uniform(p, -0.2, 0.2)
            elif isinstance(mod, nn.Embedding):
                p.copy_(torch.randn(p.shape, generator=generator))
            elif p.numel() == 1:
                uniform(p, 0.2, 0.8)
            elif p_name == "bias" or p.ndim == 1:
                uniform(p, -0.1, 0.1)
            else:
                fan_in = p[0].numel()
                bound = fan_in ** -0.5
                uniform(p, -bound, bound)
                if _BRANCH_OUTPUT.search(name):
                    p.mul_(damp)
    return module


def random_unet(kind: str, generator: torch.Generator) -> tuple[nn.Module, torch.Tensor]:
    """A tiny keyframe (``KEYFRAME_UNET``) or interpolation U-Net with random weights, fp32,
    CPU, in eval mode without gradients, and a random null embedding ``[TINY_CONTEXT_DIM]``
    (for benchmarks and tests that need no files)."""
    config = TINY_T2V_CONFIG if kind == KEYFRAME_UNET else TINY_INTERPOLATION_CONFIG
    module = randomize_(build_network(kind, config, device="cpu", dtype=torch.float32), generator).eval()
    module.requires_grad_(False)
    return module, torch.randn(TINY_CONTEXT_DIM, generator=generator)


def write_tiny_tokenizer(folder, *, extra_ids: int = 8):
    """Train a tiny SentencePiece unigram model (T5 layout: pad 0, eos 1, unk 2) and save it
    as a T5 tokenizer folder; returns the tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=model, vocab_size=96, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids, "eos_token": "</s>",
         "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512}, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.save_pretrained(str(folder))  # adds tokenizer.json (read without sentencepiece)
    return tokenizer


def write_tiny_t5(folder, *, seed: int = 0, d_model: int = TINY_T5_DIM, with_decoder: bool = True,
                  max_shard_size: str | None = None):
    """A tiny gated-silu T5 (Flan-UL2's architecture) with its tokenizer, as a Hugging Face
    folder. ``with_decoder`` saves the whole encoder-decoder like google/flan-ul2;
    ``max_shard_size`` shards the weights (with an index json)."""
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    folder = Path(folder)
    tokenizer = write_tiny_tokenizer(folder)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                      num_layers=2, num_decoder_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-silu", tie_word_embeddings=False,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (T5ForConditionalGeneration if with_decoder else T5EncoderModel)(config)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(folder), safe_serialization=True, **kwargs)
    return folder


def write_tiny_release(folder, seed: int = 0, *, interpolation_new_params: bool = True,
                       t5_with_decoder: bool = True) -> TinyRelease:
    """Write the tiny release into ``folder`` (created if needed) and return its paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    configs = tiny_configs(interpolation_new_params=interpolation_new_params)
    generator = torch.Generator().manual_seed(seed)

    def network(kind, section):
        module = build_network(kind, configs[section]["configs"], device="cpu", dtype=torch.float32)
        return randomize_(module, generator).state_dict()

    def null():
        return torch.randn(TINY_CONTEXT_DIM, generator=generator)

    (folder / "configs.json").write_text(json.dumps(configs, indent=2))
    torch.save({"unet": network(KEYFRAME_UNET, "t2v"), "null_embedding": null()}, folder / "t2v.pt")
    torch.save({"unet": network(INTERPOLATION_UNET, "interpolation"), "null_embedding": null()},
               folder / "interpolation.pt")
    torch.save(network(MOVQ, "image_movq"), folder / "movq.pt")
    torch.save(network(VIDEO_MOVQ, "video_movq"), folder / "video_movq.pt")
    projections = {label: randomize_(TextProjection(TINY_T5_DIM, TINY_CONTEXT_DIM), generator).state_dict()
                   for label in PROJECTION_LABELS}
    torch.save(projections, folder / "t5_projections.pt")
    t5_folder = write_tiny_t5(folder / "flan-ul2", seed=seed, with_decoder=t5_with_decoder)
    return TinyRelease(folder, folder / "configs.json", folder / "t2v.pt", folder / "interpolation.pt",
                       folder / "movq.pt", folder / "video_movq.pt", folder / "t5_projections.pt", t5_folder)
