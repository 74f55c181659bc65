"""Group normalization with one-pass float32 statistics.

Wu & He 2018, https://arxiv.org/abs/1803.08494. Keras' `GroupNormalization` plus
SiLU is the slowest block of a conv net on CPU here (shared/NOTES.md); computing
mean and mean-of-squares in one reduction and fusing scale/shift (and an optional
SiLU) into one expression is measurably faster.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kzoo")
class GroupNorm(keras.layers.Layer):
    """Group normalization over the channel axis (last), optionally fused with SiLU.

    Statistics are computed in float32 whatever the layer's compute dtype.

    Args:
        groups: number of channel groups; must divide the channel count.
        epsilon: added to the variance.
        activation: `None` or `"silu"`, applied after the affine transform.
        **kwargs: base layer arguments.

    Example:
    ```python
    norm = kzoo.layers.GroupNorm(groups=32, activation="silu")
    y = norm(keras.random.normal((2, 8, 8, 64)))
    ```
    """

    def __init__(self, groups=32, epsilon=1e-6, activation=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"`groups` must be a positive integer. Received: groups={groups!r}")
        if activation not in (None, "silu"):
            raise ValueError(
                f"`activation` must be None or 'silu'. Received: activation={activation!r}"
            )
        self.groups = groups
        self.epsilon = epsilon
        self.activation = activation

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(
                f"`groups`={self.groups} must divide the number of channels. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs):
        dtype = inputs.dtype
        shape = ops.shape(inputs)
        channels = shape[-1]
        x = ops.cast(inputs, "float32")
        grouped = ops.reshape(x, (shape[0], -1, self.groups, channels // self.groups))
        mean = ops.mean(grouped, axis=(1, 3), keepdims=True)
        mean_sq = ops.mean(ops.square(grouped), axis=(1, 3), keepdims=True)
        inv_std = ops.rsqrt(ops.maximum(mean_sq - ops.square(mean), 0.0) + self.epsilon)
        # Fold normalisation and the affine transform into one scale and shift per
        # (sample, channel): y = x * scale + shift.
        gamma = ops.reshape(self.gamma, (1, 1, self.groups, channels // self.groups))
        beta = ops.reshape(self.beta, (1, 1, self.groups, channels // self.groups))
        scale = inv_std * ops.cast(gamma, "float32")
        shift = ops.cast(beta, "float32") - mean * scale
        outputs = ops.reshape(grouped * scale + shift, shape)
        if self.activation == "silu":
            outputs = ops.silu(outputs)
        return ops.cast(outputs, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"groups": self.groups, "epsilon": self.epsilon, "activation": self.activation}
        )
        return config
