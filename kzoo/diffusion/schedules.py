"""Noise schedules, forward noising, prediction-type conversions and loss weights.

The forward process is the variance-preserving one of DDPM,
`x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps` with `a_t = alphas_cumprod[t]`.

- DDPM and the `linear` schedule: Ho et al. 2020, https://arxiv.org/abs/2006.11239
  (Eq. 4 for `add_noise`).
- `scaled_linear`: the schedule of Stable Diffusion (Rombach et al. 2022,
  https://arxiv.org/abs/2112.10752), linear in `sqrt(beta)`.
- `cosine`: Nichol & Dhariwal 2021, https://arxiv.org/abs/2102.09672 (Eq. 17,
  `s = 0.008`, betas clipped at 0.999).
- `sigmoid`: betas following a sigmoid over `[-6, 6]`, as diffusers' DDPM
  (Jabri et al. 2022, https://arxiv.org/abs/2212.11972).
- Zero terminal SNR rescale: Lin et al. 2023, https://arxiv.org/abs/2305.08891
  (Algorithm 1).
- v-prediction: Salimans & Ho 2022, https://arxiv.org/abs/2202.00512 (Sec. 4,
  `v = sqrt(a) * eps - sqrt(1 - a) * x0`).
- Karras/EDM sigmas `sigma = sqrt((1 - a) / a)`: Karras et al. 2022,
  https://arxiv.org/abs/2206.00364 (Table 1, the VP row).
- Min-SNR-gamma loss weights: Hang et al. 2023, https://arxiv.org/abs/2303.09556
  (Sec. 3.4; the eps and v forms as in their code).

Tables are computed once in float64 NumPy and exposed as float32 arrays; every
function that takes tensors is written in `keras.ops`, so it traces into graphs,
XLA and exported endpoints.
"""

import math

import keras
import numpy as np
from keras import ops

SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid")
PREDICTION_TYPES = ("eps", "v", "x0")

