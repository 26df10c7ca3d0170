"""Noise schedule and samplers of Kandinsky Video 1.1 (no diffusers dependency).

The reference trains and samples with one discrete noise schedule: 1000 steps of
``squaredcos_cap_v2`` betas (``max_beta`` 0.999) rescaled to zero terminal SNR, so
``alphas_cumprod[999] == 0``. On top of it this module offers three samplers:

``DDPMSampler``      the reference sampler (diffusers' ``DDPMScheduler`` as the reference
                     configures it): ancestral steps with ``fixed_small_log`` variance.
``DDIMSampler``      deterministic DDIM (eta 0), written in data-prediction form.
``DPMSolverPP2MSampler``  multistep DPM-Solver++(2M), first order on the first and on
                     the last step.

All three predict ``x0`` from the network output (``epsilon`` or ``v_prediction``) and
apply the same dynamic thresholding (ratio 0.995, ``sample_max_value`` 1 by default,
which reduces to ``clamp(x0, -1, 1)``). Any step count from 1 to 1000 works, with
``leading``, ``trailing`` or ``linspace`` spacing.

Zero terminal SNR: at t = 999, ``alpha = 0`` and an epsilon prediction cannot give x0
(it would divide by zero). The reference never evaluates t = 999 with epsilon
prediction (its 50 leading steps start at 980); other samplers and spacings may, so
for epsilon prediction ``alphas_cumprod`` is floored at 2**-24 (only t = 999 is
affected) and the thresholding then bounds x0. v-prediction needs no floor.

A sampler is a small stateful object used for one sampling loop::

    sampler = make_sampler("dpmpp_2m", steps=20, prediction_type="epsilon")
    for i, t in enumerate(sampler.timesteps):
        out = model(x, t)
        noise = noise_source.randn(x.shape) if sampler.needs_noise(i) else None
        x = sampler.step(out, i, x, noise).prev_sample
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import is_int

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")
EPSILON_ALPHA_FLOOR = 2.0 ** -24


# --- the noise schedule ------------------------------------------------------------

def cosine_betas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, max_beta: float = 0.999) -> torch.Tensor:
    """``squaredcos_cap_v2`` betas: ``beta_i = min(1 - abar((i+1)/n) / abar(i/n), max_beta)``
    with ``abar(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2`` (computed in float64 Python
    arithmetic, returned as float32 ``[n]``)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    betas = [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(alphas_cumprod)`` so that its last value is exactly 0 and its
    first value is unchanged (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed"); returns the matching betas (same dtype)."""
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def kv_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """``alphas_cumprod`` float32 ``[num_train_timesteps]`` of the Kandinsky Video schedule."""
    betas = rescale_zero_terminal_snr(cosine_betas(num_train_timesteps))
    return torch.cumprod(1.0 - betas, dim=0)


def make_timesteps(num_steps: int, spacing: str, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Descending int64 timesteps at which the model is evaluated.

    ``leading``: ``k * (n // steps)`` for k = steps-1 … 0 (50 steps: 980, 960, …, 0);
    ``trailing``: ``round(n - k * n / steps) - 1`` (10 steps: 999, 899, …, 99);
    ``linspace``: ``round(linspace(0, n - 1, steps))`` reversed.
    """
    n = num_train_timesteps
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= n:
        raise ValueError(f"steps must be an integer from 1 to {n}, got {num_steps!r}")
    if spacing == "leading":
        ratio = n // num_steps
        ts = torch.arange(num_steps - 1, -1, -1, dtype=torch.float64) * ratio
    elif spacing == "trailing":
        ratio = n / num_steps
        ts = torch.round(n - torch.arange(num_steps, dtype=torch.float64) * ratio) - 1
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, n - 1, num_steps, dtype=torch.float64)).flip(0)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return ts.round().to(torch.int64)


def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """Forward process at one integer timestep: ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
    a = alphas_cumprod[int(timestep)].to(device=x0.device, dtype=x0.dtype)
    return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise


def threshold_x0(x0: torch.Tensor, ratio: float = 0.995, sample_max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Imagen): per batch item, ``s = clamp(quantile(|x0|, ratio), 1,
    sample_max_value)`` and ``x0 = clamp(x0, -s, s) / s``. With ``sample_max_value <= 1``
    s is always 1 and this is ``clamp(x0, -1, 1)`` (no quantile is computed)."""
    if sample_max_value <= 1.0:
        return x0.clamp(-1.0, 1.0)
    flat = x0.float().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1.0, sample_max_value)[:, None]
    return (flat.clamp(-s, s) / s).reshape(x0.shape).to(x0.dtype)


# --- samplers ----------------------------------------------------------------------

@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class Sampler:
    """Common part of the samplers: schedule, timesteps, x0 prediction and thresholding.

    ``timesteps[i]`` is the timestep of step i; the step after the last one is "t = -1",
    whose ``alphas_cumprod`` is 1 (the clean sample).
    """

    name = "base"
    stochastic = False

    def __init__(
        self,
        steps: int,
        *,
        prediction_type: str = "epsilon",
        spacing: str = "leading",
        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
        thresholding: bool = True,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        alphas_cumprod: torch.Tensor | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.spacing = spacing
        self.num_train_timesteps = num_train_timesteps
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.sample_max_value = sample_max_value
        self.alphas_cumprod = (kv_alphas_cumprod(num_train_timesteps) if alphas_cumprod is None
                               else alphas_cumprod.to(torch.float32))
        self.timesteps = make_timesteps(steps, spacing, num_train_timesteps)
        self.reset()

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def reset(self) -> None:
        """Forget the state of a previous loop (multistep samplers keep history)."""

    def needs_noise(self, index: int) -> bool:
        """Whether step ``index`` consumes a standard-normal draw shaped like the sample."""
        return False

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        return add_noise(self.alphas_cumprod, x0, noise, timestep)

    # alphas of the schedule as float32 0-d tensors (the reference's arithmetic)
    def _alpha(self, index: int) -> torch.Tensor:
        return self.alphas_cumprod[int(self.timesteps[index])]

    def _alpha_prev(self, index: int) -> torch.Tensor:
        if index + 1 < self.num_steps:
            return self.alphas_cumprod[int(self.timesteps[index + 1])]
        return torch.tensor(1.0, dtype=torch.float32)

    def _alpha_for_x0(self, index: int) -> torch.Tensor:
        a = self._alpha(index)
        if self.prediction_type == "epsilon":
            a = torch.clamp(a, min=EPSILON_ALPHA_FLOOR)
        return a

    def predict_x0(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """x0 from the model output at step ``index``, thresholded when enabled."""
        a = self._alpha_for_x0(index)
        if self.prediction_type == "epsilon":
            x0 = (sample - (1 - a) ** 0.5 * model_output) / a ** 0.5
        else:
            x0 = a ** 0.5 * sample - (1 - a) ** 0.5 * model_output
        if self.thresholding:
            x0 = threshold_x0(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0

    def step(self, model_output: torch.Tensor, index: int, sample: torch.Tensor,
             noise: torch.Tensor | None = None) -> StepOutput:
        raise NotImplementedError


class DDPMSampler(Sampler):
    """The reference sampler: the DDPM posterior mean plus ``fixed_small_log`` noise.

    With ``a = alphas_cumprod[t]``, ``a' = alphas_cumprod[t_next]`` (1 after the last step)
    and ``beta = 1 - a/a'``::

        mean = sqrt(a') beta / (1 - a) * x0 + sqrt(1 - beta) (1 - a') / (1 - a) * x
        x'   = mean + exp(0.5 log(max((1 - a') / (1 - a) beta, 1e-20))) * noise   (t > 0)

    Every step with t > 0 draws noise (with trailing spacing even the last one, at
    std 1e-10, as the reference does).
    """

    name = "ddpm"
    stochastic = True

    def needs_noise(self, index: int) -> bool:
        return int(self.timesteps[index]) > 0

    def step(self, model_output, index, sample, noise=None):
        a, a_prev = self._alpha(index), self._alpha_prev(index)
        beta_prod, beta_prod_prev = 1 - a, 1 - a_prev
        alpha_t = a / a_prev
        beta_t = 1 - alpha_t
        x0 = self.predict_x0(model_output, index, sample)
        prev = (a_prev ** 0.5 * beta_t) / beta_prod * x0 + alpha_t ** 0.5 * beta_prod_prev / beta_prod * sample
        if self.needs_noise(index):
            if noise is None:
                raise ValueError(f"DDPM step {index} (t={int(self.timesteps[index])}) needs a noise tensor")
            variance = torch.clamp(beta_prod_prev / beta_prod * beta_t, min=1e-20)
            prev = prev + torch.exp(0.5 * torch.log(variance)) * noise
        return StepOutput(prev, x0)


def _sigma_ratio_coefficients(a: float, a_prev: float) -> tuple[float, float]:
    """First-order (DDIM / DPM-Solver++(1)) update ``x' = c_x x + c_0 x0`` in float64:
    ``c_x = sigma'/sigma``, ``c_0 = alpha' - alpha sigma'/sigma`` with alpha = sqrt(a),
    sigma = sqrt(1 - a)."""
    alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
    alpha_prev, sigma_prev = math.sqrt(a_prev), math.sqrt(max(1.0 - a_prev, 0.0))
    ratio = sigma_prev / sigma
    return ratio, alpha_prev - alpha * ratio


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta = 0): ``x' = sqrt(a') x0 + sqrt(1 - a') eps(x0)`` where the
    noise is recomputed from the (thresholded) x0 so the update stays consistent."""

    name = "ddim"

    def step(self, model_output, index, sample, noise=None):
        x0 = self.predict_x0(model_output, index, sample)
        a = float(self._alpha_for_x0(index))
        c_x, c_0 = _sigma_ratio_coefficients(a, float(self._alpha_prev(index)))
        return StepOutput(c_x * sample + c_0 * x0, x0)


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022) in data prediction with the thresholded x0.

    With ``lambda = log(alpha / sigma)`` and ``h = lambda' - lambda``, step i uses
    ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``, ``r = h_{i-1} / h_i`` in place of x0 in
    the first-order update. The first step, the last step (to the clean sample, where
    lambda' is infinite) and a step after an infinite ``h`` (t = 999, zero terminal SNR)
    are first order.
    """

    name = "dpmpp_2m"

    def reset(self):
        self._prev_x0 = None
        self._prev_h = None

    def _lambda(self, a: float) -> float:
        if a <= 0.0:
            return -math.inf
        if a >= 1.0:
            return math.inf
        return 0.5 * (math.log(a) - math.log1p(-a))

    def step(self, model_output, index, sample, noise=None):
        x0 = self.predict_x0(model_output, index, sample)
        a, a_prev = float(self._alpha_for_x0(index)), float(self._alpha_prev(index))
        h = self._lambda(a_prev) - self._lambda(a)
        c_x, c_0 = _sigma_ratio_coefficients(a, a_prev)
        d = x0
        second_order = (index > 0 and index + 1 < self.num_steps and self._prev_x0 is not None
                        and self._prev_h is not None and math.isfinite(self._prev_h) and math.isfinite(h))
        if second_order:
            r = self._prev_h / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * self._prev_x0
        self._prev_x0, self._prev_h = x0, h
        return StepOutput(c_x * sample + c_0 * d, x0)


_SAMPLER_CLASSES = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpmpp_2m": DPMSolverPP2MSampler}

@dataclass(frozen=True)
class SamplerDefaults:
    """A stage's reference sampling: sampler name, step count, what its network predicts
    and the spacing of its timesteps (each stage declares its own, ``kv_core.stages``)."""

    sampler: str
    steps: int
    prediction_type: str
    spacing: str

    def make(self, sampler: str | None = None, steps: int | None = None) -> "Sampler":
        """The sampler of the stage: the reference one by default; ``sampler``/``steps``
        override name and step count while the stage keeps its prediction type and spacing."""
        return make_sampler(self.sampler if sampler is None else sampler, self.steps if steps is None else steps,
                            prediction_type=self.prediction_type, spacing=self.spacing)


def check_sampler(stage: str, sampler, steps) -> None:
    """A sampler name of ``SAMPLERS`` and a step count from 1 to 1000 (None: the stage's
    reference count); ``ValueError`` naming ``stage`` otherwise."""
    if sampler not in SAMPLERS:
        raise ValueError(f"{stage} sampler must be one of {SAMPLERS}, got {sampler!r}")
    if steps is not None and (not is_int(steps) or not 1 <= steps <= NUM_TRAIN_TIMESTEPS):
        raise ValueError(f"{stage} steps must be an integer from 1 to {NUM_TRAIN_TIMESTEPS} "
                         f"(or None for the reference count), got {steps!r}")


def make_sampler(name: str = "ddpm", steps: int = 50, *, prediction_type: str = "epsilon",
                 spacing: str | None = None, **kwargs) -> Sampler:
    """Build a sampler by name (one of ``SAMPLERS``). ``spacing`` defaults to ``leading`` for
    epsilon prediction and ``trailing`` for v-prediction, as the reference stages use."""
    if name not in _SAMPLER_CLASSES:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    if spacing is None:
        spacing = "leading" if prediction_type == "epsilon" else "trailing"
    return _SAMPLER_CLASSES[name](steps, prediction_type=prediction_type, spacing=spacing, **kwargs)
