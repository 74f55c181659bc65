"""Diffusion samplers (DDPM, DDIM, DPM-Solver++ 2M, Euler, Heun) and the `sample` loop.

- DDPM ancestral sampling: Ho et al. 2020, https://arxiv.org/abs/2006.11239
  (Eq. 6-7, the posterior `q(x_{t-1} | x_t, x0)`; "fixed_small" is its variance).
- DDIM: Song et al. 2021, https://arxiv.org/abs/2010.02502 (Eq. 12 and 16 for eta).
- DPM-Solver++(2M): Lu et al. 2022, https://arxiv.org/abs/2211.01095 (Algorithm 2,
  data prediction, multistep; the last step is first order, as diffusers'
  `lower_order_final` with `final_sigmas_type="zero"`).
- Euler and Heun in sigma space, Karras sigmas (`rho = 7`): Karras et al. 2022,
  https://arxiv.org/abs/2206.00364 (Algorithm 1, Eq. 5; Heun's `sigma_max = 80`
  start is their Table 1).
- "trailing" timestep spacing: Lin et al. 2023, https://arxiv.org/abs/2305.08891
  (Table 2); "leading" and "linspace" as diffusers.

The contract follows diffusers' schedulers: a sampler never sees the model.

```python
sampler.set_timesteps(num_inference_steps)
x = noise * sampler.init_noise_sigma
state = None
for i, t in enumerate(sampler.timesteps):
    output = denoiser(sampler.scale_model_input(x, i), t, conditioning)
    x, state = sampler.step(output, i, x, state=state)
```

`sample(...)` runs the same loop as ONE graph with `keras.ops.fori_loop`, through
the step protocol that `Sampler`'s docstring lists (`stateless_step` and the others
take the number of steps explicitly; the methods above wrap them). Every
timestep/sigma table is a closed form of `(step index, num_inference_steps)` in
`keras.ops` integer arithmetic rather than a stored array, so
`num_inference_steps` may be a scalar tensor (an input of an exported endpoint)
and the loop still compiles with XLA (no tensor whose shape depends on it).

Default spacings are the measured best at 20 denoiser calls on the closed-form
Gaussian oracle with the cosine schedule (kzoo's recipes); table and command in
docs/samplers.md. "trailing" for DDPM, DDIM, DPM-Solver++ 2M and Euler (on the
linear schedule too, or within 2.2% of "leading" for DDIM and Euler); it starts at
the last training timestep (`T - 1`), as a zero-terminal-SNR schedule needs
(diffusers' DDIM defaults to "leading"). Karras sigmas for Heun: 29% less error
than "trailing" on cosine, but 3.1x more on linear, where "trailing" is best
(`use_karras_sigmas=False`).

The step after timestep `t_k` goes to the next table entry `t_{k+1}` (diffusers'
DDIM uses `t_k - T // n`, the same whenever `n` divides `T`); the last step goes
to `alpha_cumprod = 1` (diffusers' `set_alpha_to_one=True`), i.e. to the data.
"""

import keras
import numpy as np
from keras import ops

from kzoo.diffusion.schedules import (
    NoiseSchedule,
    gather,
    sigma_to_timestep,
    split_prediction,
    validate_prediction_type,
)
from kzoo.layers.checks import is_finite_positive, is_int
from kzoo.layers.seeds import TensorSeed

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _round_half_even_div(numerator, denominator):
    # Exact round(numerator / denominator) with NumPy's half-to-even ties, in int32:
    # float32 division can land on the wrong side of .5 for large schedules.
    base = ops.floor_divide(numerator, denominator)
    twice_rest = 2 * (numerator - base * denominator)
    odd = ops.equal(ops.mod(base, 2), 1)
    round_up = ops.logical_or(
        twice_rest > denominator, ops.logical_and(ops.equal(twice_rest, denominator), odd)
    )
    return base + ops.cast(round_up, "int32")


def _per_example(values, sample):
    """Reshapes per-example values `(B,)` to `(B, 1, ..., 1)` to broadcast over `sample`.

    Scalars (the same step for the whole batch) are returned unchanged, so the
    scalar path computes exactly what it did before per-example steps existed.
    """
    if len(getattr(values, "shape", ())) == 1:
        return ops.reshape(values, (-1,) + (1,) * (len(sample.shape) - 1))
    return values


def _rank(value):
    return len(getattr(value, "shape", np.shape(value)))


_SEED_MODULUS = 2**31 - 1
# Step seeds are (mixed base seed, _STEP_OFFSET + i): far from the small second
# components that `keras.random.normal(seed=int)` and a fresh SeedGenerator use,
# so the loop's noise never repeats the caller's initial noise.
_STEP_OFFSET = 2**30


def _mix_seed(seed):
    return ops.cast(
        ops.mod(ops.cast(seed, "int64") * 747796405 + 2891336453, _SEED_MODULUS), "int32"
    )


def _base_seed(seed, sampler):
    if seed is None:
        seed = sampler.seed_generator
    if isinstance(seed, keras.random.SeedGenerator):
        pair = ops.cast(seed.next(), "int64")
        return _mix_seed(pair[0] * 1000003 + pair[1])
    if isinstance(seed, bool):
        raise TypeError(
            f"`seed` must be an int, a SeedGenerator or a tensor. Received: seed={seed}"
        )
    if is_int(seed):
        return _mix_seed(int(seed) % _SEED_MODULUS)
    return _mix_seed(seed)