# sigma = sqrt((1 - a) / a) is infinite where a zero-terminal-SNR schedule reaches
# a = 0; like diffusers' Euler scheduler, sigmas use a = 2**-24 there instead.
_ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def validate_prediction_type(prediction_type):
    """Raise `ValueError` unless `prediction_type` is one of `PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"`prediction_type` must be one of {list(PREDICTION_TYPES)}. "
            f"Received: prediction_type={prediction_type!r}"
        )


def _cosine_betas(num_train_timesteps, max_beta=0.999, s=0.008):
    def alpha_bar(t):
        return math.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2

    steps = np.arange(num_train_timesteps, dtype=np.float64)
    betas = [
        1.0 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps)
        for i in steps
    ]
    return np.minimum(np.asarray(betas, dtype=np.float64), max_beta)


def _rescale_zero_terminal_snr(betas):
    # Lin et al. 2023, Algorithm 1: shift sqrt(alphas_cumprod) so its last value is
    # 0, scale it so its first value is unchanged, then recover the betas.
    alphas_cumprod = np.cumprod(1.0 - betas)
    sqrt_ac = np.sqrt(alphas_cumprod)
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    alphas_cumprod = sqrt_ac**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


@keras.saving.register_keras_serializable(package="kzoo")
class NoiseSchedule:
    """A discrete variance-preserving noise schedule and its derived tables.

    A small config object: the constructor arguments are its whole state, the
    tables are recomputed from them. Prefer `make_schedule(...)` to build one.

    Attributes (NumPy float32 arrays of shape `(num_train_timesteps,)`):
        betas, alphas, alphas_cumprod, sqrt_alphas_cumprod,
        sqrt_one_minus_alphas_cumprod, sigmas (`sqrt((1 - a) / a)`, with `a`
        replaced by `2**-24` where it is 0), log_snr (`log(a / (1 - a))`, `-inf`
        where a zero-terminal-SNR schedule reaches `a = 0`).

    Args:
        name: one of `SCHEDULE_NAMES`.
        num_train_timesteps: number of training timesteps, `>= 1`.
        beta_start: first beta of `linear`/`scaled_linear`/`sigmoid`, in `(0, 1)`.
        beta_end: last beta, in `[beta_start, 1)`. `cosine` ignores both betas but
            they are validated all the same.
        rescale_zero_terminal_snr: rescale so that `alphas_cumprod[-1] == 0`
            (needs `num_train_timesteps >= 2`; train with v-prediction and sample
            with "trailing" spacing, as Lin et al. recommend).

    Example:
    ```python
    schedule = NoiseSchedule("cosine", num_train_timesteps=1000)
    schedule.alphas_cumprod[:3]
    same = NoiseSchedule.from_config(schedule.get_config())
    ```
    """

    def __init__(
        self,
        name="linear",
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        rescale_zero_terminal_snr=False,
    ):
        if name not in SCHEDULE_NAMES:
            raise ValueError(
                f"Unknown noise schedule: `name` must be one of {list(SCHEDULE_NAMES)}. "
                f"Received: name={name!r}"
            )
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int | np.integer)
            or num_train_timesteps < 1
        ):
            raise ValueError(
                "`num_train_timesteps` must be an integer >= 1. "
                f"Received: num_train_timesteps={num_train_timesteps!r}"
            )
        if not 0.0 < beta_start < 1.0:
            raise ValueError(f"`beta_start` must be in (0, 1). Received: beta_start={beta_start}")
        if not beta_start <= beta_end < 1.0:
            raise ValueError(
                f"`beta_end` must be in [beta_start, 1) with beta_start={beta_start}. "
                f"Received: beta_end={beta_end}"
            )
        if rescale_zero_terminal_snr and num_train_timesteps < 2:
            raise ValueError(
                "`rescale_zero_terminal_snr=True` needs `num_train_timesteps >= 2`. "
                f"Received: num_train_timesteps={num_train_timesteps}"
            )
        self.name = name
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        self._build_tables()

    def _build_tables(self):
        steps = self.num_train_timesteps
        if self.name == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, steps, dtype=np.float64)
        elif self.name == "scaled_linear":
            betas = (
                np.linspace(self.beta_start**0.5, self.beta_end**0.5, steps, dtype=np.float64) ** 2
            )
        elif self.name == "cosine":
            betas = _cosine_betas(steps)
        else:  # sigmoid
            ramp = np.linspace(-6.0, 6.0, steps, dtype=np.float64)
            betas = 1.0 / (1.0 + np.exp(-ramp)) * (self.beta_end - self.beta_start)
            betas = betas + self.beta_start
        if self.rescale_zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        if self.rescale_zero_terminal_snr:
            alphas_cumprod[-1] = 0.0  # exact, not 1e-17 of round-off
        safe_ac = np.where(alphas_cumprod > 0.0, alphas_cumprod, _ZERO_SNR_ALPHA_CUMPROD)
        with np.errstate(divide="ignore"):
            log_snr = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)

        def f32(values):
            return np.asarray(values, dtype=np.float32)

        self.betas = f32(betas)
        self.alphas = f32(alphas)
        self.alphas_cumprod = f32(alphas_cumprod)
        self.sqrt_alphas_cumprod = f32(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = f32(np.sqrt(1.0 - alphas_cumprod))
        self.sigmas = f32(np.sqrt((1.0 - safe_ac) / safe_ac))
        self.log_snr = f32(log_snr)

    def get_config(self):
        return {
            "name": self.name,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "rescale_zero_terminal_snr": self.rescale_zero_terminal_snr,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, NoiseSchedule) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"NoiseSchedule({args})"


def make_schedule(
    name,
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    rescale_zero_terminal_snr=False,
):
    """Build a `NoiseSchedule` by name.

    Args:
        name: "linear", "scaled_linear" (Stable Diffusion uses `beta_start=0.00085,
            beta_end=0.012`), "cosine" or "sigmoid".
        num_train_timesteps: number of training timesteps, `>= 1`.
        beta_start: first beta, in `(0, 1)`.
        beta_end: last beta, in `[beta_start, 1)`.
        rescale_zero_terminal_snr: make `alphas_cumprod[-1] == 0` (Lin et al. 2023).

    Returns:
        A `NoiseSchedule`.

    Example:
    ```python
    schedule = make_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
    ```
    """
    return NoiseSchedule(
        name=name,
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        rescale_zero_terminal_snr=rescale_zero_terminal_snr,
    )


def broadcast_like(values, sample):
    """Reshape per-example values `(B,)` to `(B, 1, ..., 1)` to broadcast over `sample`.

    Scalars are returned unchanged; the result is cast to `sample`'s dtype.
    """
    values = ops.cast(values, sample.dtype)
    if len(values.shape) == 1:
        values = ops.reshape(values, (-1,) + (1,) * (len(sample.shape) - 1))
    return values


def gather(table, t):
    """`table[t]` for an int tensor `t` (any shape), as a float32 tensor."""
    return ops.take(ops.convert_to_tensor(table, dtype="float32"), ops.cast(t, "int32"))


def split_prediction(prediction_type, model_output, sample, sqrt_alpha, sqrt_one_minus_alpha):
    """Turn a model output into the implied `(x0, eps)` pair at one noise level.

    `sqrt_alpha` and `sqrt_one_minus_alpha` are the noise level's coefficients,
    already broadcastable to `sample` (scalars or `(B, 1, ..., 1)`).

    Args:
        prediction_type: "eps", "v" or "x0": what `model_output` predicts.
        model_output: the denoiser's output, shaped like `sample`.
        sample: the noisy sample `x_t`.
        sqrt_alpha: `sqrt(a_t)`.
        sqrt_one_minus_alpha: `sqrt(1 - a_t)`.

    Returns:
        `(x0_hat, eps_hat)`, tensors shaped like `sample`.
    """
    validate_prediction_type(prediction_type)
    model_output = ops.cast(model_output, sample.dtype)
    if prediction_type == "eps":
        eps = model_output
        x0 = (sample - sqrt_one_minus_alpha * eps) / sqrt_alpha
    elif prediction_type == "v":
        x0 = sqrt_alpha * sample - sqrt_one_minus_alpha * model_output
        eps = sqrt_one_minus_alpha * sample + sqrt_alpha * model_output
    else:
        x0 = model_output
        eps = (sample - sqrt_alpha * x0) / sqrt_one_minus_alpha
    return x0, eps


def _coefficients(schedule, t, like):
    sqrt_alpha = broadcast_like(gather(schedule.sqrt_alphas_cumprod, t), like)
    sqrt_one_minus_alpha = broadcast_like(gather(schedule.sqrt_one_minus_alphas_cumprod, t), like)
    return sqrt_alpha, sqrt_one_minus_alpha


def add_noise(schedule, x0, noise, t):
    """Forward process: `x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * noise` (DDPM Eq. 4).

    Args:
        schedule: a `NoiseSchedule`.
        x0: clean data `(B, ...)`.
        noise: standard normal noise shaped like `x0`.
        t: int timesteps, shape `(B,)` or a scalar, in `[0, num_train_timesteps)`.

    Returns:
        The noisy sample `x_t`, shaped like `x0`.

    Example:
    ```python
    t = keras.random.randint((batch,), 0, schedule.num_train_timesteps, seed=gen)
    x_t = add_noise(schedule, x0, keras.random.normal(ops.shape(x0), seed=gen), t)
    ```
    """
    sqrt_alpha, sqrt_one_minus_alpha = _coefficients(schedule, t, x0)
    return sqrt_alpha * x0 + sqrt_one_minus_alpha * ops.cast(noise, x0.dtype)


def predict_x0(schedule, model_output, sample, t, prediction_type="eps"):
    """The clean sample `x0` implied by a model output at timesteps `t`.

    Args:
        schedule: a `NoiseSchedule`.
        model_output: the denoiser's output, shaped like `sample`.
        sample: the noisy sample `x_t`.
        t: int timesteps `(B,)` or a scalar.
        prediction_type: "eps", "v" or "x0".

    Returns:
        `x0_hat`, shaped like `sample`.

    Example:
    ```python
    x0_hat = predict_x0(schedule, model(x_t, t), x_t, t, prediction_type="v")
    ```
    """
    validate_prediction_type(prediction_type)
    return split_prediction(
        prediction_type, model_output, sample, *_coefficients(schedule, t, sample)
    )[0]


def predict_eps(schedule, model_output, sample, t, prediction_type="v"):
    """The noise `eps` implied by a model output at timesteps `t`.

    Args:
        schedule: a `NoiseSchedule`.
        model_output: the denoiser's output, shaped like `sample`.
        sample: the noisy sample `x_t`.
        t: int timesteps `(B,)` or a scalar.
        prediction_type: "eps", "v" or "x0".

    Returns:
        `eps_hat`, shaped like `sample`.

    Example:
    ```python
    eps_hat = predict_eps(schedule, model(x_t, t), x_t, t, prediction_type="x0")
    ```
    """
    validate_prediction_type(prediction_type)
    return split_prediction(
        prediction_type, model_output, sample, *_coefficients(schedule, t, sample)
    )[1]


def predict_v(schedule, model_output, sample, t, prediction_type="eps"):
    """The velocity `v = sqrt(a) * eps - sqrt(1 - a) * x0` implied by a model output.

    Args:
        schedule: a `NoiseSchedule`.
        model_output: the denoiser's output, shaped like `sample`.
        sample: the noisy sample `x_t`.
        t: int timesteps `(B,)` or a scalar.
        prediction_type: "eps", "v" or "x0".

    Returns:
        `v_hat`, shaped like `sample`.

    Example:
    ```python
    v_hat = predict_v(schedule, eps_model(x_t, t), x_t, t, prediction_type="eps")
    ```
    """
    validate_prediction_type(prediction_type)
    sqrt_alpha, sqrt_one_minus_alpha = _coefficients(schedule, t, sample)
    x0, eps = split_prediction(
        prediction_type, model_output, sample, sqrt_alpha, sqrt_one_minus_alpha
    )
    return sqrt_alpha * eps - sqrt_one_minus_alpha * x0


def velocity_target(schedule, x0, noise, t):
    """The v-prediction target `sqrt(a_t) * noise - sqrt(1 - a_t) * x0`.

    Args:
        schedule: a `NoiseSchedule`.
        x0: clean data `(B, ...)`.
        noise: the noise used to make `x_t`, shaped like `x0`.
        t: int timesteps `(B,)` or a scalar.

    Returns:
        `v`, shaped like `x0`.

    Example:
    ```python
    loss = ops.mean(ops.square(model(x_t, t) - velocity_target(schedule, x0, noise, t)))
    ```
    """
    sqrt_alpha, sqrt_one_minus_alpha = _coefficients(schedule, t, x0)
    return sqrt_alpha * ops.cast(noise, x0.dtype) - sqrt_one_minus_alpha * x0


def training_target(prediction_type, schedule, x0, noise, t):
    """What a denoiser of `prediction_type` should output for `x_t = add_noise(...)`.

    Args:
        prediction_type: "eps" (the noise), "v" (the velocity) or "x0" (the data).
        schedule: a `NoiseSchedule`.
        x0: clean data `(B, ...)`.
        noise: the noise used to make `x_t`, shaped like `x0`.
        t: int timesteps `(B,)` or a scalar.

    Returns:
        The regression target, shaped like `x0`.

    Example:
    ```python
    x_t = add_noise(schedule, x0, noise, t)
    target = training_target("v", schedule, x0, noise, t)
    ```
    """
    validate_prediction_type(prediction_type)
    if prediction_type == "eps":
        return ops.cast(noise, x0.dtype)
    if prediction_type == "v":
        return velocity_target(schedule, x0, noise, t)
    return x0


def snr(schedule, t):
    """Signal-to-noise ratio `a_t / (1 - a_t)` at int timesteps `t`, float32."""
    alpha = gather(schedule.alphas_cumprod, t)
    return alpha / (1.0 - alpha)


def min_snr_loss_weight(schedule, t, prediction_type="eps", snr_gamma=5.0):
    """Min-SNR-gamma loss weights (Hang et al. 2023) for a prediction type.

    With `snr = a_t / (1 - a_t)`, an MSE on the `x0` target weighted by
    `min(snr, gamma)` is equivalent to weighting the `eps` MSE by
    `min(snr, gamma) / snr` and the `v` MSE by `min(snr, gamma) / (snr + 1)`. The
    eps form is computed as `min(gamma / snr, 1)`, which is finite (1) at the zero
    SNR of a rescaled schedule's last timestep.

    Args:
        schedule: a `NoiseSchedule`.
        t: int timesteps `(B,)` or a scalar.
        prediction_type: "eps", "v" or "x0".
        snr_gamma: the clamp `gamma > 0` (the paper uses 5).

    Returns:
        float32 weights shaped like `t`.

    Example:
    ```python
    weights = min_snr_loss_weight(schedule, t, "v")  # (B,)
    loss = ops.mean(weights * ops.mean(ops.square(pred - target), axis=(1, 2, 3)))
    ```
    """
    validate_prediction_type(prediction_type)
    if not snr_gamma > 0:
        raise ValueError(f"`snr_gamma` must be > 0. Received: snr_gamma={snr_gamma}")
    ratio = snr(schedule, t)
    if prediction_type == "eps":
        return ops.minimum(snr_gamma / ratio, 1.0)
    if prediction_type == "v":
        return ops.minimum(ratio, snr_gamma) / (ratio + 1.0)
    return ops.minimum(ratio, snr_gamma)


def timestep_to_sigma(schedule, t):
    """Sigma at possibly fractional timesteps `t`, interpolating `log(sigma)` linearly.

    Integer `t` give `schedule.sigmas[t]` exactly; this is the inverse of
    `sigma_to_timestep`. Euler/Heun samplers with Karras sigmas hand such
    fractional timesteps to the denoiser.

    Args:
        schedule: a `NoiseSchedule`.
        t: float or int tensor, values in `[0, num_train_timesteps - 1]`.

    Returns:
        float32 sigmas shaped like `t`.

    Example:
    ```python
    alpha = 1.0 / (1.0 + ops.square(timestep_to_sigma(schedule, t)))
    ```
    """
    last = schedule.num_train_timesteps - 1
    t = ops.clip(ops.cast(t, "float32"), 0.0, float(last))
    log_sigmas = ops.convert_to_tensor(np.log(schedule.sigmas), dtype="float32")
    low = ops.minimum(ops.floor(t), float(max(last - 1, 0)))
    weight = t - low
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, last)
    log_sigma = (1.0 - weight) * ops.take(log_sigmas, low) + weight * ops.take(log_sigmas, high)
    return ops.exp(log_sigma)


def sigma_to_timestep(schedule, sigma):
    """Fractional timestep whose sigma is `sigma`, interpolating in `log(sigma)`.

    As diffusers' `_sigma_to_t`: sigmas outside the schedule's range clamp to the
    first or last timestep.

    Args:
        schedule: a `NoiseSchedule`.
        sigma: float tensor of sigmas `> 0`.

    Returns:
        float32 timesteps shaped like `sigma`.

    Example:
    ```python
    t = sigma_to_timestep(schedule, ops.convert_to_tensor([0.5, 3.0]))
    ```
    """
    num = schedule.num_train_timesteps
    if num == 1:
        return ops.zeros_like(ops.cast(sigma, "float32"))
    log_sigmas = ops.convert_to_tensor(np.log(schedule.sigmas), dtype="float32")
    log_sigma = ops.log(ops.maximum(ops.cast(sigma, "float32"), 1e-10))
    # sigmas increase with t: the bracketing index is a count (no argmax, which
    # LiteRT cannot run).
    below = ops.sum(ops.cast(log_sigmas <= ops.expand_dims(log_sigma, -1), "int32"), axis=-1)
    low = ops.clip(below - 1, 0, num - 2)
    low_log = ops.take(log_sigmas, low)
    high_log = ops.take(log_sigmas, low + 1)
    weight = ops.clip((log_sigma - low_log) / (high_log - low_log), 0.0, 1.0)
    return ops.cast(low, "float32") + weight
