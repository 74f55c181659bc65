"""Samplers checked against closed forms, with no reference implementation to compare to.

For data x0 ~ N(mu, diag(s^2)) the optimal denoiser is closed form:
E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a) * (x_t - sqrt(a) mu). With it every
sampler must reproduce mu and s. For the deterministic samplers there is a sharper
oracle: the probability-flow ODE of a Gaussian has linear drift, and
y = (x_t - sqrt(a_t) mu) / sqrt(a_t s^2 + 1 - a_t) is constant along it (dy/dt = 0 by
direct substitution), so the exact ODE maps the start x_T (at a_T = alphas_cumprod of
the first spaced timestep) to x0 = mu + s * y_T, per sample. This is exact for the
continuous ODE, unlike DDIM with 1000 steps, which has its own O(1/1000) error (about
1e-2 here), so errors below are pure discretisation error of each solver.

Errors were measured with trailing spacing, the linear schedule (T = 1000), 2048
samples in 4 dimensions, mu = (-1.5, 0.3, 1, 2), s = (0.3, 0.8, 1, 1.7) (the small
s = 0.3 makes the ODE curved near the data, which is where the solvers differ).
The default spacing of every sampler is pinned on the cosine schedule with
v-prediction (`spacing_errors`; table in docs/samplers.md).
TensorFlow may be imported in tests only.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from benchmarks.quality_diffusion import steps_for_nfe
from kzoo.diffusion import schedules
from kzoo.diffusion.samplers import (
    SAMPLERS,
    TIMESTEP_SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EulerSampler,
    HeunSampler,
    make_sampler,
    sample,
)
from kzoo.diffusion.schedules import make_schedule

MU = np.array([-1.5, 0.3, 1.0, 2.0], np.float32)
STD = np.array([0.3, 0.8, 1.0, 1.7], np.float32)
NUM_SAMPLES = 2048
NOISE = np.random.default_rng(0).standard_normal((NUM_SAMPLES, 4)).astype(np.float32)
LINEAR = make_schedule("linear")
ZERO_SNR = make_schedule("linear", rescale_zero_terminal_snr=True)
COSINE = make_schedule("cosine")  # betas clipped at 0.999: sigma 20291 at t = 999


def gaussian_denoiser(schedule, prediction_type, x0_error=0.0):
    """The optimal denoiser for N(MU, STD^2) data, in keras.ops, for any prediction type.

    `x0_error` adds a deterministic error of that size to its x0 estimate, as a
    trained model's (its eps then errs by `sqrt(a / (1 - a)) * x0_error`).
    """
    alphas_cumprod = ops.convert_to_tensor(schedule.alphas_cumprod)

    def denoiser(x_t, t, conditioning):
        if "int" in str(t.dtype):
            alpha = ops.take(alphas_cumprod, t)
        else:  # Euler/Heun: float (possibly fractional) timesteps
            alpha = 1.0 / (1.0 + ops.square(schedules.timestep_to_sigma(schedule, t)))
        alpha = ops.reshape(alpha, (-1, 1))
        gain = ops.sqrt(alpha) * STD**2 / (alpha * STD**2 + 1.0 - alpha)
        x0 = MU + gain * (x_t - ops.sqrt(alpha) * MU)
        if x0_error:
            # Varies with x_t and t: Heun's two calls of one step err differently.
            t_column = ops.reshape(ops.cast(t, "float32"), (-1, 1))
            x0 = x0 + x0_error * ops.sin(x_t + 0.01 * t_column)
        eps = (x_t - ops.sqrt(alpha) * x0) / ops.sqrt(1.0 - alpha)
        if prediction_type == "eps":
            return eps
        if prediction_type == "v":
            return ops.sqrt(alpha) * eps - ops.sqrt(1.0 - alpha) * x0
        return x0

    return denoiser


def exact_ode_solution(noise, start_alpha):
    """Where the exact probability-flow ODE takes x_T = noise (see module docstring)."""
    y = (noise - np.sqrt(start_alpha) * MU) / np.sqrt(start_alpha * STD**2 + 1.0 - start_alpha)
    return MU + STD * y


def start_alpha(sampler):
    """`alphas_cumprod` where `sample` starts: t = T - 1, or Heun's capped sigma_max."""
    alpha = float(sampler.schedule.alphas_cumprod[-1])
    if getattr(sampler, "sigma_max", None) is not None:
        alpha = max(alpha, 1.0 / (1.0 + sampler.sigma_max**2))
    return alpha


