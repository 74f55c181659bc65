"""Conditioning blocks: adaLN-Zero transformer block and final layer, as in DiT.

Peebles & Xie 2022, "Scalable Diffusion Models with Transformers",
https://arxiv.org/abs/2212.09748, Sec. 3.2 ("adaLN-Zero block"): the
conditioning vector `c` (timestep + class embedding) regresses per-channel
shift, scale and gate for the attention and MLP branches from `SiLU(c)` through
a linear layer initialised to zero, so every residual block starts as the
identity. Follows the reference `DiTBlock` / `FinalLayer`
(github.com/facebookresearch/DiT, models.py). Layer norms have no affine
parameters (`eps=1e-6`); their statistics, the modulation and the attention
softmax run in float32 under mixed precision.
"""

import keras
from keras import ops

from kzoo.layers.embeddings import _check_positive_int

LAYER_NORM_EPSILON = 1e-6


def modulate(x, shift, scale):
    """`x * (1 + scale) + shift`, with `(B, D)` shift/scale broadcast over tokens `(B, N, D)`."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def _modulated_layer_norm(x, shift, scale):
    """Affine-free LayerNorm then `modulate`, all in float32, cast back to `x.dtype`."""
    x32 = ops.cast(x, "float32")
    mean, variance = ops.moments(x32, axes=[-1], keepdims=True)
    normed = (x32 - mean) * ops.rsqrt(variance + LAYER_NORM_EPSILON)
    out = modulate(normed, ops.cast(shift, "float32"), ops.cast(scale, "float32"))
    return ops.cast(out, x.dtype)


@keras.saving.register_keras_serializable(package="kzoo")
class AdaLNZeroBlock(keras.layers.Layer):
    """DiT transformer block with adaLN-Zero conditioning.

    ```
    shift1, scale1, gate1, shift2, scale2, gate2 = Linear_0(SiLU(c))
    x = x + gate1 * Attention(modulate(LN(x), shift1, scale1))
    x = x + gate2 * MLP(modulate(LN(x), shift2, scale2))
    ```
    `Linear_0` is initialised to zero, so a fresh block is the identity.

    Args:
        hidden_size: token width `D`.
        num_heads: attention heads; must divide `hidden_size`.
        mlp_ratio: MLP hidden width as a multiple of `hidden_size`.
        **kwargs: base layer arguments.

    `call(tokens, conditioning)`: tokens `(B, N, D)`, conditioning `(B, D)`;
    returns `(B, N, D)`.

    Example:
    ```python
    block = kzoo.layers.AdaLNZeroBlock(384, num_heads=6)
    tokens = block(keras.random.normal((2, 256, 384)), keras.random.normal((2, 384)))
    ```
    """

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(hidden_size, "hidden_size")
        _check_positive_int(num_heads, "num_heads")
        if hidden_size % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_size`={hidden_size}. "
                f"Received: num_heads={num_heads!r}"
            )
        if not isinstance(mlp_ratio, int | float) or mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive. Received: mlp_ratio={mlp_ratio!r}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.head_dim = hidden_size // num_heads
        mlp_hidden = int(hidden_size * mlp_ratio)
        policy = self.dtype_policy
        self.modulation = keras.layers.Dense(
            6 * hidden_size, kernel_initializer="zeros", dtype=policy, name="modulation"
        )
        self.qkv = keras.layers.Dense(3 * hidden_size, dtype=policy, name="qkv")
        self.attn_out = keras.layers.Dense(hidden_size, dtype=policy, name="attn_out")
        self.mlp_in = keras.layers.Dense(mlp_hidden, dtype=policy, name="mlp_in")
        self.mlp_out = keras.layers.Dense(hidden_size, dtype=policy, name="mlp_out")

    def build(self, tokens_shape, conditioning_shape=None):
        self.modulation.build((None, self.hidden_size))
        self.qkv.build((None, None, self.hidden_size))
        self.attn_out.build((None, None, self.hidden_size))
        self.mlp_in.build((None, None, self.hidden_size))
        self.mlp_out.build((None, None, self.mlp_in.units))

    def _attention(self, x):
        shape = ops.shape(x)
        batch, tokens = shape[0], shape[1]
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, head_dim)
        # Scaling the query (N*hd) is cheaper than scaling the scores (N*N).
        query = qkv[0] * ops.cast(self.head_dim**-0.5, x.dtype)
        key, value = qkv[1], qkv[2]
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))  # (B, heads, N, N)
        weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
        attended = ops.matmul(weights, value)  # (B, heads, N, head_dim)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (batch, tokens, -1))
        return self.attn_out(attended)

    def call(self, tokens, conditioning):
        params = self.modulation(ops.silu(conditioning))  # (B, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = ops.split(params, 6, axis=-1)
        hidden = self._attention(_modulated_layer_norm(tokens, shift1, scale1))
        tokens = tokens + gate1[:, None, :] * hidden
        hidden = self.mlp_in(_modulated_layer_norm(tokens, shift2, scale2))
        hidden = self.mlp_out(ops.gelu(hidden, approximate=True))
        return tokens + gate2[:, None, :] * hidden

    def compute_output_shape(self, tokens_shape, conditioning_shape=None):
        return tokens_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class AdaLNFinalLayer(keras.layers.Layer):
    """DiT's final layer: `Linear_0(modulate(LN(x), shift, scale))` with `(shift, scale)` from `c`.

    Both the modulation and the output projection are initialised to zero, so a
    freshly initialised DiT predicts exactly zero.

    Args:
        output_dim: features per token (`patch_size**2 * out_channels` in DiT).
        **kwargs: base layer arguments. Give `dtype="float32"` for a float32
            output under mixed precision.

    `call(tokens, conditioning)`: tokens `(B, N, D)`, conditioning `(B, D)`;
    returns `(B, N, output_dim)`.

    Example:
    ```python
    layer = kzoo.layers.AdaLNFinalLayer(16)
    out = layer(keras.random.normal((2, 256, 384)), keras.random.normal((2, 384)))  # zeros
    ```
    """

    def __init__(self, output_dim, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(output_dim, "output_dim")
        self.output_dim = output_dim
        self.modulation = None
        self.linear = keras.layers.Dense(
            output_dim, kernel_initializer="zeros", dtype=self.dtype_policy, name="linear"
        )

    def build(self, tokens_shape, conditioning_shape=None):
        hidden_size = tokens_shape[-1]
        self.modulation = keras.layers.Dense(
            2 * hidden_size, kernel_initializer="zeros", dtype=self.dtype_policy, name="modulation"
        )
        self.modulation.build((None, hidden_size))
        self.linear.build((None, None, hidden_size))

    def call(self, tokens, conditioning):
        shift, scale = ops.split(self.modulation(ops.silu(conditioning)), 2, axis=-1)
        return self.linear(_modulated_layer_norm(tokens, shift, scale))

    def compute_output_shape(self, tokens_shape, conditioning_shape=None):
        return (*tokens_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim})
        return config
