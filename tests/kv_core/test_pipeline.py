"""The pipeline and its stages on tiny random networks: validation (every error before any
network runs), frame counts and rates, determinism (also across processes), stage-by-stage
runs equal to the whole pipeline, image-to-video preprocessing, hooks."""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kv_core.pipeline import GenerationSettings, KandinskyVideoPipeline
from kv_core.rules import frame_count, frame_rate, interpolation_passes
from kv_core.sampling.loop import Interrupted
from kv_core.sampling.noise import RecordingNoise, ReplayNoise, SeededNoise
from kv_core.stages.decode import decode_frames
from kv_core.stages.first_frame import decode_first_frame, encode_first_frame, generate_first_frame
from kv_core.stages.interpolation import interpolate_frames
from kv_core.stages.keyframes import generate_keyframes, motion_score, reference_motion_score
from kv_core.stages.text import encode_prompt
from tiny_pipeline import FAST, Boom, run, tiny_condition

REPO = Path(__file__).resolve().parents[2]


# --- validation -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def boom_pipe():
    return KandinskyVideoPipeline(unet=Boom(), null_embedding=torch.zeros(16), interpolation_unet=Boom(),
                                  interpolation_null_embedding=torch.zeros(16), movq=Boom(), video_movq=Boom(),
                                  text_encoder=lambda prompt: (_ for _ in ()).throw(AssertionError("encoder ran")))


BAD_SETTINGS = [
    (dict(width=100), "width 100 does not fit these networks: it must be a multiple of 64 \\(the MoVQ "
                      "downsamples by 8, the keyframe U-Net halves the latent 3 times"),
    (dict(height=0), "height must be a positive integer"),
    (dict(width=-64), "width must be a positive integer"),
    (dict(width=64.0), "width must be a positive integer"),
    (dict(height=True), "height must be a positive integer"),
    (dict(key_frame_guidance_scale=float("nan")), "key_frame_guidance_scale must be a finite number"),
    (dict(guidance_weight_prompt=float("inf")), "guidance_weight_prompt must be a finite number"),
    (dict(guidance_weight_image=-float("inf")), "guidance_weight_image must be a finite number"),
    (dict(interpolation_guidance_scale="0.5"), "interpolation_guidance_scale must be a finite number"),
    (dict(first_frame_steps=0), "first_frame steps must be an integer from 1 to 1000"),
    (dict(keyframes_steps=-2), "keyframes steps must be an integer from 1 to 1000"),
    (dict(interpolation_steps=1001), "interpolation steps must be an integer from 1 to 1000"),
    (dict(keyframes_steps=2.0), "keyframes steps must be an integer"),
    (dict(first_frame_sampler="euler"), "first_frame sampler must be one of \\('ddpm', 'ddim', 'dpmpp_2m'\\)"),
    (dict(motion="normal"), "motion must be one of \\('low', 'medium', 'high', 'extreme'\\) or a number"),
    (dict(motion="fast"), "motion must be one of"),
    (dict(motion=-1), "motion must be one of .* or a finite number >= 0"),
    (dict(motion=float("nan")), "finite number >= 0"),
    (dict(fps="ultra"), "fps must be one of \\('low', 'medium', 'high'\\)"),
    (dict(noise_augmentation=1000), "noise_augmentation must be an integer timestep from 0 to 999"),
    (dict(noise_augmentation=-1), "noise_augmentation must be an integer timestep"),
    (dict(num_keyframes=1), "num_keyframes must be an integer >= 2"),
    (dict(image_mode="stretch"), "image_mode must be one of \\('reference', 'cover'\\)"),
]


@pytest.mark.parametrize("bad,message", BAD_SETTINGS, ids=[m[:30] + str(i) for i, (_, m) in enumerate(BAD_SETTINGS)])
def test_bad_settings_fail_before_any_network(boom_pipe, bad, message):
    with pytest.raises(ValueError, match=message):
        boom_pipe("a prompt", **bad)