class Sampler:
    """Base class: timestep tables, validation and the step protocol `sample` runs.

    Every table is a closed form of the model-call index `i` and the number of
    inference steps `n`, so `sample` runs the whole loop in one
    `keras.ops.fori_loop`. `n` is a Python int, an int32 scalar tensor, or (in
    `sample` with per-example counts) an int32 `(B,)` tensor, and `i` is then
    `(B,)` too: a value computed from them is a scalar or `(B,)`, and
    `_per_example(value, sample)` broadcasts it over the sample.

    The protocol, in the order `sample` calls it (a subclass implements
    `stateless_step` and overrides the others where it differs from the default):

    - `num_model_calls(n)`, once: how many times the loop calls the denoiser,
      i.e. its number of iterations. Default `n` (Heun: `2n - 1`).
    - `stateless_init_noise_sigma(n)`, once: the factor the starting standard
      normal noise is multiplied by. Default 1 (Euler, Heun: `sqrt(sigma**2 + 1)`
      of the first sigma).
    - `initial_state(sample)`, once: the multistep state before the first step, a
      structure of tensors (`()` if unused); it is the loop's carry, so
      `stateless_step` returns the same structure.
    - `model_timestep(i, n)`, each call `i`: the train timestep handed to the
      denoiser, of `timestep_dtype` (int32, or float32 for Euler/Heun). Default the
      spaced timestep `_spaced_timestep(i, n)`.
    - `stateless_scale_model_input(sample, i, n)`, each call `i`: what the
      denoiser sees. Default `sample` (Euler, Heun: `sample / sqrt(sigma**2 + 1)`).
    - `stateless_step(model_output, i, sample, noise, state, n)`, each call `i`,
      after the denoiser: `model_output` is its output in `prediction_type` for
      that input, `noise` standard normal noise shaped like `sample` (None unless
      `stochastic`); returns `(next_sample, next_state)`. No default.

    The diffusers-like methods (`set_timesteps`, `init_noise_sigma`,
    `scale_model_input`, `step`) are thin wrappers of the protocol with the `n` of
    `set_timesteps` (and `step` with noise from the sampler's `SeedGenerator`).
    `stateless_` marks the twin that takes explicitly what its wrapper reads from
    the sampler, as Keras' `Layer.stateless_call` does for `call`.

    Args:
        schedule: a `NoiseSchedule`.
        prediction_type: what the denoiser predicts: "eps", "v" or "x0".
        timestep_spacing: "trailing" (default), "leading" or "linspace".
        steps_offset: added to "leading" timesteps (Stable Diffusion uses 1).
        seed: int seed of the sampler's own `SeedGenerator` (stochastic samplers
            only), used when `step` gets no noise or `sample` no seed.
        clip_sample: clip every step's predicted `x0` to `[-clip_sample_range,
            clip_sample_range]` (diffusers' `clip_sample`; Ho et al.'s sampler clips
            to the data range). For pixel-space models of data in [-1, 1]: an
            eps-predicting model's `x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`
            amplifies its error by `1 / sqrt(a)` (~50x at the linear schedule's
            `t = 900`), which unclipped ODE samplers carry into saturated colours.
            The eps used afterwards is the one implied by the clipped `x0`
            (guided-diffusion's DDIM), so the step stays on the ODE's path.
        clip_sample_range: the bound of `clip_sample`, a number > 0.
    """

    stochastic = False
    timestep_dtype = "int32"

    def __init__(
        self,
        schedule,
        prediction_type="eps",
        timestep_spacing="trailing",
        steps_offset=0,
        seed=None,
        clip_sample=False,
        clip_sample_range=1.0,
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                "`schedule` must be a NoiseSchedule (see make_schedule). "
                f"Received: schedule={schedule!r}"
            )
        validate_prediction_type(prediction_type)
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"`timestep_spacing` must be one of {list(TIMESTEP_SPACINGS)}. "
                f"Received: timestep_spacing={timestep_spacing!r}"
            )
        if not is_int(steps_offset) or steps_offset < 0:
            raise ValueError(
                f"`steps_offset` must be an integer >= 0. Received: steps_offset={steps_offset!r}"
            )
        if seed is not None and not is_int(seed):
            raise ValueError(f"`seed` must be None or an integer. Received: seed={seed!r}")
        if not isinstance(clip_sample, bool):
            raise ValueError(f"`clip_sample` must be a bool. Received: clip_sample={clip_sample!r}")
        if not is_finite_positive(clip_sample_range):
            raise ValueError(
                "`clip_sample_range` must be a finite number > 0. "
                f"Received: clip_sample_range={clip_sample_range!r}"
            )
        self.clip_sample = clip_sample
        self.clip_sample_range = float(clip_sample_range)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.steps_offset = int(steps_offset)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.stochastic else None
        self.num_inference_steps = None
        self.timesteps = None

    # === Tables: closed forms of (index, n) ===

    def _spaced_timestep(self, k, n):
        """Train timestep of inference step `k` (int32), `-1` for `k >= n`."""
        total = self.schedule.num_train_timesteps
        k = ops.cast(k, "int32")
        n = ops.cast(n, "int32")
        if self.timestep_spacing == "leading":
            t = (n - 1 - k) * ops.floor_divide(total, n) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            # diffusers: round(arange(T, 0, -T / n)) - 1
            t = _round_half_even_div(total * (n - k), n) - 1
        else:
            # diffusers: round(linspace(0, T - 1, n))[::-1]
            t = _round_half_even_div((n - 1 - k) * (total - 1), ops.maximum(n - 1, 1))
        t = ops.clip(t, 0, total - 1)
        return ops.where(k >= n, -1, t)

    def _alpha_cumprod(self, t):
        """`alpha_cumprod` at train timestep `t`; 1 (the data) at `t = -1`, after the last step."""
        alpha = gather(self.schedule.alphas_cumprod, ops.maximum(t, 0))
        return ops.where(t < 0, 1.0, alpha)

    # === Step protocol (see the class docstring) ===

    def num_model_calls(self, n):
        """Number of denoiser calls (loop iterations) of `n` inference steps."""
        return n

    def model_timestep(self, i, n):
        """Train timestep handed to the denoiser at model call `i` of `n` steps."""
        return self._spaced_timestep(i, n)

    def stateless_scale_model_input(self, sample, i, n):
        """What the denoiser sees at model call `i` of `n` steps (default: `sample`)."""
        return sample

    def stateless_init_noise_sigma(self, n):
        """Factor of the starting standard normal noise for `n` steps (default: 1)."""
        return 1.0

    def initial_state(self, sample):
        """The multistep state before the first step (an empty tuple if unused)."""
        return ()

    def stateless_step(self, model_output, i, sample, noise, state, n):
        """One step after model call `i` of `n` steps.

        Args:
            model_output: the denoiser's output (in `prediction_type`) for
                `stateless_scale_model_input(sample, i, n)` at
                `model_timestep(i, n)`.
            i: model-call index, an int or int32 tensor (scalar, or `(B,)` with
                per-example counts), `0 <= i < num_model_calls(n)`.
            sample: the current sample.
            noise: standard normal noise shaped like `sample`, used by `stochastic`
                samplers only (`sample` passes None to the others).
            state: the previous step's state (`initial_state(sample)` at `i = 0`).
            n: number of inference steps, like `i` a scalar or `(B,)`.

        Returns:
            `(next_sample, next_state)`, `next_state` of the same structure as
            `state`.
        """
        raise NotImplementedError

    def _validate_num_steps(self, num_inference_steps):
        total = self.schedule.num_train_timesteps
        if is_int(num_inference_steps):
            if not 1 <= num_inference_steps <= total:
                raise ValueError(
                    "`num_inference_steps` must be an integer in "
                    f"[1, num_train_timesteps={total}]. "
                    f"Received: num_inference_steps={num_inference_steps}"
                )
            return int(num_inference_steps)
        if isinstance(num_inference_steps, bool | float | str) or num_inference_steps is None:
            raise ValueError(
                "`num_inference_steps` must be an integer or an int scalar tensor. "
                f"Received: num_inference_steps={num_inference_steps!r}"
            )
        # A tensor cannot raise inside a graph: clamp it to the valid range.
        return ops.clip(ops.cast(num_inference_steps, "int32"), 1, total)

    # === diffusers-like public contract ===

    def set_timesteps(self, num_inference_steps):
        """Fix the number of inference steps for `step`; fills `timesteps`.

        Args:
            num_inference_steps: Python int in `[1, num_train_timesteps]`.

        Returns:
            The int32 (float32 for Euler/Heun) tensor of timesteps handed to the
            denoiser, one per model call (`sampler.timesteps`).
        """
        if not is_int(num_inference_steps):
            raise ValueError(
                "`set_timesteps` takes a Python int (use `sample` for a tensor). "
                f"Received: num_inference_steps={num_inference_steps!r}"
            )
        n = self._validate_num_steps(num_inference_steps)
        self.num_inference_steps = n
        calls = ops.arange(self.num_model_calls(n), dtype="int32")
        self.timesteps = ops.cast(self.model_timestep(calls, n), self.timestep_dtype)
        return self.timesteps

    def _require_timesteps(self):
        if self.num_inference_steps is None:
            raise ValueError(
                "Call `set_timesteps(num_inference_steps)` before `step` or "
                "`scale_model_input`. Received: num_inference_steps=None"
            )
        return self.num_inference_steps

    @property
    def init_noise_sigma(self):
        """Scale of the initial noise (1, or `sqrt(sigma_max**2 + 1)` for Euler/Heun)."""
        return self.stateless_init_noise_sigma(self._require_timesteps())

    def scale_model_input(self, sample, i):
        """What the denoiser sees at step index `i` (Euler/Heun: the VP-scaled sample)."""
        return self.stateless_scale_model_input(sample, i, self._require_timesteps())

    def step(self, model_output, i, sample, noise=None, state=None):
        """One sampler step from step index `i` to `i + 1`.

        Args:
            model_output: the denoiser's output for `scale_model_input(sample, i)`
                at `timesteps[i]`, in the sampler's `prediction_type`.
            i: step index (Python int or int32 scalar tensor), `0 <= i <
                len(timesteps)`.
            sample: the current sample.
            noise: standard normal noise shaped like `sample` for stochastic
                samplers; drawn from the sampler's `SeedGenerator` when None.
            state: the state returned by the previous step (None at `i = 0`).

        Returns:
            `(prev_sample, state)`.
        """
        n = self._require_timesteps()
        sample = ops.convert_to_tensor(sample)
        if state is None:
            state = self.initial_state(sample)
        if self.stochastic and noise is None:
            noise = keras.random.normal(
                ops.shape(sample), dtype=sample.dtype, seed=self.seed_generator
            )
        return self.stateless_step(model_output, i, sample, noise, state, n)

    def _split(self, model_output, sample, sqrt_alpha, sqrt_one_minus_alpha):
        """`(x0_hat, eps_hat)` of the model output, `x0_hat` clipped with `clip_sample`."""
        sqrt_alpha = _per_example(sqrt_alpha, sample)
        sqrt_one_minus_alpha = _per_example(sqrt_one_minus_alpha, sample)
        x0, eps = split_prediction(
            self.prediction_type, model_output, sample, sqrt_alpha, sqrt_one_minus_alpha
        )
        if self.clip_sample:
            x0 = ops.clip(x0, -self.clip_sample_range, self.clip_sample_range)
            eps = (sample - sqrt_alpha * x0) / sqrt_one_minus_alpha
        return x0, eps

    # === Config ===

    def _extra_config(self):
        return {}

    def get_config(self):
        return {
            "schedule": self.schedule.get_config(),
            "prediction_type": self.prediction_type,
            "timestep_spacing": self.timestep_spacing,
            "steps_offset": self.steps_offset,
            "seed": self.seed,
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
            **self._extra_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = config.pop("schedule")
        if isinstance(schedule, dict):
            schedule = NoiseSchedule.from_config(schedule)
        return cls(schedule, **config)


def _clamped_sqrt(value):
    """`sqrt(max(value, 0))`: rounding can leave a variance a hair below 0."""
    return ops.sqrt(ops.maximum(value, 0.0))


class DDPMSampler(Sampler):
    """Ancestral DDPM sampling from the posterior `q(x_prev | x_t, x0_hat)`.

    With fewer inference steps than training steps the posterior is taken between
    consecutive spaced timesteps, as diffusers' `DDPMScheduler`. No noise is added
    on the last step (it lands on the data).

    Args:
        schedule: a `NoiseSchedule`.
        prediction_type: "eps", "v" or "x0".
        variance_type: "fixed_small" (the posterior variance, `beta_tilde`) or
            "fixed_large" (`beta`); Ho et al. Sec. 3.2.
        timestep_spacing: "trailing", "leading" or "linspace".
        steps_offset: added to "leading" timesteps.
        clip_sample, clip_sample_range: clip the predicted `x0` (see `Sampler`).
        seed: int seed of the sampler's `SeedGenerator`.

    Example:
    ```python
    sampler = DDPMSampler(make_schedule("linear"))
    images = sample(denoiser, sampler, noise, 1000, seed=0)
    ```
    """

    stochastic = True
    VARIANCE_TYPES = ("fixed_small", "fixed_large")

    def __init__(
        self,
        schedule,
        prediction_type="eps",
        variance_type="fixed_small",
        timestep_spacing="trailing",
        steps_offset=0,
        seed=None,
        clip_sample=False,
        clip_sample_range=1.0,
    ):
        if variance_type not in self.VARIANCE_TYPES:
            raise ValueError(
                f"`variance_type` must be one of {list(self.VARIANCE_TYPES)}. "
                f"Received: variance_type={variance_type!r}"
            )
        super().__init__(
            schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            seed=seed,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
        )
        self.variance_type = variance_type

    def _extra_config(self):
        return {"variance_type": self.variance_type}

    def stateless_step(self, model_output, i, sample, noise, state, n):
        t = self._spaced_timestep(i, n)
        t_prev = self._spaced_timestep(ops.cast(i, "int32") + 1, n)
        alpha = self._alpha_cumprod(t)
        alpha_prev = self._alpha_cumprod(t_prev)
        x0, _ = self._split(model_output, sample, ops.sqrt(alpha), ops.sqrt(1.0 - alpha))
        alpha_step = alpha / alpha_prev
        beta_step = 1.0 - alpha_step
        # Ho et al. Eq. 7: posterior mean and variance between the two timesteps.
        coef_x0 = ops.sqrt(alpha_prev) * beta_step / (1.0 - alpha)
        coef_sample = _clamped_sqrt(alpha_step) * (1.0 - alpha_prev) / (1.0 - alpha)
        if self.variance_type == "fixed_small":
            variance = ops.maximum((1.0 - alpha_prev) / (1.0 - alpha) * beta_step, 1e-20)
        else:
            variance = beta_step
        variance = ops.where(t_prev < 0, 0.0, variance)
        dtype = sample.dtype
        prev = (
            ops.cast(_per_example(coef_x0, sample), dtype) * x0
            + ops.cast(_per_example(coef_sample, sample), dtype) * sample
        )
        prev = prev + ops.cast(_per_example(ops.sqrt(variance), sample), dtype) * ops.cast(
            noise, dtype
        )
        return prev, state


class DDIMSampler(Sampler):
    """DDIM sampling (Song et al. 2021, Eq. 12): deterministic for `eta = 0`.

    `eta = 1` gives DDPM's "fixed_small" ancestral sampler.

    Args:
        schedule: a `NoiseSchedule`.
        prediction_type: "eps", "v" or "x0".
        eta: stochasticity, `>= 0` (0: the probability-flow ODE's first-order solver).
        timestep_spacing: "trailing", "leading" or "linspace".
        steps_offset: added to "leading" timesteps.
        clip_sample, clip_sample_range: clip the predicted `x0` (see `Sampler`).
        seed: int seed of the sampler's `SeedGenerator` (used when `eta > 0`).

    Example:
    ```python
    sampler = DDIMSampler(make_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012))
    latents = sample(denoiser, sampler, noise, 50)
    ```
    """

    def __init__(
        self,
        schedule,
        prediction_type="eps",
        eta=0.0,
        timestep_spacing="trailing",
        steps_offset=0,
        seed=None,
        clip_sample=False,
        clip_sample_range=1.0,
    ):
        if isinstance(eta, bool) or not isinstance(eta, int | float) or eta < 0:
            raise ValueError(f"`eta` must be a number >= 0. Received: eta={eta!r}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        super().__init__(
            schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            seed=seed,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
        )

    def _extra_config(self):
        return {"eta": self.eta}

    def stateless_step(self, model_output, i, sample, noise, state, n):
        t = self._spaced_timestep(i, n)
        t_prev = self._spaced_timestep(ops.cast(i, "int32") + 1, n)
        alpha = self._alpha_cumprod(t)
        alpha_prev = self._alpha_cumprod(t_prev)
        x0, eps = self._split(model_output, sample, ops.sqrt(alpha), ops.sqrt(1.0 - alpha))
        dtype = sample.dtype
        prev_sample = ops.cast(_per_example(ops.sqrt(alpha_prev), sample), dtype) * x0
        if self.stochastic:
            # Song et al. Eq. 16.
            sigma = self.eta * _clamped_sqrt(
                (1.0 - alpha_prev) / (1.0 - alpha) * (1.0 - alpha / alpha_prev)
            )
            direction = _clamped_sqrt(1.0 - alpha_prev - ops.square(sigma))
            prev_sample = prev_sample + ops.cast(_per_example(direction, sample), dtype) * eps
            prev_sample = prev_sample + ops.cast(_per_example(sigma, sample), dtype) * ops.cast(
                noise, dtype
            )
        else:
            prev_sample = (
                prev_sample
                + ops.cast(_per_example(ops.sqrt(1.0 - alpha_prev), sample), dtype) * eps
            )
        return prev_sample, state


class DPMSolverMultistepSampler(Sampler):
    """DPM-Solver++(2M): second-order multistep solver of the probability-flow ODE.

    Works on the data prediction `x0_hat` in half-log-SNR time
    `lambda = log(alpha / sigma)` (Lu et al. 2022, Algorithm 2, the "midpoint" form
    of diffusers). The first step and the last step are first order (the last one
    lands on sigma = 0, where the second-order correction is undefined); order 1
    everywhere equals DDIM with `eta = 0`.

    Args:
        schedule: a `NoiseSchedule`.
        prediction_type: "eps", "v" or "x0".
        solver_order: 2 (default) or 1.
        timestep_spacing: "trailing", "leading" or "linspace".
        steps_offset: added to "leading" timesteps.
        clip_sample, clip_sample_range: clip the predicted `x0` (see `Sampler`).

    Example:
    ```python
    sampler = DPMSolverMultistepSampler(make_schedule("linear"), prediction_type="v")
    images = sample(denoiser, sampler, noise, 20)
    ```
    """

    def __init__(
        self,
        schedule,
        prediction_type="eps",
        solver_order=2,
        timestep_spacing="trailing",
        steps_offset=0,
        clip_sample=False,
        clip_sample_range=1.0,
    ):
        if solver_order not in (1, 2) or isinstance(solver_order, bool):
            raise ValueError(
                f"`solver_order` must be 1 or 2. Received: solver_order={solver_order!r}"
            )
        super().__init__(
            schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
        )
        self.solver_order = solver_order

    def get_config(self):
        config = super().get_config()
        config.pop("seed")
        return config

    def _extra_config(self):
        return {"solver_order": self.solver_order}

    def initial_state(self, sample):
        return {"prev_x0": ops.zeros_like(sample)}

    def _signal_and_noise_scales(self, t):
        """`(sqrt(alpha_cumprod), sqrt(1 - alpha_cumprod))` at `t`: Lu et al.'s alpha_t, sigma_t."""
        alpha = self._alpha_cumprod(t)
        return ops.sqrt(alpha), ops.sqrt(1.0 - alpha)

    def stateless_step(self, model_output, i, sample, noise, state, n):
        i = ops.cast(i, "int32")
        t = self._spaced_timestep(i, n)
        t_next = self._spaced_timestep(i + 1, n)
        alpha_s, sigma_s = self._signal_and_noise_scales(t)
        alpha_n, sigma_n = self._signal_and_noise_scales(t_next)
        x0, _ = self._split(model_output, sample, alpha_s, sigma_s)
        # exp(-h) with h = lambda_next - lambda_s, as a ratio: finite when the target
        # sigma is 0 (last step) or the current alpha is 0 (zero terminal SNR).
        exp_neg_h = alpha_s * sigma_n / (sigma_s * alpha_n)
        dtype = sample.dtype
        prev_sample = (
            ops.cast(_per_example(sigma_n / sigma_s, sample), dtype) * sample
            + ops.cast(_per_example(alpha_n * (1.0 - exp_neg_h), sample), dtype) * x0
        )
        if self.solver_order == 2:
            alpha_p, sigma_p = self._signal_and_noise_scales(
                self._spaced_timestep(ops.maximum(i - 1, 0), n)
            )
            lambda_p = ops.log(alpha_p) - ops.log(sigma_p)
            lambda_s = ops.log(alpha_s) - ops.log(sigma_s)
            lambda_n = ops.log(alpha_n) - ops.log(sigma_n)
            use_second_order = ops.logical_and(i > 0, i < ops.cast(n, "int32") - 1)
            # D1 = (x0 - prev_x0) / r0 with r0 = h_prev / h; 0 where first order.
            inv_r0 = ops.where(use_second_order, (lambda_n - lambda_s) / (lambda_s - lambda_p), 0.0)
            correction = 0.5 * alpha_n * (1.0 - exp_neg_h) * inv_r0
            prev_sample = prev_sample + ops.cast(_per_example(correction, sample), dtype) * (
                x0 - state["prev_x0"]
            )
        return prev_sample, {"prev_x0": x0}


class EulerSampler(Sampler):
    """Euler solver of the probability-flow ODE in sigma space (Karras et al. 2022).

    The sample lives in the variance-exploding space `x = x0 + sigma * eps`
    (`init_noise_sigma = sqrt(sigma_max**2 + 1)`; diffusers uses `sigma_max` for
    trailing spacing, which differs by `1 / (2 sigma_max**2)`) and the denoiser sees
    `x / sqrt(sigma**2 + 1)`, the usual VP sample. Timesteps handed to the
    denoiser are float32: integer-valued, or fractional with Karras sigmas (see
    `timestep_to_sigma`).

    Args:
        schedule: a `NoiseSchedule`. A zero-terminal-SNR schedule's infinite
            sigma_max is replaced by that of `alpha_cumprod = 2**-24`, as diffusers.
        prediction_type: "eps", "v" or "x0".
        use_karras_sigmas: space sigmas as Karras et al. Eq. 5 between the
            schedule's smallest sigma (`sigmas[0]`) and the first spaced timestep's
            sigma (diffusers takes the smallest from the last spaced timestep).
        karras_rho: the exponent `rho` of Eq. 5.
        timestep_spacing: "trailing", "leading" or "linspace".
        steps_offset: added to "leading" timesteps.
        clip_sample, clip_sample_range: clip the predicted `x0` (see `Sampler`).

    Example:
    ```python
    sampler = EulerSampler(make_schedule("linear"), use_karras_sigmas=True)
    images = sample(denoiser, sampler, noise, 30)
    ```
    """

    timestep_dtype = "float32"
    # No cap on the starting sigma: on the discrete sigmas Euler is then DDIM exactly.
    sigma_max = None

    def __init__(
        self,
        schedule,
        prediction_type="eps",
        use_karras_sigmas=False,
        karras_rho=7.0,
        timestep_spacing="trailing",
        steps_offset=0,
        clip_sample=False,
        clip_sample_range=1.0,
    ):
        if not karras_rho > 0:
            raise ValueError(f"`karras_rho` must be > 0. Received: karras_rho={karras_rho!r}")
        super().__init__(
            schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
        )
        self.use_karras_sigmas = bool(use_karras_sigmas)
        self.karras_rho = float(karras_rho)
        self.sigmas = None

    def get_config(self):
        config = super().get_config()
        config.pop("seed")
        return config

    def _extra_config(self):
        return {"use_karras_sigmas": self.use_karras_sigmas, "karras_rho": self.karras_rho}

    def set_timesteps(self, num_inference_steps):
        timesteps = super().set_timesteps(num_inference_steps)
        n = self.num_inference_steps
        self.sigmas = self._sigma(ops.arange(n + 1, dtype="int32"), n)
        return timesteps

    def _sigma(self, k, n):
        """Sigma of inference step `k`, 0 for `k >= n` (float32)."""
        k = ops.cast(k, "int32")
        n = ops.cast(n, "int32")
        if self.use_karras_sigmas:
            rho = self.karras_rho
            sigma_max = self._capped_sigma(
                gather(self.schedule.sigmas, self._spaced_timestep(0, n))
            )
            inv_rho_min = float(self.schedule.sigmas[0]) ** (1.0 / rho)
            inv_rho_max = sigma_max ** (1.0 / rho)
            ramp = ops.cast(k, "float32") / ops.cast(ops.maximum(n - 1, 1), "float32")
            sigma = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
        else:
            sigma = gather(self.schedule.sigmas, ops.maximum(self._spaced_timestep(k, n), 0))
            sigma = self._capped_sigma(sigma)
        return ops.where(k >= n, 0.0, sigma)

    def _capped_sigma(self, sigma):
        """`min(sigma, sigma_max)`; `sigma` unchanged when `sigma_max` is None."""
        if self.sigma_max is None:
            return sigma
        return ops.minimum(sigma, self.sigma_max)

    def model_timestep(self, i, n):
        if self.use_karras_sigmas:
            return sigma_to_timestep(self.schedule, self._sigma(i, n))
        t = ops.cast(self._spaced_timestep(i, n), "float32")
        if self.sigma_max is None:
            return t
        # sigma grows with t: a capped sigma is that of the fractional timestep of sigma_max.
        return ops.minimum(t, sigma_to_timestep(self.schedule, self.sigma_max))

    def stateless_init_noise_sigma(self, n):
        return ops.sqrt(ops.square(self._sigma(0, n)) + 1.0)

    def stateless_scale_model_input(self, sample, i, n):
        scale = ops.sqrt(ops.square(self._sigma(i, n)) + 1.0)
        return sample / ops.cast(_per_example(scale, sample), sample.dtype)

    def _predicted_x0(self, model_output, sample, sigma):
        """`x0_hat` (clipped with `clip_sample`) from the output at `x = x0 + sigma * eps`."""
        # The model saw x / sqrt(sigma^2 + 1) with alpha = 1 / (1 + sigma^2).
        scale = ops.sqrt(ops.square(sigma) + 1.0)
        dtype = sample.dtype
        x0, _ = self._split(
            model_output,
            sample / ops.cast(_per_example(scale, sample), dtype),
            ops.cast(_per_example(1.0 / scale, sample), dtype),
            ops.cast(_per_example(sigma / scale, sample), dtype),
        )
        return x0

    def stateless_step(self, model_output, i, sample, noise, state, n):
        sigma = self._sigma(i, n)
        sigma_next = self._sigma(ops.cast(i, "int32") + 1, n)
        x0 = self._predicted_x0(model_output, sample, sigma)
        # x + (sigma_next - sigma) * (x - x0) / sigma, written to be exact at sigma_next = 0.
        return x0 + ops.cast(_per_example(sigma_next / sigma, sample), sample.dtype) * (
            sample - x0
        ), state


class HeunSampler(EulerSampler):
    """Heun's second-order solver (Karras et al. 2022, Algorithm 1): 2 model calls a step.

    As diffusers' `HeunDiscreteScheduler`, the calls are interleaved: call `2k`
    is the Euler predictor of step `k` (at `sigma_k`), call `2k + 1` the corrector
    (at `sigma_{k+1}`); the last step, to sigma = 0, is a plain Euler step, so `n`
    steps cost `2n - 1` model calls and `timesteps` has `2n - 1` entries.

    Sigmas above `sigma_max` (80, Karras et al. 2022, Table 1) are replaced by
    `sigma_max`: the initial noise is scaled by it and the denoiser sees the
    fractional timestep whose sigma it is. Without the cap, the cosine schedule's
    first trailing step is a trapezoid from sigma 20291 (`t = 999`) to 12.8 (20 steps), which
    multiplies the difference between its two slopes by ~10^4: even the exact
    denoiser's differ enough to diverge (Euler, DDIM and DPM-Solver++ take that
    step in closed form and need no cap). With Karras sigmas the ramp of Eq. 5
    starts at the capped sigma; without them, spaced timesteps whose sigma exceeds
    the cap become zero-length steps (the linear schedule's `t >= 930`).

    Args:
        schedule: a `NoiseSchedule`.
        prediction_type: "eps", "v" or "x0".
        use_karras_sigmas: space sigmas as Karras et al. Eq. 5 (default; False: the
            sigmas of the spaced timesteps).
        karras_rho: the exponent `rho` of Eq. 5.
        sigma_max: largest sigma, a float > 0; None keeps the schedule's (no cap).
        timestep_spacing: "trailing", "leading" or "linspace"; with Karras sigmas
            it only sets the first sigma (that of the first spaced timestep, capped).
        steps_offset: added to "leading" timesteps.
        clip_sample, clip_sample_range: clip the predicted `x0` (see `Sampler`).

    Example:
    ```python
    sampler = HeunSampler(make_schedule("cosine"), prediction_type="v")
    images = sample(denoiser, sampler, noise, 15)  # 29 denoiser calls
    ```
    """

    def __init__(
        self,
        schedule,
        prediction_type="eps",
        use_karras_sigmas=True,
        karras_rho=7.0,
        sigma_max=80.0,
        timestep_spacing="trailing",
        steps_offset=0,
        clip_sample=False,
        clip_sample_range=1.0,
    ):
        if sigma_max is not None and not is_finite_positive(sigma_max):
            raise ValueError(
                "`sigma_max` must be None or a finite number > 0. "
                f"Received: sigma_max={sigma_max!r}"
            )
        super().__init__(
            schedule,
            prediction_type=prediction_type,
            use_karras_sigmas=use_karras_sigmas,
            karras_rho=karras_rho,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
        )
        self.sigma_max = None if sigma_max is None else float(sigma_max)

    def _extra_config(self):
        return {**super()._extra_config(), "sigma_max": self.sigma_max}

    def num_model_calls(self, n):
        return 2 * n - 1

    def _sigma_index(self, i):
        """Index `k` of the sigma that model call `i` evaluates the denoiser at."""
        return ops.floor_divide(ops.cast(i, "int32") + 1, 2)

    def model_timestep(self, i, n):
        return super().model_timestep(self._sigma_index(i), n)

    def stateless_scale_model_input(self, sample, i, n):
        return super().stateless_scale_model_input(sample, self._sigma_index(i), n)

    def initial_state(self, sample):
        return {"derivative": ops.zeros_like(sample), "sample": ops.zeros_like(sample)}

    def stateless_step(self, model_output, i, sample, noise, state, n):
        i = ops.cast(i, "int32")
        is_corrector = ops.equal(ops.mod(i, 2), 1)
        k = ops.floor_divide(i, 2)
        sigma = self._sigma(k, n)
        sigma_next = self._sigma(k + 1, n)
        sigma_eval = ops.where(is_corrector, sigma_next, sigma)
        x0 = self._predicted_x0(model_output, sample, sigma_eval)
        dtype = sample.dtype
        # The corrector's sigma_eval is never 0 (the last step has no corrector).
        derivative = (sample - x0) / ops.cast(_per_example(sigma_eval, sample), dtype)
        step_size = ops.cast(_per_example(sigma_next - sigma, sample), dtype)
        # Predictor: Euler from sigma_k (exact at sigma_next = 0).
        predicted = x0 + ops.cast(_per_example(sigma_next / sigma, sample), dtype) * (sample - x0)
        # Corrector: trapezoid from the saved sample with the two slopes.
        corrected = state["sample"] + step_size * 0.5 * (state["derivative"] + derivative)
        is_corrector = _per_example(is_corrector, sample)
        new_sample = ops.where(is_corrector, corrected, predicted)
        new_state = {
            "derivative": ops.where(is_corrector, state["derivative"], derivative),
            "sample": ops.where(is_corrector, state["sample"], sample),
        }
        return new_sample, new_state


SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmpp_2m": DPMSolverMultistepSampler,
    "euler": EulerSampler,
    "heun": HeunSampler,
}