def run(sampler, num_steps, noise=NOISE, seed=0, jit_compile=False, schedule=LINEAR, x0_error=0.0):
    """`sample` with the Gaussian denoiser, traced once per call site (tensor steps)."""
    denoiser = gaussian_denoiser(schedule, sampler.prediction_type, x0_error)
    fn = tf.function(
        lambda z, n, s: sample(denoiser, sampler, z, n, seed=s), jit_compile=jit_compile
    )
    if isinstance(num_steps, int):
        num_steps = [num_steps]
    return [fn(noise, tf.constant(n), tf.constant(seed)).numpy() for n in num_steps]


EXACT = exact_ode_solution(NOISE, float(LINEAR.alphas_cumprod[-1]))


# Measured (mean |err|, max |err|) against the exact solution from the sampler's
# start (EXACT; Heun starts at sigma_max = 80, not the schedule's 157), at n and 4n:
#   ddim  50: 3.0e-2, 0.20    200: 7.6e-3, 0.050  (first order: ratio 3.9)
#   dpm   20: 1.1e-2, 0.13     80: 1.1e-3, 6.7e-3 (second order: ratio 10.7)
#   euler 50: 3.0e-2, 0.20 (Euler on the discrete sigmas is DDIM exactly)
#   euler karras 50: 4.1e-2, 0.32   200: 1.0e-2, 0.081 (ratio 4.0)
#   heun  20: 1.1e-2, 0.11     80: 1.1e-3, 0.011 (ratio 10.5; the same uncapped)
#   heun karras 20: 2.3e-2, 0.17   80: 1.2e-3, 8.9e-3 (ratio 19.5; uncapped 3.0e-2, 0.22)
DETERMINISTIC_CASES = {
    # name: (sampler factory, steps, mae tolerance, max tolerance, min error ratio n -> 4n)
    "ddim": (lambda: DDIMSampler(LINEAR), 50, 0.04, 0.26, 3.0),
    "dpmpp_2m": (lambda: DPMSolverMultistepSampler(LINEAR), 20, 0.015, 0.17, 7.0),
    "euler": (lambda: EulerSampler(LINEAR), 50, 0.04, 0.26, 3.0),
    "euler_karras": (lambda: EulerSampler(LINEAR, use_karras_sigmas=True), 50, 0.055, 0.42, 3.0),
    "heun": (lambda: HeunSampler(LINEAR, use_karras_sigmas=False), 20, 0.015, 0.13, 7.0),
    "heun_karras": (lambda: HeunSampler(LINEAR), 20, 0.04, 0.29, 7.0),  # the default
}


@pytest.mark.parametrize("case", sorted(DETERMINISTIC_CASES))
def test_deterministic_samplers_converge_to_the_exact_ode_solution(case):
    factory, steps, mae_tol, max_tol, min_ratio = DETERMINISTIC_CASES[case]
    sampler = factory()
    exact = exact_ode_solution(NOISE, start_alpha(sampler))
    coarse, fine = run(sampler, [steps, 4 * steps])
    coarse_mae = np.abs(coarse - exact).mean()
    fine_mae = np.abs(fine - exact).mean()
    assert coarse_mae < mae_tol
    assert np.abs(coarse - exact).max() < max_tol
    # The solver's order shows in how fast the error falls: ~4x (first) or ~16x (second).
    assert coarse_mae / fine_mae > min_ratio
    # And the samples have the data's statistics: sampling error of 2048 samples is
    # s / 45 on the mean and 1.6% on the std; measured at 4n: mean <= 0.017, std <= 3.9%.
    assert np.all(np.abs(fine.mean(0) - MU) < 4 * STD / np.sqrt(NUM_SAMPLES))
    assert np.all(np.abs(fine.std(0) / STD - 1) < 0.065)


# Measured at these steps (max over the 4 dims): mean error <= 1.6 standard errors,
# std error <= 3.2%. Coarser ancestral sampling is biased low in std (DDPM at
# 50 steps: -16%), as expected from the posterior mean of a skipped interval.
STOCHASTIC_CASES = {
    "ddpm": (lambda: DDPMSampler(LINEAR), 1000),
    "ddpm_fixed_large": (lambda: DDPMSampler(LINEAR, variance_type="fixed_large"), 1000),
    "ddim_eta_1": (lambda: DDIMSampler(LINEAR, eta=1.0), 500),
    "ddim_eta_0.5": (lambda: DDIMSampler(LINEAR, eta=0.5), 250),
}


@pytest.mark.parametrize("case", sorted(STOCHASTIC_CASES))
def test_stochastic_samplers_reproduce_the_data_distribution(case):
    factory, steps = STOCHASTIC_CASES[case]
    (out,) = run(factory(), steps, seed=11)
    assert np.all(np.abs(out.mean(0) - MU) < 4 * STD / np.sqrt(NUM_SAMPLES))
    assert np.all(np.abs(out.std(0) / STD - 1) < 0.07)
    # Not the ODE solution: the noise injected along the way moved every sample.
    assert np.abs(out - EXACT).mean() > 0.3


