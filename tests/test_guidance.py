"""Classifier-free guidance: label dropout and the batched guided denoiser."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kzoo.diffusion import DDIMSampler, DDPMSampler, make_schedule, sample
from kzoo.diffusion.guidance import GuidedDenoiser, drop_labels, guided_denoiser

NULL = 10


class FakeDenoiser:
    """Output `x * 0.5 + label + t / 1000`: conditional and null passes differ by label."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, conditioning):
        self.calls.append((tuple(x.shape), tuple(t.shape), tuple(conditioning.shape)))
        label = ops.cast(ops.reshape(conditioning, (-1, 1)), "float32")
        return x * 0.5 + label + ops.cast(ops.reshape(t, (-1, 1)), "float32") / 1000.0


X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
T = np.array([999, 500, 20, 0], np.int32)
LABELS = np.array([0, 3, 7, 1], np.int32)


def _expected(labels, scale):
    cond = X * 0.5 + labels[:, None] + T[:, None] / 1000.0
    uncond = X * 0.5 + NULL + T[:, None] / 1000.0
    return cond, uncond, uncond + np.reshape(scale, (-1, 1)) * (cond - uncond)


def test_scale_one_is_conditional_and_zero_is_unconditional():
    cond, uncond, _ = _expected(LABELS, 1.0)
    fake = FakeDenoiser()
    np.testing.assert_allclose(guided_denoiser(fake, 1.0, NULL)(X, T, LABELS), cond, rtol=1e-6)
    np.testing.assert_allclose(guided_denoiser(fake, 0.0, NULL)(X, T, LABELS), uncond, rtol=1e-6)
    # One batched call per evaluation: x, t and the conditioning doubled along the batch.
    assert fake.calls == [((8, 3), (8,), (8,))] * 2


def test_guidance_combines_uncond_plus_scale_times_difference():
    _, _, expected = _expected(LABELS, 4.5)
    out = guided_denoiser(FakeDenoiser(), 4.5, NULL)(X, T, LABELS)
    assert out.dtype == "float32"
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # A per-example scale (B,) and a call-time override.
    scales = np.array([0.0, 1.0, 2.0, 7.5], np.float32)
    _, _, per_example = _expected(LABELS, scales)
    guided = guided_denoiser(FakeDenoiser(), None, NULL)
    np.testing.assert_allclose(guided(X, T, LABELS, guidance_scale=scales), per_example, rtol=1e-5)


def test_nested_conditioning_with_broadcast_null_embedding():
    null_embedding = np.full((2, 3), -1.0, np.float32)
    seen = {}

    def denoiser(x, t, conditioning):
        seen.update({k: np.asarray(v) for k, v in conditioning.items()})
        return (
            x
            + ops.sum(conditioning["tokens"], axis=1)
            + ops.cast(conditioning["mask"][:, :1], "float32")
        )

    embeddings = np.ones((4, 2, 3), np.float32)
    mask = np.ones((4, 2), np.int32)
    guided = guided_denoiser(denoiser, 2.0, {"tokens": null_embedding, "mask": 0})
    out = np.asarray(guided(X, T, {"tokens": embeddings, "mask": mask}))
    assert seen["tokens"].shape == (8, 2, 3) and np.all(seen["tokens"][4:] == -1.0)
    assert np.all(seen["mask"][:4] == 1) and np.all(seen["mask"][4:] == 0)
    cond, uncond = X + 2.0 + 1.0, X - 2.0
    np.testing.assert_allclose(out, uncond + 2.0 * (cond - uncond), rtol=1e-6)


def _eps_denoiser(x, t, conditioning):
    # A label-dependent eps-prediction: pulls samples towards `label` at every step.
    return x * 0.3 - 0.1 * ops.cast(ops.reshape(conditioning, (-1, 1)), "float32")