def make_sampler(name, schedule, **kwargs):
    """Build a sampler by name.

    Args:
        name: "ddpm", "ddim", "dpmpp_2m", "euler" or "heun".
        schedule: a `NoiseSchedule`.
        **kwargs: the sampler's constructor arguments.

    Returns:
        A `Sampler`.

    Example:
    ```python
    sampler = make_sampler("ddim", schedule, eta=0.0, prediction_type="v")
    ```
    """
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler: `name` must be one of {list(SAMPLERS)}. Received: name={name!r}"
        )
    return SAMPLERS[name](schedule, **kwargs)


def sample(
    denoiser,
    sampler,
    noise,
    num_inference_steps,
    *,
    conditioning=None,
    guidance_scale=None,
    seed=None,
):
    """Run the whole sampling loop as one `keras.ops.fori_loop` (one graph).

    Args:
        denoiser: callable `denoiser(x_t, t, conditioning)` returning the model
            output in `sampler.prediction_type`, shaped like `x_t`. `t` is a
            `(B,)` vector of train timesteps: int32, or float32 for Euler/Heun.
        sampler: a `Sampler` (its `set_timesteps` state is neither used nor changed).
        noise: standard normal starting noise `(B, ...)` (scaled here by the
            sampler's `init_noise_sigma`).
        num_inference_steps: Python int in `[1, num_train_timesteps]` (else
            `ValueError`), or an int scalar tensor (clamped to that range, since a
            graph cannot raise), e.g. an exported endpoint's input, or a `(B,)`
            int tensor of per-example counts (clamped likewise): the loop then runs
            to the largest count, each example steps on its own table (the tables
            are closed forms of `(i, n)`) and holds its sample once its own count
            is reached, so an example's result does not depend on the others.
        conditioning: passed to the denoiser unchanged (None if unconditional).
        guidance_scale: overrides the scale of a `guided_denoiser` (float or
            scalar/`(B,)` tensor); the denoiser must come from `guided_denoiser`.
        seed: noise of stochastic samplers: an int, an int scalar tensor, a `(B,)`
            int tensor of per-example seeds (each example's noise is drawn from its
            own seed, so it does not depend on the rest of the batch) or a
            `keras.random.SeedGenerator` (None: the sampler's own). The same int or
            tensor seed gives the same samples within one execution mode (XLA draws
            other numbers than TF's kernels for the same seed). In an exported
            endpoint pass an int or a tensor input: a `SeedGenerator`'s variable
            would have to be tracked by the archive.

    Returns:
        The final sample, shaped like `noise`.

    Example:
    ```python
    sampler = DPMSolverMultistepSampler(make_schedule("linear"))
    images = sample(denoiser, sampler, keras.random.normal((8, 32, 32, 3), seed=0), 20)
    ```
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"`sampler` must be a Sampler. Received: sampler={sampler!r}")
    extra = {}
    if guidance_scale is not None:
        if not getattr(denoiser, "accepts_guidance_scale", False):
            raise TypeError(
                "`guidance_scale` needs a denoiser built by `guided_denoiser(...)`. "
                f"Received: denoiser={denoiser!r}"
            )
        extra["guidance_scale"] = guidance_scale
    n = sampler._validate_num_steps(num_inference_steps)
    per_example = _rank(n) == 1
    noise = ops.convert_to_tensor(noise)
    x = noise * ops.cast(_per_example(sampler.stateless_init_noise_sigma(n), noise), noise.dtype)
    batch = ops.shape(x)[0]
    base_seed = _base_seed(seed, sampler) if sampler.stochastic else None
    calls = sampler.num_model_calls(n)  # (B,) when per-example

    def body(i, carry):
        x, state = carry
        # Each example's own step index: held at its last step once its count is reached.
        step = ops.minimum(i, calls - 1) if per_example else i
        t = ops.cast(sampler.model_timestep(step, n), sampler.timestep_dtype)
        model_output = denoiser(
            sampler.stateless_scale_model_input(x, step, n),
            ops.broadcast_to(t, (batch,)),
            conditioning,
            **extra,
        )
        step_noise = None
        if sampler.stochastic:
            step_noise = _step_noise(base_seed, step, x)
        new = sampler.stateless_step(model_output, step, x, step_noise, state, n)
        if not per_example:
            return new
        active = _per_example(i < calls, x)
        return keras.tree.map_structure(
            lambda updated, held: ops.where(active, updated, held), new, (x, state)
        )

    num_calls = ops.max(calls) if per_example else calls
    x, _ = ops.fori_loop(0, num_calls, body, (x, sampler.initial_state(x)))
    return x


def _step_noise(base_seed, step, x):
    """Standard normal noise of one step: one draw per example for per-example seeds."""
    if _rank(base_seed) == 0:
        step_seed = ops.stack([base_seed, _STEP_OFFSET + ops.cast(step, "int32")])
        return keras.random.normal(ops.shape(x), dtype=x.dtype, seed=TensorSeed(step_seed))
    steps = ops.broadcast_to(ops.cast(step, "int32"), ops.shape(base_seed))
    seeds = ops.stack([base_seed, _STEP_OFFSET + steps], axis=1)  # (B, 2)
    shape = tuple(x.shape[1:])
    return ops.map(
        lambda pair: keras.random.normal(shape, dtype=x.dtype, seed=TensorSeed(pair)), seeds
    )
