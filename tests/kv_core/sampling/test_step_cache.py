"""Step caching (kv_core.sampling.step_cache, DeepCache-style) on the tiny random U-Nets: the schedule,
bit-identity with caching off or every step full, the skipped levels, per-row features,
counted full forwards through the loops, windows and long-video segments."""
import pytest
import torch

from kv_core.checkpoints import INTERPOLATION_UNET, KEYFRAME_UNET
from kv_core.extend import generate_segment
from kv_core.conditioning import TextCondition
from kv_core.stages.first_frame import generate_first_frame
from kv_core.stages.interpolation import interpolate_frames
from kv_core.stages.keyframes import generate_keyframes
from kv_core.sampling.step_cache import StepCache, StepCacheSettings, check_step_cache, cache_summary_text
from kv_core.tiny import TINY_CONTEXT_DIM, random_unet
from kv_core.stages import Hooks
from kv_core.stages.windows import window_layout

FAST = dict(sampler="ddim")


@pytest.fixture(scope="module")
def keyframe_unet():
    return random_unet(KEYFRAME_UNET, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def interpolation_unet():
    return random_unet(INTERPOLATION_UNET, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def cond():
    g = torch.Generator().manual_seed(2)
    return TextCondition(torch.randn(1, 5, TINY_CONTEXT_DIM, generator=g), torch.tensor([[1, 1, 1, 1, 0]]))


def key_latent(h=8, w=8, seed=3):
    return torch.randn(4, h, w, generator=torch.Generator().manual_seed(seed))


class LevelCounter:
    """Counts the forwards of every down and up level of a U-Net (forward hooks)."""

    def __init__(self, unet):
        self.down = [0] * len(unet.down_samples)
        self.up = [0] * len(unet.up_samples)
        self.handles = [m.register_forward_hook(self._hook(self.down, i)) for i, m in enumerate(unet.down_samples)]
        self.handles += [m.register_forward_hook(self._hook(self.up, i)) for i, m in enumerate(unet.up_samples)]

    @staticmethod
    def _hook(counts, i):
        def hook(module, args, out):
            counts[i] += 1
        return hook

    @property
    def full(self) -> int:
        """Forwards that reached the bottom level: the full ones."""
        return self.down[-1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# --- settings and schedule -------------------------------------------------------------

def test_plan_is_uniform_inside_the_active_range():
    s = StepCacheSettings(interval=3, branch=0, start_step=2, end_step=-1)
    assert [i for i, full in enumerate(s.plan(12)) if full] == [0, 1, 2, 5, 8, 11]
    assert s.counts(12) == (6, 6)
    s = StepCacheSettings(interval=2, start_step=0, end_step=5)
    assert [i for i, full in enumerate(s.plan(10)) if full] == [0, 2, 4, 6, 7, 8, 9]
    assert StepCacheSettings(interval=1).plan(5) == [True] * 5
    assert not StepCacheSettings().enabled  # off by default


@pytest.mark.parametrize("kwargs, word", [
    (dict(interval=0), "interval"), (dict(interval=2.5), "interval"), (dict(interval=True), "interval"),
    (dict(interval=2, branch=-1), "branch"), (dict(interval=2, start_step=-1), "start_step"),
    (dict(interval=2, end_step=-2), "end_step"), (dict(interval=2, start_step=5, end_step=3), "end_step"),
])
def test_bad_settings_are_refused_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        StepCacheSettings(**kwargs)


def test_check_step_cache_accepts_dicts_and_turns_interval_1_off():
    assert check_step_cache(None) is None
    assert check_step_cache({"interval": 1}) is None
    assert check_step_cache({"interval": 3, "branch": 1}) == StepCacheSettings(interval=3, branch=1)
    with pytest.raises(ValueError, match="unknown step cache settings"):
        check_step_cache({"intervall": 3})
    with pytest.raises(ValueError, match="StepCacheSettings"):
        check_step_cache(3)


# --- one forward ---------------------------------------------------------------------------

def keyframe_inputs(rows_per_copy=3, copies=3, h=8, w=8, seed=4):
    g = torch.Generator().manual_seed(seed)
    n = rows_per_copy * copies
    return dict(x=torch.randn(n, 9, h, w, generator=g), time=torch.full((n,), 500.0),
                context=torch.randn(n, 5, TINY_CONTEXT_DIM, generator=g), context_mask=torch.ones(n, 5))


def run_keyframe(unet, inp, cache=None, rows=None, mode="video", num_frames=3):
    kwargs = dict(num_frames=num_frames) if mode == "video" else {}
    if cache is not None:
        kwargs["step_cache"] = cache.call(rows, n=inp["x"].shape[0])
    with torch.inference_mode():
        return unet(inp["x"], inp["time"], inp["context"], inp["context_mask"], mode=mode, **kwargs)


@pytest.mark.parametrize("branch", [0, 1])
def test_full_step_with_cache_is_the_plain_forward_and_a_cached_step_skips_the_deep_levels(keyframe_unet, branch):
    unet, _ = keyframe_unet
    inp = keyframe_inputs()
    plain = run_keyframe(unet, inp)
    cache = StepCache(StepCacheSettings(interval=2, branch=branch, start_step=0), 2)
    cache.begin(0)
    with LevelCounter(unet) as counted:
        full = run_keyframe(unet, inp, cache)
        assert torch.equal(full, plain)  # keeping the features changes nothing
        cache.begin(1)
        cached = run_keyframe(unet, inp, cache)
    levels = len(unet.down_samples)
    # down levels 0..branch and the up paths of levels branch..0 ran again; nothing deeper
    assert counted.down == [2] * (branch + 1) + [1] * (levels - branch - 1)
    assert counted.up == [1] * (levels - branch - 1) + [2] * (branch + 1)
    # same inputs: the kept deep features are the ones a full forward computes, bit for bit
    assert torch.equal(cached, plain)
    cache.finish()
    assert cache.summary()["full_steps"] == 1 and cache.summary()["cached_steps"] == 1


def test_a_cached_step_reuses_the_deep_features_of_the_full_step(keyframe_unet):
    unet, _ = keyframe_unet
    first, second = keyframe_inputs(seed=4), keyframe_inputs(seed=5)
    cache = StepCache(StepCacheSettings(interval=2, branch=0, start_step=0), 2)
    cache.begin(0)
    run_keyframe(unet, first, cache)
    cache.begin(1)
    cached = run_keyframe(unet, second, cache)
    full = run_keyframe(unet, second)
    assert torch.isfinite(cached).all()
    assert not torch.equal(cached, full)  # the deep features are the first input's


def test_a_branch_the_network_lacks_is_refused(keyframe_unet):
    unet, _ = keyframe_unet
    cache = StepCache(StepCacheSettings(interval=2, branch=len(unet.down_samples) - 1), 2)
    cache.begin(0)
    with pytest.raises(ValueError, match="branch .* does not exist.*0 \\(shallowest"):
        run_keyframe(unet, keyframe_inputs(), cache)


def test_features_are_kept_per_row_and_a_new_row_runs_full(keyframe_unet):
    """Image mode (rows independent): a cached call with the rows in another order gets each
    row's own features; a row the full step never computed makes the call run full."""
    unet, _ = keyframe_unet
    inp = keyframe_inputs(rows_per_copy=4, copies=1)
    plain = run_keyframe(unet, inp, mode="image")
    cache = StepCache(StepCacheSettings(interval=3, branch=0, start_step=0), 3)
    cache.begin(0)
    run_keyframe(unet, inp, cache, rows=["a", "b", "c", "d"], mode="image")
    cache.begin(1)
    order = [3, 1, 0, 2]
    swapped = {k: v[order] for k, v in inp.items()}
    with LevelCounter(unet) as counted:
        out = run_keyframe(unet, swapped, cache, rows=["d", "b", "a", "c"], mode="image")
        assert counted.full == 0
    torch.testing.assert_close(out, plain[order], rtol=1e-5, atol=1e-6)
    subset = {k: v[[2]] for k, v in inp.items()}
    with LevelCounter(unet) as counted:
        out = run_keyframe(unet, subset, cache, rows=["c"], mode="image")
        assert counted.full == 0
    torch.testing.assert_close(out, plain[[2]], rtol=1e-5, atol=1e-6)
    with LevelCounter(unet) as counted:
        run_keyframe(unet, subset, cache, rows=["new"], mode="image")
        assert counted.full == 1  # never kept: full, and kept from now on
    cache.begin(2)
    assert cache.summary()["full_calls"] == 2 and cache.summary()["cached_calls"] == 2
    assert cache.full_steps == 2 and cache.cached_steps == 0  # step 1 ran a full call


def test_features_of_another_size_are_not_reused(keyframe_unet):
    unet, _ = keyframe_unet
    cache = StepCache(StepCacheSettings(interval=2, branch=0, start_step=0), 2)
    cache.begin(0)
    run_keyframe(unet, keyframe_inputs(h=8, w=8), cache)
    cache.begin(1)
    small = keyframe_inputs(h=16, w=16)
    with LevelCounter(unet) as counted:
        out = run_keyframe(unet, small, cache)
        assert counted.full == 1
    assert torch.equal(out, run_keyframe(unet, small))


def test_interpolation_unet_full_step_with_cache_is_the_plain_forward(interpolation_unet):
    unet, _ = interpolation_unet
    g = torch.Generator().manual_seed(6)
    n, groups = 6, 3
    args = (torch.randn(n, 20, 8, 8, generator=g), torch.full((n,), 300, dtype=torch.int64),
            torch.randn(n, 5, TINY_CONTEXT_DIM, generator=g), torch.ones(n, 5))
    kw = dict(num_groups=groups, skip_frames=torch.full((n,), 3), temporal_mask=torch.tensor([1.0] * 3 + [0.0] * 3))
    with torch.inference_mode():
        plain = unet(*args, **kw)
        cache = StepCache(StepCacheSettings(interval=2, branch=1, start_step=0), 2)
        cache.begin(0)
        assert torch.equal(unet(*args, **kw, step_cache=cache.call(n=n)), plain)
        cache.begin(1)
        with LevelCounter(unet) as counted:
            assert torch.equal(unet(*args, **kw, step_cache=cache.call(n=n)), plain)
            assert counted.full == 0


# --- through the stages --------------------------------------------------------------------

def keyframes(unet_null, cond, step_cache=None, steps=10, trace=None, seed=0):
    unet, null = unet_null
    return generate_keyframes(unet, null, cond, key_latent(), num_keyframes=3, steps=steps, noise=seed,
                              step_cache=step_cache, hooks=Hooks(trace=trace), **FAST)


def test_interval_1_is_the_uncached_run_exactly(keyframe_unet, interpolation_unet, cond):
    base = keyframes(keyframe_unet, cond)
    assert torch.equal(keyframes(keyframe_unet, cond, StepCacheSettings(interval=1)), base)
    assert torch.equal(keyframes(keyframe_unet, cond, {"interval": 1, "branch": 1}), base)
    # the cache machinery active with every step full (caching starts after the last step)
    trace = {}
    all_full = StepCacheSettings(interval=4, start_step=50)
    assert torch.equal(keyframes(keyframe_unet, cond, all_full, trace=trace), base)
    assert trace["step_cache"]["full_steps"] == 10 and trace["step_cache"]["cached_steps"] == 0
    unet, null = keyframe_unet
    first = dict(width=64, height=64, steps=4, noise=0, **FAST)
    assert torch.equal(generate_first_frame(unet, null, cond, step_cache=all_full, **first),
                       generate_first_frame(unet, null, cond, **first))
    iu, inull = interpolation_unet
    frames = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    inter = dict(steps=3, noise=0, **FAST)
    assert torch.equal(interpolate_frames(iu, inull, cond, frames, step_cache=all_full, **inter),
                       interpolate_frames(iu, inull, cond, frames, **inter))


@pytest.mark.parametrize("interval, start, expected_full", [(2, 0, 5), (3, 2, 5), (5, 2, 4), (3, 0, 4)])
def test_interval_n_runs_the_expected_number_of_full_forwards(keyframe_unet, cond, interval, start, expected_full):
    unet, _ = keyframe_unet
    settings = StepCacheSettings(interval=interval, branch=0, start_step=start)
    assert settings.counts(10)[0] == expected_full
    trace = {}
    with LevelCounter(unet) as counted:
        out = keyframes(keyframe_unet, cond, settings, trace=trace)
    assert counted.full == expected_full          # forwards that reached the bottom level
    assert counted.down[0] == 10                  # every step ran the shallow branch
    assert trace["step_cache"]["full_steps"] == expected_full
    assert trace["step_cache"]["cached_steps"] == 10 - expected_full
    assert torch.isfinite(out).all()
    base = keyframes(keyframe_unet, cond)
    assert not torch.equal(out, base)
    # close to the uncached run, nowhere near another seed's
    other_seed = keyframes(keyframe_unet, cond, seed=1)
    assert (out - base).norm() < 0.5 * (other_seed - base).norm()


def test_end_step_makes_the_last_steps_full(keyframe_unet, cond):
    unet, _ = keyframe_unet
    with LevelCounter(unet) as counted:
        keyframes(keyframe_unet, cond, StepCacheSettings(interval=4, start_step=0, end_step=4))
    assert counted.full == 2 + 5  # steps 0 and 4 in the range, 5..9 after it


def test_the_progress_report_gets_the_real_counts(keyframe_unet, cond):
    seen = []
    settings = StepCacheSettings(interval=3, start_step=2, report=lambda full, cached: seen.append((full, cached)))
    keyframes(keyframe_unet, cond, settings, steps=6)
    assert seen == [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2), (4, 2)]
    assert cache_summary_text({"full_steps": 4, "cached_steps": 2, "interval": 3, "branch": 0}) == \
        "step cache: 4 full + 2 cached steps (interval 3, branch 0)"


def test_first_frame_and_interpolation_cache_too(keyframe_unet, interpolation_unet, cond):
    unet, null = keyframe_unet
    settings = StepCacheSettings(interval=2, branch=0, start_step=0)
    with LevelCounter(unet) as counted:
        generate_first_frame(unet, null, cond, width=64, height=64, steps=6, noise=0, step_cache=settings, **FAST)
    assert counted.full == 3 and counted.down[0] == 6
    iu, inull = interpolation_unet
    frames = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with LevelCounter(iu) as counted:
        out = interpolate_frames(iu, inull, cond, frames, steps=5, noise=0, step_cache=settings, **FAST)
    assert counted.full == 3 and counted.down[0] == 5
    assert out.shape == (13, 4, 8, 8)


def test_every_window_starts_with_its_own_full_forward(interpolation_unet, cond):
    iu, inull = interpolation_unet
    frames = torch.randn(11, 4, 8, 8, generator=torch.Generator().manual_seed(8))  # 10 groups
    windows = len(window_layout(10, 4, 1))
    assert windows > 1
    settings = StepCacheSettings(interval=2, branch=0, start_step=0)
    with LevelCounter(iu) as counted:
        windowed = interpolate_frames(iu, inull, cond, frames, steps=4, noise=0, window=4, overlap=1,
                                      step_cache=settings, **FAST)
    assert counted.full == 2 * windows          # steps 0 and 2, every window
    assert counted.down[0] == 4 * windows       # every window ran the shallow branch every step
    plain_windows = interpolate_frames(iu, inull, cond, frames, steps=4, noise=0, window=4, overlap=1, **FAST)
    assert torch.isfinite(windowed).all() and not torch.equal(windowed, plain_windows)
    # one window covering every group is the one-batch cached run, exactly
    one = interpolate_frames(iu, inull, cond, frames, steps=4, noise=0, step_cache=settings, **FAST)
    assert torch.equal(interpolate_frames(iu, inull, cond, frames, steps=4, noise=0, window=16,
                                          step_cache=settings, **FAST), one)


def test_every_long_video_segment_starts_with_a_full_forward(keyframe_unet, cond):
    unet, null = keyframe_unet
    previous = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    settings = StepCacheSettings(interval=3, branch=0, start_step=0)
    with LevelCounter(unet) as counted:
        for _ in range(2):
            generate_segment(unet, null, cond, previous, num_keyframes=3, steps=4, noise=0, step_cache=settings,
                             **FAST)
    assert counted.full == 2 * 2  # steps 0 and 3 of each segment


def test_the_stages_refuse_bad_settings_before_any_network_runs(keyframe_unet, cond):
    unet, _ = keyframe_unet
    with LevelCounter(unet) as counted, pytest.raises(ValueError, match="interval"):
        keyframes(keyframe_unet, cond, {"interval": 0})
    assert counted.down[0] == 0


def test_the_pipeline_takes_step_cache_settings_per_stage(cond):
    from kv_core.pipeline import GenerationSettings
    from tiny_pipeline import FAST as PIPELINE_FAST, tiny_condition, tiny_pipeline

    with pytest.raises(ValueError, match="interval"):
        GenerationSettings(keyframes_step_cache={"interval": 0}).validate()
    pipe = tiny_pipeline()
    run = dict(width=64, height=64, num_keyframes=3, fps="medium", conditioning=tiny_condition(), noise=0,
               **dict(PIPELINE_FAST, keyframes_steps=4, interpolation_steps=4))
    with LevelCounter(pipe.unet) as key_counted, LevelCounter(pipe.interpolation_unet) as interp_counted:
        plain = pipe(**run)
    assert key_counted.full == 2 + 4 and interp_counted.full == 4
    settings = {"interval": 2, "start_step": 0}
    with LevelCounter(pipe.unet) as key_counted, LevelCounter(pipe.interpolation_unet) as interp_counted:
        cached = pipe(**run, keyframes_step_cache=settings, interpolation_step_cache=settings)
    assert key_counted.full == 2 + 2 and interp_counted.full == 2  # the first frame's 2 steps stay full
    assert cached.frames.shape == plain.frames.shape