def spacing_options(name):
    """Constructor kwargs of every spacing sampler `name` can use, by spacing name.

    "karras" is Karras et al.'s sigmas (Euler and Heun only), from the first
    "trailing" timestep (t = T - 1, capped at Heun's sigma_max).
    """
    options = {spacing: {"timestep_spacing": spacing} for spacing in TIMESTEP_SPACINGS}
    if issubclass(SAMPLERS[name], EulerSampler):
        options = {
            spacing: {**kwargs, "use_karras_sigmas": False} for spacing, kwargs in options.items()
        }
        options["karras"] = {"timestep_spacing": "trailing", "use_karras_sigmas": True}
    return options


def spacing_of(sampler):
    """The `spacing_options` name of a sampler's spacing."""
    return "karras" if getattr(sampler, "use_karras_sigmas", False) else sampler.timestep_spacing


def ddpm_output_moments(sampler, num_steps):
    """Exact per-dimension mean and std of what `sampler` draws from the Gaussian data.

    The optimal denoiser is affine in x_t and each step is affine in the sample and its
    noise, so the output is `mean + a * z_T + sum_i b_i * z_i` for independent standard
    normal z. Row 0 (all noise 0) gives the mean; row 1 (z_T = 1) and row 2 + i (step i's
    noise = 1) give `mean` plus one coefficient each (`step` takes each step's noise).
    """
    denoiser = gaussian_denoiser(sampler.schedule, sampler.prediction_type)
    sampler.set_timesteps(num_steps)
    rows = len(sampler.timesteps) + 2

    def ones_in_row(row):
        values = np.zeros((rows, 4), np.float32)
        values[row] = 1.0
        return ops.convert_to_tensor(values)

    x = ones_in_row(1) * sampler.init_noise_sigma
    state = None
    for i, t in enumerate(sampler.timesteps):
        output = denoiser(sampler.scale_model_input(x, i), ops.broadcast_to(t, (rows,)), None)
        x, state = sampler.step(output, i, x, noise=ones_in_row(2 + i), state=state)
    x = np.asarray(x, np.float64)
    mean = x[0]
    return mean, np.sqrt(np.square(x[1:] - mean).sum(0))


def closed_form_error(sampler, num_steps):
    """Error of `sampler` at `num_steps` against the exact answer for the Gaussian data.

    The measure of `benchmarks/sampler_spacing.py`, which imports it.

    Deterministic samplers: mean |x - exact ODE solution| over NOISE, from the sampler's
    start (`start_alpha`). Stochastic (DDPM): the 2-Wasserstein distance between its exact
    output distribution (`ddpm_output_moments`) and the data's, N(MU, STD^2).
    """
    if sampler.stochastic:
        mean, std = ddpm_output_moments(sampler, num_steps)
        return float(np.sqrt(np.sum(np.square(mean - MU) + np.square(std - STD))))
    (out,) = run(sampler, num_steps, schedule=sampler.schedule)
    return float(np.abs(out - exact_ode_solution(NOISE, start_alpha(sampler))).mean())


def spacing_errors(name, schedule, denoiser_calls, prediction_type="v"):
    """`closed_form_error` of every spacing of sampler `name` within `denoiser_calls` calls.

    Heun's `n` steps cost `2n - 1` calls, so it runs `(denoiser_calls + 1) // 2` steps
    (`benchmarks.quality_diffusion.steps_for_nfe`).

    Returns:
        `({spacing: error}, steps, calls)`.
    """
    steps, calls = steps_for_nfe(name, denoiser_calls)
    errors = {
        spacing: closed_form_error(
            make_sampler(name, schedule, prediction_type=prediction_type, **kwargs), steps
        )
        for spacing, kwargs in spacing_options(name).items()
    }
    return errors, steps, calls


def test_ddpm_output_moments_match_drawn_samples():
    sampler = DDPMSampler(LINEAR)
    mean, std = ddpm_output_moments(sampler, 20)
    noise = np.random.default_rng(1).standard_normal((16384, 4)).astype(np.float32)
    (drawn,) = run(sampler, 20, noise=noise, seed=3)
    # 16384 draws: standard errors std / 128 on the mean and 0.55% on the std.
    assert np.all(np.abs(drawn.mean(0) - mean) < 4 * std / 128)
    assert np.all(np.abs(drawn.std(0) / std - 1) < 4 * 0.0055)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_default_spacing_has_the_smallest_error_at_20_denoiser_calls(name):
    # The cosine schedule with v-prediction, as kzoo's diffusion recipes; the table of
    # every spacing, both schedules and 10/20/50 calls: docs/samplers.md.
    errors, _, _ = spacing_errors(name, COSINE, 20)
    default = spacing_of(make_sampler(name, COSINE))
    assert errors[default] == min(errors.values()), errors