@pytest.mark.parametrize("image,error,message", [
    ("missing_picture.png", FileNotFoundError, "missing_picture.png"),
    ([[0, 0, 0]], TypeError, "image must be a file path, a PIL.Image.Image, a numpy array or a torch tensor"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "image has no pixels"),
    (torch.zeros(1, 8, 0, 3), ValueError, "image has no pixels"),
    (Image.new("RGB", (0, 5)), ValueError, "image has no pixels"),
    (np.zeros((8, 8, 7), np.uint8), ValueError, "no channel axis of 1 to 4"),
    (torch.zeros(2, 8, 8, 3), ValueError, "expected one picture, got a batch of 2"),
    (np.full((8, 8, 3), 300, np.int32), ValueError, "must lie in 0..255"),
    (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN or infinite"),
])
def test_bad_images_fail_before_any_network(boom_pipe, image, error, message):
    with pytest.raises(error, match=message):
        boom_pipe("a prompt", image=image)


def test_other_bad_calls_fail_before_any_network(boom_pipe):
    with pytest.raises(TypeError, match="unknown settings \\['steps'\\]"):
        boom_pipe("a prompt", steps=3)
    with pytest.raises(ValueError, match="seed must be an integer"):
        boom_pipe("a prompt", noise=-5)
    with pytest.raises(ValueError, match="give a prompt"):
        boom_pipe(None)
    with pytest.raises(ValueError, match="conditioning must be a kv_core.conditioning.TextCondition"):
        boom_pipe(conditioning=(torch.zeros(1, 2, 16), torch.ones(1, 2)))
    no_text = KandinskyVideoPipeline(unet=Boom(), null_embedding=torch.zeros(16), interpolation_unet=Boom(),
                                     interpolation_null_embedding=torch.zeros(16), movq=Boom(), video_movq=Boom())
    with pytest.raises(ValueError, match="no text encoder"):
        no_text("a prompt")
    c = tiny_condition()
    with pytest.raises(ValueError, match="pass_index must be 1"):
        interpolate_frames(Boom(), torch.zeros(16), c, torch.zeros(3, 4, 8, 8), pass_index=3)
    with pytest.raises(ValueError, match="frames must be a tensor \\[N, 4, h, w\\] with N >= 2"):
        interpolate_frames(Boom(), torch.zeros(16), c, torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="key_latent must be a tensor"):
        generate_keyframes(Boom(), torch.zeros(16), c, torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="width 96 does not fit these networks: it must be a multiple of 64"):
        generate_first_frame(Boom(), torch.zeros(16), c, width=96)
    with pytest.raises(ValueError, match="height 36 does not fit .* multiple of 8 \\(the MoVQ downsamples by 8\\)"):
        encode_first_frame(Boom(), np.zeros((8, 8, 3), np.uint8), width=64, height=36)
    with pytest.raises(ValueError, match="latent is 6x8 .* multiple of 8"):
        generate_keyframes(Boom(), torch.zeros(16), c, torch.zeros(4, 6, 8))
    with pytest.raises(ValueError, match="video latent is 8x12 .* multiple of 8"):
        interpolate_frames(Boom(), torch.zeros(16), c, torch.zeros(3, 4, 8, 12))
    with pytest.raises(ValueError, match="prompt must be a string"):
        encode_prompt(lambda p: None, 3)


def test_motion_and_frame_rates():
    assert [motion_score(m) for m in ("low", "medium", "high", "extreme", 25, 2.5)] == [1, 10, 50, 100, 25, 2.5]
    with pytest.warns(UserWarning, match="falls back to medium"):
        assert reference_motion_score("normal") == 10
    assert reference_motion_score("high") == 50
    assert [frame_count(12, f) for f in ("low", "medium", "high")] == [12, 45, 177]
    assert [round(frame_rate(n, 12), 3) for n in (12, 45, 177)] == [round(n / 5.5, 3) for n in (12, 45, 177)]
    assert math.isclose(frame_rate(frame_count(6, "medium"), 6) * 5.5 / 2, frame_count(6, "medium"))
    # the numbers: 8 keyframes span 8 / 12 * 5.5 s
    assert [round(frame_rate(n, 8), 2) for n in (8, 29, 113)] == [2.18, 7.91, 30.82]
    assert [interpolation_passes(n, 8) for n in (8, 29, 113, 449)] == [0, 1, 2, 3]
    # the keyframe count is never guessed: frames that no pass count explains are refused
    with pytest.raises(ValueError, match="29 frames are not a video of 12 keyframes .* set num_keyframes"):
        frame_rate(29, 12)
    with pytest.raises(TypeError):
        frame_rate(45)  # no default keyframe count: 45 frames are 12 keyframes + 1 pass, or 45 keyframes
    assert GenerationSettings().validate().motion == "medium"


# --- running -------------------------------------------------------------------------------

@pytest.mark.parametrize("fps,frames", [("low", 3), ("medium", 9), ("high", 33)])
def test_frame_counts_and_rate(pipe, cond, fps, frames):
    result = run(pipe, cond, fps=fps, noise=4)
    assert result.frames.shape == (frames, 64, 64, 3) and result.frames.dtype == torch.uint8
    assert math.isclose(result.fps, frames / (5.5 * 3 / 12))


def test_seeded_runs_are_deterministic(pipe, cond):
    a = run(pipe, cond, fps="medium", noise=11)
    b = run(pipe, cond, fps="medium", noise=11)
    c = run(pipe, cond, fps="medium", noise=12)
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, c.frames)


