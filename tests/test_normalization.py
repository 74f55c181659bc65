"""kzoo.layers.GroupNorm against Keras' GroupNormalization (+ SiLU)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo.layers import GroupNorm


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 16), 4), ((3, 4, 6, 32), 32)])
def test_matches_keras_group_normalization_values_and_gradients(shape, groups, activation):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, shape).astype("float32"))
    ours = GroupNorm(groups, epsilon=1e-6, activation=activation)
    ref = keras.layers.GroupNormalization(groups, epsilon=1e-6)
    ours.build(shape)
    ref.build(shape)
    gamma, beta = rng.normal(size=(2, shape[-1])).astype("float32")
    ours.set_weights([gamma, beta])
    ref.set_weights([gamma, beta])

    def forward(layer):
        y = layer(x)
        return keras.ops.silu(y) if (layer is ref and activation) else y

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_ref = forward(ours), forward(ref)
        loss_ours, loss_ref = tf.reduce_sum(y_ours**2), tf.reduce_sum(y_ref**2)
    np.testing.assert_allclose(y_ours, y_ref, atol=2e-5)
    for a, b in zip(
        tape.gradient(loss_ours, [x, *ours.trainable_weights]),
        tape.gradient(loss_ref, [x, *ref.trainable_weights]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_float16_inputs_keep_float32_statistics():
    x = np.full((2, 4, 4, 8), 300.0, "float16") + np.arange(8, dtype="float16")
    layer = GroupNorm(2, dtype="mixed_float16")
    y = layer(x)
    assert y.dtype == "float16" and np.isfinite(np.asarray(y, "float32")).all()


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None, 4, 4, 6\)"):
        GroupNorm(4).build((None, 4, 4, 6))