def test_dpm_solver_is_closer_to_the_exact_ode_than_ddim_at_20_steps():
    (ddim,) = run(DDIMSampler(LINEAR), 20)
    (dpm,) = run(DPMSolverMultistepSampler(LINEAR), 20)
    ddim_error = np.abs(ddim - EXACT).mean()
    dpm_error = np.abs(dpm - EXACT).mean()
    # Measured: DDIM 7.2e-2, DPM-Solver++(2M) 1.1e-2.
    assert dpm_error < 0.25 * ddim_error


SAMPLER_NAMES = [
    ("ddpm", {}),
    ("ddim", {}),
    ("dpmpp_2m", {}),
    ("euler", {}),
    ("heun", {}),  # Karras sigmas, the default
]


@pytest.mark.parametrize("name, kwargs", SAMPLER_NAMES)
def test_eps_v_and_x0_denoisers_give_the_same_samples(name, kwargs):
    outputs = [
        run(make_sampler(name, LINEAR, prediction_type=p, **kwargs), 10, seed=5)[0]
        for p in ("eps", "v", "x0")
    ]
    # Measured max difference: 1.2e-5 (float32 round-off of the conversions).
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4)
    np.testing.assert_allclose(outputs[2], outputs[0], atol=1e-4)


@pytest.mark.parametrize("name, kwargs", SAMPLER_NAMES)
def test_clip_sample_bounds_x0_and_leaves_in_range_predictions_alone(name, kwargs):
    plain = run(make_sampler(name, LINEAR, **kwargs), 10, seed=5)[0]
    clipped = run(make_sampler(name, LINEAR, clip_sample=True, **kwargs), 10, seed=5)[0]
    wide = make_sampler(name, LINEAR, clip_sample=True, clip_sample_range=1e4, **kwargs)
    # The data (MU up to 2, STD up to 1.7) leaves [-1, 1]; every step's x0 is clipped
    # and the last step lands on it.
    assert np.abs(plain).max() > 3.0
    assert np.abs(clipped).max() <= 1.0 + 1e-5
    assert np.abs(clipped - plain).max() > 1.0
    # A range no prediction reaches changes nothing but round-off (the eps implied by
    # the clipped x0 is recomputed).
    np.testing.assert_allclose(run(wide, 10, seed=5)[0], plain, atol=1e-4)


def test_sampler_identities():
    # DDIM with eta = 1 is DDPM's "fixed_small" ancestral sampler (same step noise).
    ddpm, ddim_1 = (
        run(DDPMSampler(LINEAR), 30, seed=3)[0],
        run(DDIMSampler(LINEAR, eta=1.0), 30, seed=3)[0],
    )
    np.testing.assert_allclose(ddim_1, ddpm, atol=1e-4)
    # First-order DPM-Solver++ and Euler on the discrete sigmas are DDIM (eta = 0).
    (ddim,) = run(DDIMSampler(LINEAR), 30)
    np.testing.assert_allclose(
        run(DPMSolverMultistepSampler(LINEAR, solver_order=1), 30)[0], ddim, atol=1e-4
    )
    np.testing.assert_allclose(run(EulerSampler(LINEAR), 30)[0], ddim, atol=1e-4)


def test_ddim_eta_zero_is_deterministic():
    sampler = DDIMSampler(LINEAR)
    first, again = run(sampler, 20, seed=1)[0], run(sampler, 20, seed=2)[0]
    np.testing.assert_array_equal(first, again)  # the seed is unused
    other_noise = keras.random.normal((NUM_SAMPLES, 4), seed=1)
    (other,) = run(sampler, 20, noise=other_noise)
    assert np.abs(other - first).mean() > 0.5