def test_seeded_run_matches_another_process(pipe, cond, tmp_path):
    out = tmp_path / "frames.pt"
    code = textwrap.dedent(f"""
        import torch
        from tests.support.tiny_pipeline import tiny_condition, tiny_pipeline  # run from the repository root
        torch.set_num_threads({torch.get_num_threads()})
        result = tiny_pipeline()(conditioning=tiny_condition(), width=64, height=64, num_keyframes=3,
                                 fps="medium", noise=21, **{FAST!r})
        torch.save(result.frames, {str(out)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
    here = run(pipe, cond, fps="medium", noise=21)
    assert torch.equal(torch.load(out, weights_only=True), here.frames)


def test_stages_one_by_one_equal_the_pipeline(pipe, cond):
    """What the ComfyUI nodes do: each stage alone with the same seed."""
    seed, kw = 5, dict(width=64, height=64)
    whole = run(pipe, cond, fps="high", noise=seed, return_intermediates=True)
    latent = generate_first_frame(pipe.unet, pipe.null_embedding, cond, sampler="ddim", steps=2, noise=seed, **kw)
    image = decode_first_frame(pipe.movq, latent)
    assert image.shape == (128, 128, 3) and image.dtype == torch.uint8
    assert torch.equal(image, whole.intermediates["keyframe_image"])
    # an IMAGE socket carries floats: uint8 / 255 must convert back exactly
    key = encode_first_frame(pipe.movq, image.float() / 255, **kw)
    assert torch.equal(key, whole.intermediates["keyframe_latent"])
    frames = generate_keyframes(pipe.unet, pipe.null_embedding, cond, key, num_keyframes=3, sampler="ddim",
                                steps=2, noise=seed)
    assert torch.equal(frames, whole.intermediates["base_frames"])
    for p in (1, 2):
        frames = interpolate_frames(pipe.interpolation_unet, pipe.interpolation_null_embedding, cond, frames,
                                    pass_index=p, sampler="ddim", steps=2, noise=seed)
        assert torch.equal(frames, whole.intermediates[f"interpolated_{p}"])
    video = decode_frames(pipe.video_movq, frames)
    assert video.shape == (33, 3, 64, 64) and 0 <= float(video.min()) and float(video.max()) <= 1
    assert torch.equal((video * 255).to(torch.uint8).permute(0, 2, 3, 1), whole.frames)


def test_replayed_noise_reproduces_a_seeded_run(pipe, cond):
    rec = RecordingNoise(SeededNoise(8))
    a = run(pipe, cond, fps="medium", noise=rec, **{k: "ddpm" for k in FAST if k.endswith("sampler")})
    replay = ReplayNoise(rec.draws)
    b = run(pipe, cond, fps="medium", noise=replay, **{k: "ddpm" for k in FAST if k.endswith("sampler")})
    replay.assert_consumed()
    assert torch.equal(a.frames, b.frames)
    # DDPM with 2 leading steps (500, 0): one draw at t = 500; interpolation draws every step
    assert len(rec.draws) == (1 + 1) + (1 + 1 + 1) + (1 + 2)


def test_negative_prompt(pipe):
    prompts = {}

    def encoder(text):
        g = torch.Generator().manual_seed(len(text))
        prompts[text] = True
        n = 2 + len(text) % 3
        return torch.randn(1, n, 16, generator=g), torch.ones(1, n, dtype=torch.int64)

    pipe.text_encoder = encoder
    try:
        base = run(pipe, None, fps="low", noise=3, conditioning=None, prompt="a cat")
        blank = run(pipe, None, fps="low", noise=3, conditioning=None, prompt="a cat", negative_prompt="  ")
        neg = run(pipe, None, fps="low", noise=3, conditioning=None, prompt="a cat", negative_prompt="blurry, dark")
    finally:
        pipe.text_encoder = None
    assert torch.equal(base.frames, blank.frames)
    assert not torch.equal(base.frames, neg.frames)
    assert set(prompts) == {"a cat", "blurry, dark"}
    assert encode_prompt(encoder, "a cat").negative_context is None


def test_image_to_video_skips_the_first_frame(pipe, cond):
    img = Image.fromarray((np.arange(80 * 50 * 3) % 251).astype(np.uint8).reshape(80, 50, 3))
    seen = []
    result = run(pipe, cond, image=img, noise=2, return_intermediates=True,
                 progress=lambda stage, i, n, x: seen.append(stage))
    assert "first_frame" not in seen and "keyframe_image" not in result.intermediates
    assert seen[0] == "keyframes" and seen[-1] == "decode"
    cover = run(pipe, cond, image=img, noise=2, image_mode="cover")
    assert not torch.equal(result.frames, cover.frames)


def test_progress_covers_every_stage_and_cancel_stops(pipe, cond):
    seen = []
    run(pipe, cond, fps="high", noise=1, progress=lambda stage, i, n, x: seen.append((stage, i, n)))
    stages = [s for s, _, _ in seen]
    assert stages == (["first_frame"] * 2 + ["keyframes"] * 2 + ["interpolation_1"] * 2
                      + ["interpolation_2"] * 2 + ["decode"] * stages.count("decode"))
    assert ("keyframes", 2, 2) in seen and stages.count("decode") >= 1
    calls = []
    with pytest.raises(Interrupted):
        run(pipe, cond, fps="high", noise=1, cancel=lambda: len(calls) > 3 or calls.append(1))
