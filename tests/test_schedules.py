"""Noise schedules: known values, forward noising, prediction conversions, min-SNR, errors."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.diffusion import schedules
from kzoo.diffusion.schedules import (
    NoiseSchedule,
    add_noise,
    make_schedule,
    min_snr_loss_weight,
    predict_eps,
    predict_v,
    predict_x0,
    sigma_to_timestep,
    timestep_to_sigma,
    training_target,
    velocity_target,
)

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_linear_schedule_known_values():
    schedule = make_schedule("linear")
    assert schedule.betas.dtype == np.float32
    assert schedule.betas.shape == (1000,)
    np.testing.assert_allclose(schedule.betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    # DDPM's schedule ends at alpha_bar_T ~= 4.04e-5 (Ho et al. 2020).
    np.testing.assert_allclose(schedule.alphas_cumprod[-1], 4.0358e-5, rtol=1e-3)
    np.testing.assert_allclose(
        schedule.alphas_cumprod, np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5
    )
    np.testing.assert_allclose(
        schedule.sqrt_alphas_cumprod**2 + schedule.sqrt_one_minus_alphas_cumprod**2, 1.0, rtol=1e-6
    )
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))  # float64: 1 - a loses digits in float32
    np.testing.assert_allclose(schedule.sigmas, np.sqrt((1 - ac) / ac), rtol=1e-5)
    np.testing.assert_allclose(schedule.log_snr, np.log(ac / (1 - ac)), rtol=1e-5, atol=1e-5)


def test_scaled_linear_is_stable_diffusions_schedule():
    schedule = make_schedule("scaled_linear", **SD_BETAS)
    np.testing.assert_allclose(schedule.betas[[0, -1]], [0.00085, 0.012], rtol=1e-5)
    np.testing.assert_allclose(
        np.sqrt(schedule.betas[1:]) - np.sqrt(schedule.betas[:-1]),
        (0.012**0.5 - 0.00085**0.5) / 999,
        rtol=1e-3,
    )
    # Lin et al. 2023, Sec. 3.1: Stable Diffusion's terminal SNR is 0.004682.
    terminal_snr = schedule.alphas_cumprod[-1] / (1 - schedule.alphas_cumprod[-1])
    np.testing.assert_allclose(terminal_snr, 0.004682, rtol=2e-3)


def test_cosine_alphas_cumprod_monotone_in_unit_interval():
    schedule = make_schedule("cosine")
    ac = schedule.alphas_cumprod
    assert np.all(ac > 0) and np.all(ac <= 1)
    assert np.all(np.diff(ac) < 0)
    assert schedule.betas.max() <= 0.999 + 1e-7
    # Away from the clipped end, alpha_bar follows cos^2((t/T + s)/(1 + s) * pi/2) / f(0).
    t = np.arange(1, 901)
    f = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(ac[:900], f, rtol=1e-4)


def test_sigmoid_betas_follow_a_sigmoid_ramp():
    schedule = make_schedule("sigmoid", beta_start=1e-4, beta_end=0.02)
    ramp = 1 / (1 + np.exp(-np.linspace(-6, 6, 1000)))
    np.testing.assert_allclose(schedule.betas, ramp * (0.02 - 1e-4) + 1e-4, rtol=1e-5)
    assert np.all(np.diff(schedule.betas) > 0)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_rescale(name):
    kwargs = SD_BETAS if name == "scaled_linear" else {}
    plain = make_schedule(name, **kwargs)
    rescaled = make_schedule(name, rescale_zero_terminal_snr=True, **kwargs)
    assert rescaled.alphas_cumprod[-1] == 0.0
    assert rescaled.betas[-1] == pytest.approx(1.0)
    # Algorithm 1 keeps the first alpha_bar and keeps sqrt(alpha_bar) affine in the old one.
    np.testing.assert_allclose(rescaled.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-6)
    assert np.all(np.diff(rescaled.alphas_cumprod) < 0)
    old, new = plain.sqrt_alphas_cumprod, rescaled.sqrt_alphas_cumprod
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    np.testing.assert_allclose(new, expected, rtol=1e-4, atol=1e-6)
    assert rescaled.log_snr[-1] == -np.inf
    # Sigma uses alpha_bar = 2**-24 where it is 0, as diffusers' Euler scheduler.
    np.testing.assert_allclose(rescaled.sigmas[-1], np.sqrt(2.0**24 - 1), rtol=1e-6)
    assert np.all(np.isfinite(rescaled.sigmas))


def test_config_round_trip_and_serialization():
    schedule = make_schedule("cosine", num_train_timesteps=50, rescale_zero_terminal_snr=True)
    config = schedule.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = NoiseSchedule.from_config(config)
    assert clone == schedule
    np.testing.assert_array_equal(clone.alphas_cumprod, schedule.alphas_cumprod)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule and restored is not schedule
    assert schedule != make_schedule("cosine", num_train_timesteps=50)


def test_add_noise_matches_formula_and_broadcasts():
    schedule = make_schedule("linear")
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
    noise = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
    t = np.array([0, 500, 999], np.int32)
    x_t = _np(add_noise(schedule, x0, noise, t))
    sa = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    s1 = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(x_t, sa * x0 + s1 * noise, rtol=1e-6, atol=1e-6)
    # A scalar timestep applies to the whole batch.
    np.testing.assert_allclose(
        _np(add_noise(schedule, x0, noise, 500)),
        schedule.sqrt_alphas_cumprod[500] * x0
        + schedule.sqrt_one_minus_alphas_cumprod[500] * noise,
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_prediction_conversions_round_trip(prediction_type):
    schedule = make_schedule("scaled_linear", **SD_BETAS)
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((5, 3)).astype(np.float32)
    noise = rng.standard_normal((5, 3)).astype(np.float32)
    t = np.array([0, 10, 300, 700, 999], np.int32)
    x_t = add_noise(schedule, x0, noise, t)
    v = _np(velocity_target(schedule, x0, noise, t))
    sa = schedule.sqrt_alphas_cumprod[t][:, None]
    s1 = schedule.sqrt_one_minus_alphas_cumprod[t][:, None]
    np.testing.assert_allclose(v, sa * noise - s1 * x0, rtol=1e-5, atol=1e-6)
    target = training_target(prediction_type, schedule, x0, noise, t)
    expected = {"eps": noise, "v": v, "x0": x0}[prediction_type]
    np.testing.assert_allclose(_np(target), expected, rtol=1e-5, atol=1e-6)
    # An exact prediction of any type converts back to the true x0, eps and v.
    np.testing.assert_allclose(
        _np(predict_x0(schedule, target, x_t, t, prediction_type)), x0, atol=2e-4
    )
    np.testing.assert_allclose(
        _np(predict_eps(schedule, target, x_t, t, prediction_type)), noise, atol=2e-4
    )
    np.testing.assert_allclose(
        _np(predict_v(schedule, target, x_t, t, prediction_type)), v, atol=2e-4
    )


def test_eps_x0_eps_round_trip():
    schedule = make_schedule("linear")
    rng = np.random.default_rng(2)
    x_t = rng.standard_normal((4, 6)).astype(np.float32)
    eps = rng.standard_normal((4, 6)).astype(np.float32)
    t = np.array([1, 200, 600, 950], np.int32)
    x0 = predict_x0(schedule, eps, x_t, t, "eps")
    np.testing.assert_allclose(_np(predict_eps(schedule, x0, x_t, t, "x0")), eps, atol=1e-4)
    v = predict_v(schedule, eps, x_t, t, "eps")
    np.testing.assert_allclose(_np(predict_eps(schedule, v, x_t, t, "v")), eps, atol=1e-5)


def test_min_snr_weights_per_prediction_type():
    schedule = make_schedule("linear")
    t = np.array([0, 100, 250, 500, 999], np.int32)
    ac = schedule.alphas_cumprod[t].astype(np.float64)
    snr = ac / (1 - ac)
    gamma = 5.0
    clipped = np.minimum(snr, gamma)
    for prediction_type, expected in [
        ("eps", clipped / snr),
        ("v", clipped / (snr + 1)),
        ("x0", clipped),
    ]:
        weights = _np(min_snr_loss_weight(schedule, t, prediction_type, snr_gamma=gamma))
        assert weights.shape == (5,)
        np.testing.assert_allclose(weights, expected, rtol=1e-4)
    # Low-noise steps (snr > gamma) are down-weighted, high-noise steps keep weight 1 (eps).
    eps_weights = _np(min_snr_loss_weight(schedule, t, "eps"))
    assert eps_weights[0] < 0.01 and eps_weights[-1] == pytest.approx(1.0)


def test_min_snr_weights_finite_at_zero_terminal_snr():
    schedule = make_schedule("linear", rescale_zero_terminal_snr=True)
    t = np.array([998, 999], np.int32)
    for prediction_type, last in [("eps", 1.0), ("v", 0.0), ("x0", 0.0)]:
        weights = _np(min_snr_loss_weight(schedule, t, prediction_type))
        assert np.all(np.isfinite(weights))
        assert weights[-1] == pytest.approx(last)


def test_timestep_sigma_interpolation_round_trip():
    schedule = make_schedule("linear")
    t = np.array([0, 1, 17, 500, 998, 999], np.int32)
    np.testing.assert_allclose(_np(timestep_to_sigma(schedule, t)), schedule.sigmas[t], rtol=1e-5)
    fractional = np.array([0.25, 10.5, 333.7, 998.9], np.float32)
    sigma = timestep_to_sigma(schedule, fractional)
    np.testing.assert_allclose(_np(sigma_to_timestep(schedule, sigma)), fractional, atol=2e-3)
    # log(sigma) is interpolated linearly between neighbours.
    low, high = np.log(schedule.sigmas[10]), np.log(schedule.sigmas[11])
    np.testing.assert_allclose(_np(sigma)[1], np.exp(0.5 * (low + high)), rtol=1e-5)


def test_unknown_schedule_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Received: name='foo'") as info:
        make_schedule("foo")
    for name in schedules.SCHEDULE_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train_timesteps": 0}, "Received: num_train_timesteps=0"),
        ({"num_train_timesteps": 2.5}, "Received: num_train_timesteps=2.5"),
        ({"beta_start": 0.0}, "Received: beta_start=0.0"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "Received: beta_end=0.01"),
        ({"beta_end": 1.0}, "Received: beta_end=1.0"),
        (
            {"num_train_timesteps": 1, "rescale_zero_terminal_snr": True},
            "Received: num_train_timesteps=1",
        ),
    ],
)
def test_invalid_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_schedule("linear", **kwargs)


def test_unknown_prediction_type_lists_valid_ones():
    schedule = make_schedule("linear")
    x = np.zeros((2, 3), np.float32)
    t = np.zeros((2,), np.int32)
    with pytest.raises(
        ValueError, match=r"\['eps', 'v', 'x0'\]. Received: prediction_type='epsilon'"
    ):
        training_target("epsilon", schedule, x, x, t)
    with pytest.raises(ValueError, match="Received: prediction_type='sample'"):
        predict_x0(schedule, x, x, t, "sample")
    with pytest.raises(ValueError, match="Received: prediction_type='z'"):
        min_snr_loss_weight(schedule, t, "z")
    with pytest.raises(ValueError, match="Received: snr_gamma=0"):
        min_snr_loss_weight(schedule, t, "eps", snr_gamma=0)