def test_stochastic_seeds_reproduce():
    sampler = DDPMSampler(LINEAR)
    denoiser = gaussian_denoiser(LINEAR, "eps")
    noise = NOISE[:64]
    a = sample(denoiser, sampler, noise, 20, seed=7)
    b = sample(denoiser, sampler, noise, 20, seed=7)
    c = sample(denoiser, sampler, noise, 20, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.1
    # An int tensor seed (an exported endpoint's input) matches the same Python int.
    np.testing.assert_allclose(
        sample(denoiser, sampler, noise, 20, seed=tf.constant(7)), a, atol=1e-6
    )
    # A SeedGenerator advances: two calls differ, two generators with one seed agree.
    gen_a, gen_b = keras.random.SeedGenerator(3), keras.random.SeedGenerator(3)
    first = sample(denoiser, sampler, noise, 20, seed=gen_a)
    second = sample(denoiser, sampler, noise, 20, seed=gen_a)
    np.testing.assert_array_equal(sample(denoiser, sampler, noise, 20, seed=gen_b), first)
    assert np.abs(first - second).mean() > 0.1
    # Without a seed, the sampler's own generator is used (constructor seed).
    seeded = [DDPMSampler(LINEAR, seed=4) for _ in range(2)]
    np.testing.assert_array_equal(
        sample(denoiser, seeded[0], noise, 5), sample(denoiser, seeded[1], noise, 5)
    )


# Zero terminal SNR: a_T = 0, so the exact ODE maps x_T to mu + s * x_T (Heun: from
# its capped sigma_max = 80 instead). Measured mean |err| at 20 steps: DDIM/Euler
# 7.2e-2, DPM++ 1.1e-2, Heun (spaced timesteps) 1.1e-2 (Euler's sigma_max uses a_T = 2**-24, so its
# start is off by ~2e-4).
@pytest.mark.parametrize(
    "name, kwargs, tolerance",
    [
        ("ddim", {}, 0.09),
        ("dpmpp_2m", {}, 0.015),
        ("euler", {}, 0.09),
        ("heun", {"use_karras_sigmas": False}, 0.015),
    ],
)
def test_zero_terminal_snr_with_v_prediction(name, kwargs, tolerance):
    sampler = make_sampler(name, ZERO_SNR, prediction_type="v", **kwargs)
    (out,) = run(sampler, 20, schedule=ZERO_SNR)
    assert np.all(np.isfinite(out))
    assert np.abs(out - exact_ode_solution(NOISE, start_alpha(sampler))).mean() < tolerance


# Cosine schedule, 20 steps, x0 estimate off by 0.01 (its eps by <= 1e-3 down to t = 949).
# Measured: uncapped Heun's first trapezoid, sigma 20291 -> 12.8, leaves std 14.7x the
# data's (14.8x with the optimal denoiser alone: its two slopes differ by < 1%, times
# ~10^4); capped at 80 the mean is off by <= 0.8 standard errors and the std by
# <= 5.4% (optimal denoiser: 1.3 and 5.9%), DPM-Solver++ 0.9 and 2.4%.
@pytest.mark.parametrize("x0_error", [0.0, 0.01])
def test_heun_sigma_max_cap_keeps_the_cosine_schedule_stable(x0_error):
    # Heun on spaced timesteps (Karras sigmas, the default, ramp down from the cap).
    uncapped_sampler = HeunSampler(COSINE, sigma_max=None, use_karras_sigmas=False)
    (uncapped,) = run(uncapped_sampler, 20, schedule=COSINE, x0_error=x0_error)
    assert np.abs(uncapped.std(0) / STD - 1).max() > 5
    capped = HeunSampler(COSINE, use_karras_sigmas=False)
    for sampler in (capped, DPMSolverMultistepSampler(COSINE)):
        (out,) = run(sampler, 20, schedule=COSINE, x0_error=x0_error)
        assert np.all(np.abs(out.mean(0) - MU) < 4 * STD / np.sqrt(NUM_SAMPLES))
        assert np.all(np.abs(out.std(0) / STD - 1) < 0.065)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers_spacing(spacing):
    total = 1000
    for n in (1, 3, 7, 16, 20, 50, 333, 999, 1000):
        offset = 1 if spacing == "leading" and n <= 500 else 0
        sampler = DDIMSampler(LINEAR, timestep_spacing=spacing, steps_offset=offset)
        got = np.asarray(sampler.set_timesteps(n))
        # The formulas of diffusers' DDIMScheduler.set_timesteps.
        if spacing == "leading":
            expected = (np.arange(0, n) * (total // n)).round()[::-1] + offset
        elif spacing == "trailing":
            expected = np.round(np.arange(total, 0, -total / n)) - 1
        else:
            expected = np.linspace(0, total - 1, n).round()[::-1]
        np.testing.assert_array_equal(got, expected.astype(np.int64), err_msg=f"n={n}")
        assert got.dtype == np.int32
    assert sampler.timesteps is not None and sampler.num_inference_steps == 1000


def test_euler_and_heun_tables():
    euler = EulerSampler(LINEAR)
    timesteps = np.asarray(euler.set_timesteps(4))
    np.testing.assert_array_equal(timesteps, [999, 749, 499, 249])
    np.testing.assert_allclose(
        np.asarray(euler.sigmas), list(LINEAR.sigmas[[999, 749, 499, 249]]) + [0], rtol=1e-6
    )
    assert float(euler.init_noise_sigma) == pytest.approx(np.sqrt(LINEAR.sigmas[999] ** 2 + 1))
    karras = EulerSampler(LINEAR, use_karras_sigmas=True)
    karras.set_timesteps(5)
    sigmas = np.asarray(karras.sigmas)
    # Karras et al. Eq. 5 with rho = 7, from sigma_max to the schedule's sigma_min.
    ramp = np.linspace(0, 1, 5)
    lo, hi = LINEAR.sigmas[0] ** (1 / 7), LINEAR.sigmas[999] ** (1 / 7)
    np.testing.assert_allclose(sigmas[:-1], (hi + ramp * (lo - hi)) ** 7, rtol=1e-5)
    assert sigmas[-1] == 0
    heun = HeunSampler(LINEAR, sigma_max=None, use_karras_sigmas=False)
    np.testing.assert_array_equal(np.asarray(heun.set_timesteps(3)), [999, 666, 666, 332, 332])


@pytest.mark.parametrize("schedule, capped_t", [(LINEAR, 929.618), (COSINE, 990.978)])
def test_heun_sigma_max_caps_the_sigmas_and_timesteps(schedule, capped_t):
    # sigma(t) = 80 at t = 929.618 (linear, where sigma(999) = 157.4) and t = 990.978
    # (cosine, sigma(999) = 20291), interpolating log(sigma) as `sigma_to_timestep`.
    heun = HeunSampler(schedule, use_karras_sigmas=False)
    assert heun.sigma_max == 80.0
    timesteps = np.asarray(heun.set_timesteps(3))
    np.testing.assert_allclose(timesteps, [capped_t, 666, 666, 332, 332], atol=1e-3)
    sigmas = np.asarray(heun.sigmas)
    np.testing.assert_allclose(sigmas, [80.0, *schedule.sigmas[[666, 332]], 0.0], rtol=1e-6)
    assert float(heun.init_noise_sigma) == pytest.approx(np.sqrt(80.0**2 + 1.0))
    # The denoiser is told the timestep of sigma 80: its sigma, not the schedule's last.
    t_capped = ops.convert_to_tensor(timesteps[:1])
    assert float(schedules.timestep_to_sigma(schedule, t_capped)[0]) == pytest.approx(80.0, 1e-5)
    # Every spaced sigma above the cap becomes 80: zero-length steps (here t = 949).
    many = HeunSampler(schedule, use_karras_sigmas=False)
    many.set_timesteps(20)
    expected = np.minimum(schedule.sigmas[999 - 50 * np.arange(20)], 80.0)
    np.testing.assert_allclose(np.asarray(many.sigmas)[:-1], expected, rtol=1e-6)
    # Karras sigmas: Eq. 5's ramp starts at the cap.
    karras = HeunSampler(schedule)  # Karras sigmas: the default
    karras.set_timesteps(5)
    lo, hi = schedule.sigmas[0] ** (1 / 7), 80.0 ** (1 / 7)
    ramp = np.linspace(0, 1, 5)
    np.testing.assert_allclose(
        np.asarray(karras.sigmas)[:-1], (hi + ramp * (lo - hi)) ** 7, rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(karras.timesteps)[0], capped_t, atol=1e-3)
    # A cap above the schedule's largest sigma changes nothing.
    high = HeunSampler(schedule, sigma_max=1e6)
    np.testing.assert_array_equal(
        np.asarray(high.set_timesteps(3)),
        np.asarray(HeunSampler(schedule, sigma_max=None).set_timesteps(3)),
    )


def _manual_loop(sampler, denoiser, noise, steps, conditioning=None):
    """The diffusers-style eager loop over `sampler.step`."""
    sampler.set_timesteps(steps)
    x = ops.convert_to_tensor(noise) * sampler.init_noise_sigma
    state = None
    calls = 0
    for i, t in enumerate(sampler.timesteps):
        t_batch = ops.broadcast_to(t, (x.shape[0],))
        output = denoiser(sampler.scale_model_input(x, i), t_batch, conditioning)
        calls += 1
        x, state = sampler.step(output, i, x, state=state)
    return np.asarray(x), calls


@pytest.mark.parametrize(
    "sampler_fn, calls",
    [
        (lambda: DPMSolverMultistepSampler(LINEAR, prediction_type="v"), 8),
        (lambda: HeunSampler(LINEAR, use_karras_sigmas=True), 15),  # 2 * 8 - 1
        (lambda: DDIMSampler(LINEAR, prediction_type="x0"), 8),
    ],
)
def test_step_contract_matches_sample(sampler_fn, calls):
    sampler = sampler_fn()
    denoiser = gaussian_denoiser(LINEAR, sampler.prediction_type)
    manual, counted = _manual_loop(sampler, denoiser, NOISE[:256], 8)
    assert counted == calls
    looped = np.asarray(sample(denoiser, sampler, NOISE[:256], 8))
    np.testing.assert_allclose(manual, looped, atol=1e-5)


def test_diffusers_style_methods_wrap_the_step_protocol():
    for sampler in (DDPMSampler(LINEAR), HeunSampler(COSINE), EulerSampler(LINEAR)):
        timesteps = sampler.set_timesteps(6)
        calls = sampler.num_model_calls(6)
        assert len(timesteps) == calls
        tables = sampler.model_timestep(ops.arange(calls, dtype="int32"), 6)
        np.testing.assert_array_equal(
            np.asarray(ops.cast(tables, sampler.timestep_dtype)), np.asarray(timesteps)
        )
        assert float(sampler.init_noise_sigma) == float(sampler.stateless_init_noise_sigma(6))
        x = ops.convert_to_tensor(NOISE[:4])
        np.testing.assert_array_equal(
            np.asarray(sampler.scale_model_input(x, 3)),
            np.asarray(sampler.stateless_scale_model_input(x, 3, 6)),
        )
    assert HeunSampler(LINEAR).num_model_calls(8) == 15


def test_ddpm_step_uses_given_noise():
    sampler = DDPMSampler(LINEAR)
    sampler.set_timesteps(10)
    x = ops.convert_to_tensor(NOISE[:8])
    output = gaussian_denoiser(LINEAR, "eps")(x, ops.full((8,), 999, "int32"), None)
    zero_noise, _ = sampler.step(output, 0, x, noise=ops.zeros_like(x))
    unit_noise, _ = sampler.step(output, 0, x, noise=ops.ones_like(x))
    # The posterior std between t=999 and t=899: sqrt(beta_tilde).
    a, a_prev = LINEAR.alphas_cumprod[999], LINEAR.alphas_cumprod[899]
    beta_tilde = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    np.testing.assert_allclose(np.asarray(unit_noise - zero_noise), np.sqrt(beta_tilde), rtol=1e-4)
    drawn, _ = sampler.step(output, 0, x)  # no noise given: the sampler's generator
    assert np.abs(np.asarray(drawn - zero_noise)).max() > 0.1


@pytest.mark.parametrize("name, kwargs", SAMPLER_NAMES + [("euler", {"use_karras_sigmas": True})])
def test_tensor_num_steps_under_xla_matches_python_int(name, kwargs):
    sampler = make_sampler(name, LINEAR, **kwargs)
    noise = NOISE[:128]
    (compiled,) = run(sampler, 12, noise=noise, seed=9, jit_compile=True)
    if sampler.stochastic:
        # XLA draws other random numbers than the TF kernels: compare with XLA.
        denoiser = gaussian_denoiser(LINEAR, "eps")
        fixed = tf.function(lambda z: sample(denoiser, sampler, z, 12, seed=9), jit_compile=True)
        reference = fixed(noise).numpy()
    else:
        reference = np.asarray(sample(gaussian_denoiser(LINEAR, "eps"), sampler, noise, 12))
    np.testing.assert_allclose(compiled, reference, atol=1e-4)


def test_tensor_num_steps_is_clamped():
    sampler = DDIMSampler(LINEAR)
    zero, one = run(sampler, [0, 1], noise=NOISE[:16])
    np.testing.assert_array_equal(zero, one)
    too_many, all_steps = run(sampler, [5000, 1000], noise=NOISE[:16])
    np.testing.assert_array_equal(too_many, all_steps)


def test_sample_handles_image_shapes():
    seen = []

    def denoiser(x, t, conditioning):
        seen.append((tuple(x.shape), tuple(t.shape), conditioning))
        return ops.zeros_like(x)

    for sampler in (DDPMSampler(LINEAR), HeunSampler(LINEAR), DPMSolverMultistepSampler(LINEAR)):
        seen.clear()

        noise = np.random.default_rng(1).standard_normal((2, 4, 4, 3)).astype(np.float32)
        out = sample(denoiser, sampler, noise, 3, conditioning="labels", seed=0)
        assert tuple(out.shape) == (2, 4, 4, 3)
        assert seen[0] == ((2, 4, 4, 3), (2,), "labels")


@pytest.mark.parametrize(
    "sampler", [DDPMSampler(LINEAR), HeunSampler(COSINE)], ids=["ddpm", "heun_cosine"]
)
def test_export_archive_generate_endpoint(tmp_path, sampler):
    denoiser = gaussian_denoiser(sampler.schedule, "eps")

    def generate(noise, num_steps, seed):
        return sample(denoiser, sampler, noise, num_steps, seed=seed)

    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        "generate",
        generate,
        input_signature=[
            keras.InputSpec(shape=(None, 4), dtype="float32"),
            keras.InputSpec(shape=(), dtype="int32"),
            keras.InputSpec(shape=(), dtype="int32"),
        ],
    )
    archive.write_out(str(tmp_path / "generator"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "generator"))
    noise = NOISE[:32]
    exported = loaded.generate(noise, tf.constant(25), tf.constant(3)).numpy()
    eager = np.asarray(generate(noise, 25, 3))
    np.testing.assert_allclose(exported, eager, atol=1e-5)
    fewer = loaded.generate(noise[:5], tf.constant(4), tf.constant(3)).numpy()
    assert fewer.shape == (5, 4) and np.abs(fewer - exported[:5]).max() > 1e-3


def test_config_round_trip():
    for sampler in (
        DDPMSampler(LINEAR, variance_type="fixed_large", seed=3),
        DDIMSampler(
            ZERO_SNR, prediction_type="v", eta=0.3, timestep_spacing="leading", steps_offset=1
        ),
        DPMSolverMultistepSampler(LINEAR, solver_order=1),
        HeunSampler(LINEAR, use_karras_sigmas=True, karras_rho=5.0),
        HeunSampler(COSINE, sigma_max=None),
        make_sampler("heun", COSINE, sigma_max=40),
        DDIMSampler(LINEAR, clip_sample=True, clip_sample_range=2.5),
        EulerSampler(LINEAR, clip_sample=True),
    ):
        clone = type(sampler).from_config(sampler.get_config())
        assert clone.get_config() == sampler.get_config()
        assert clone.schedule == sampler.schedule
    assert HeunSampler(LINEAR).get_config()["sigma_max"] == 80.0
    assert make_sampler("heun", COSINE, sigma_max=40).sigma_max == 40.0
    assert "sigma_max" not in EulerSampler(LINEAR).get_config()
    assert DDPMSampler(LINEAR).get_config()["clip_sample"] is False
    assert make_sampler("dpmpp_2m", LINEAR, clip_sample=True).clip_sample is True


def test_errors():
    sampler = DDIMSampler(LINEAR)
    with pytest.raises(ValueError, match=r"Received: num_inference_steps=0"):
        sampler.set_timesteps(0)
    with pytest.raises(
        ValueError, match=r"num_train_timesteps=1000\]. Received: num_inference_steps=1001"
    ):
        sampler.set_timesteps(1001)
    with pytest.raises(ValueError, match=r"Received: num_inference_steps=0"):
        sample(gaussian_denoiser(LINEAR, "eps"), sampler, NOISE[:2], 0)
    with pytest.raises(ValueError, match="Received: num_inference_steps=2.0"):
        sample(gaussian_denoiser(LINEAR, "eps"), sampler, NOISE[:2], 2.0)
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMSampler(LINEAR).step(NOISE[:2], 0, NOISE[:2])
    with pytest.raises(ValueError, match="Received: prediction_type='epsilon'"):
        DDIMSampler(LINEAR, prediction_type="epsilon")
    with pytest.raises(
        ValueError, match="'leading', 'trailing', 'linspace'.*Received: timestep_spacing='end'"
    ):
        EulerSampler(LINEAR, timestep_spacing="end")
    with pytest.raises(ValueError, match="Received: eta=-0.1"):
        DDIMSampler(LINEAR, eta=-0.1)
    with pytest.raises(ValueError, match="Received: solver_order=3"):
        DPMSolverMultistepSampler(LINEAR, solver_order=3)
    for bad in (0.0, -80.0, float("inf"), float("nan"), True, "80"):
        with pytest.raises(ValueError, match=rf"finite number > 0. Received: sigma_max={bad!r}"):
            HeunSampler(COSINE, sigma_max=bad)
    with pytest.raises(ValueError, match="must be a bool. Received: clip_sample=1"):
        DDPMSampler(LINEAR, clip_sample=1)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match=rf"> 0. Received: clip_sample_range={bad!r}"):
            make_sampler("heun", LINEAR, clip_sample=True, clip_sample_range=bad)
    with pytest.raises(ValueError, match="Received: variance_type='learned'"):
        DDPMSampler(LINEAR, variance_type="learned")
    with pytest.raises(
        ValueError, match="'ddpm', 'ddim', 'dpmpp_2m', 'euler', 'heun'.*Received: name='plms'"
    ):
        make_sampler("plms", LINEAR)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        DDIMSampler("linear")
    with pytest.raises(TypeError, match="guided_denoiser"):
        sample(gaussian_denoiser(LINEAR, "eps"), sampler, NOISE[:2], 2, guidance_scale=3.0)