def test_guided_denoiser_inside_sample():
    schedule = make_schedule("linear")
    sampler = DDIMSampler(schedule)
    noise = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    conditional = sample(_eps_denoiser, sampler, noise, 10, conditioning=LABELS)
    with_scale_one = sample(
        guided_denoiser(_eps_denoiser, 1.0, NULL), sampler, noise, 10, conditioning=LABELS
    )
    np.testing.assert_allclose(with_scale_one, conditional, atol=1e-5)
    # `sample(..., guidance_scale=tensor)` overrides the wrapper's scale, also under XLA.
    guided = guided_denoiser(_eps_denoiser, 1.0, NULL)
    reference = sample(
        guided_denoiser(_eps_denoiser, 3.0, NULL), sampler, noise, 10, conditioning=LABELS
    )
    compiled = tf.function(
        lambda z, w: sample(guided, sampler, z, 10, conditioning=LABELS, guidance_scale=w),
        jit_compile=True,
    )
    np.testing.assert_allclose(compiled(noise, tf.constant(3.0)), reference, atol=1e-4)
    assert np.abs(np.asarray(reference) - np.asarray(conditional)).max() > 0.1


def test_guided_stochastic_sampler_runs():
    sampler = DDPMSampler(make_schedule("linear", num_train_timesteps=100))
    noise = np.zeros((2, 3), np.float32)
    out = sample(
        guided_denoiser(_eps_denoiser, 2.0, NULL),
        sampler,
        noise,
        5,
        conditioning=LABELS[:2],
        seed=0,
    )
    assert out.shape == (2, 3) and np.all(np.isfinite(np.asarray(out)))


def test_drop_labels_probability_and_reproducibility():
    labels = np.arange(20000, dtype=np.int32) % 7
    dropped = np.asarray(drop_labels(labels, 0.3, NULL, seed=0))
    is_null = dropped == NULL
    # 20000 draws: the fraction's standard error is 0.0032.
    assert abs(is_null.mean() - 0.3) < 0.015
    np.testing.assert_array_equal(dropped[~is_null], labels[~is_null])
    np.testing.assert_array_equal(np.asarray(drop_labels(labels, 0.3, NULL, seed=0)), dropped)
    np.testing.assert_array_equal(np.asarray(drop_labels(labels, 0.0, NULL, seed=1)), labels)
    assert np.all(np.asarray(drop_labels(labels, 1.0, NULL, seed=1)) == NULL)
    generator = keras.random.SeedGenerator(5)
    first = np.asarray(drop_labels(labels, 0.5, NULL, seed=generator))
    second = np.asarray(drop_labels(labels, 0.5, NULL, seed=generator))
    assert np.mean(first != second) > 0.3


def test_drop_labels_drops_whole_examples():
    tokens = np.arange(1, 1 + 64 * 5, dtype=np.int32).reshape(64, 5)
    dropped = np.asarray(drop_labels(tokens, 0.5, 0, seed=3))
    row_dropped = np.all(dropped == 0, axis=1)
    assert 0 < row_dropped.sum() < 64
    np.testing.assert_array_equal(dropped[~row_dropped], tokens[~row_dropped])
    embeddings = np.ones((64, 2, 3), np.float32)
    null = np.array([0.5, -0.5, 0.0], np.float32)
    dropped = np.asarray(drop_labels(embeddings, 0.5, null, seed=3))
    np.testing.assert_array_equal(np.all(dropped == null, axis=(1, 2)), row_dropped)
    assert dropped.dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="Received: drop_prob=1.5"):
        drop_labels(LABELS, 1.5, NULL)
    with pytest.raises(ValueError, match="Received: drop_prob=-0.1"):
        drop_labels(LABELS, -0.1, NULL)
    with pytest.raises(ValueError, match="Received: drop_prob='0.1'"):
        drop_labels(LABELS, "0.1", NULL)
    with pytest.raises(ValueError, match="batch axis"):
        drop_labels(np.int32(3), 0.1, NULL)
    with pytest.raises(ValueError, match="Received: null_conditioning=None"):
        guided_denoiser(FakeDenoiser(), 2.0, None)
    with pytest.raises(ValueError, match="Received: guidance_scale=None"):
        guided_denoiser(FakeDenoiser(), None, NULL)(X, T, LABELS)
    with pytest.raises(ValueError, match="Received: conditioning=None"):
        guided_denoiser(FakeDenoiser(), 2.0, NULL)(X, T, None)
    with pytest.raises(TypeError, match="Received: denoiser=3"):
        GuidedDenoiser(3, 2.0, NULL)
