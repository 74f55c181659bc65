"""Attention blocks: single-head spatial self-attention over a feature map.

As in DDPM's and the LDM autoencoder's `AttnBlock` (Ho et al. 2020,
https://arxiv.org/abs/2006.11239; Vaswani et al. 2017,
https://arxiv.org/abs/1706.03762, Eq. 1).
"""

import keras
from keras import ops

from kzoo.layers.normalization import GroupNorm


@keras.saving.register_keras_serializable(package="kzoo")
class SpatialSelfAttention(keras.layers.Layer):
    """Residual self-attention across the H*W positions of an NHWC feature map.

    Softmax runs in float32 under mixed precision.

    Args:
        groups: GroupNorm groups applied before the projections.
        num_heads: attention heads; must divide the channel count.
        norm_epsilon: epsilon of the GroupNorm.
        **kwargs: base layer arguments.
    """

    def __init__(self, groups=32, num_heads=1, norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(
                f"`num_heads` must be a positive integer. Received: num_heads={num_heads!r}"
            )
        self.groups = groups
        self.num_heads = num_heads
        self.norm_epsilon = norm_epsilon
        self.norm = GroupNorm(groups, norm_epsilon, dtype=self.dtype_policy, name="norm")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.num_heads:
            raise ValueError(
                f"`num_heads`={self.num_heads} must divide the channel count. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.norm.build(input_shape)
        self.qkv = keras.layers.Dense(3 * channels, dtype=self.dtype_policy, name="qkv")
        self.qkv.build((None, channels))
        self.out = keras.layers.Dense(channels, dtype=self.dtype_policy, name="out")
        self.out.build((None, channels))

    def call(self, inputs):
        shape = ops.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        head_dim = channels // self.num_heads
        tokens = ops.reshape(self.norm(inputs), (batch, height * width, channels))
        qkv = ops.reshape(self.qkv(tokens), (batch, height * width, 3, self.num_heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, HW, head_dim)
        # unstack, not qkv[0], qkv[1], qkv[2]: the gradient of each slice is a full
        # (3, B, heads, HW, head_dim) tensor of zeros (StridedSliceGrad), summed after.
        query, key, value = ops.unstack(qkv, 3, axis=0)
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * (head_dim**-0.5)
        weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
        attended = ops.matmul(weights, value)  # (B, heads, HW, head_dim)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (batch, -1, channels))
        return inputs + ops.reshape(self.out(attended), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"groups": self.groups, "num_heads": self.num_heads, "norm_epsilon": self.norm_epsilon}
        )
        return config
