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

from kzoo.layers.checks import check_positive_int

LAYER_NORM_EPSILON = 1e-6


def modulate(x, shift, scale):
    """`x * (1 + scale) + shift`, with `(B, D)` shift/scale broadcast over tokens `(B, N, D)`."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def _modulated_layer_norm(x, shift, scale, epsilon=LAYER_NORM_EPSILON):
    """Affine-free LayerNorm then `modulate`, all in float32, cast back to `x.dtype`."""
    x32 = ops.cast(x, "float32")
    mean, variance = ops.moments(x32, axes=[-1], keepdims=True)
    normed = (x32 - mean) * ops.rsqrt(variance + epsilon)
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
        mlp_norm_epsilon: epsilon of the LayerNorm before the MLP (diffusers'
            `DiTTransformer2DModel` uses its `norm_eps`, 1e-5, there; 1e-6 elsewhere).
        **kwargs: base layer arguments.

    `call(tokens, conditioning)`: tokens `(B, N, D)`, conditioning `(B, D)`;
    returns `(B, N, D)`.

    Example:
    ```python
    block = kzoo.layers.AdaLNZeroBlock(384, num_heads=6)
    tokens = block(keras.random.normal((2, 256, 384)), keras.random.normal((2, 384)))
    ```
    """

    def __init__(
        self, hidden_size, num_heads, mlp_ratio=4.0, mlp_norm_epsilon=LAYER_NORM_EPSILON, **kwargs
    ):
        super().__init__(**kwargs)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_heads", num_heads)
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
        self.mlp_norm_epsilon = mlp_norm_epsilon
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
        # unstack, not qkv[i]: each slice's gradient is a full-size tensor of zeros.
        query, key, value = ops.unstack(qkv, 3, axis=0)
        # Scaling the query (N*hd) is cheaper than scaling the scores (N*N).
        query = query * ops.cast(self.head_dim**-0.5, x.dtype)
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
        hidden = self.mlp_in(_modulated_layer_norm(tokens, shift2, scale2, self.mlp_norm_epsilon))
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
                "mlp_norm_epsilon": self.mlp_norm_epsilon,
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
        check_positive_int("output_dim", output_dim)
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


# --- Cross-modal fusion: cross-attention, FiLM, concatenation, gated cross-attention ---
#
# - Cross-attention: Vaswani et al. 2017 (https://arxiv.org/abs/1706.03762, Sec. 3.2.3),
#   as text conditioning in latent diffusion (Rombach et al. 2022,
#   https://arxiv.org/abs/2112.10752, Sec. 3.3).
# - FiLM: Perez et al. 2018, https://arxiv.org/abs/1709.07871 (Eq. 1-2).
# - Gated cross-attention: Flamingo's GATED XATTN-DENSE (Alayrac et al. 2022,
#   https://arxiv.org/abs/2204.14198, Sec. 2.2, Fig. 4): tanh gates initialised at 0
#   so a new fusion layer starts as the identity.
# Masks follow `kzoo.layers.transformer`: `(B, T_k)`, True / nonzero = a real token;
# padded keys never influence an output, and a query whose keys are all padding
# receives zero attention.

from kzoo.layers.transformer import MultiHeadAttention, _check_rate  # noqa: E402


def _broadcast_vector(vector, like):
    """`(B, E)` -> `(B, 1, ..., 1, E)` with the rank of `like` (tokens or maps)."""
    for _ in range(len(like.shape) - 2):
        vector = ops.expand_dims(vector, 1)
    return vector


@keras.saving.register_keras_serializable(package="kzoo")
class CrossAttention(keras.layers.Layer):
    """Residual pre-LN cross-attention: `x + Attn(LN(x), context)` with a context padding mask.

    Queries come from one modality (`x`: tokens `(B, N, D)`, or an NHWC feature map,
    attended per position), keys and values from the other (`context` `(B, T, E)`).

    Args:
        num_heads: attention heads.
        key_dim: per-head width; default `D // num_heads`.
        dropout: dropout rate on the attention weights.
        layer_norm_epsilon: epsilon of the query LayerNorm.
        **kwargs: base layer arguments.

    `call(x, context, context_mask=None, training=None)`: returns the shape of `x`.

    Example:
    ```python
    layer = kzoo.layers.CrossAttention(num_heads=4)
    image_tokens = layer(image_tokens, text["sequence"], context_mask=token_ids != 0)
    ```
    """

    def __init__(self, num_heads, key_dim=None, dropout=0.0, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        if key_dim is not None:
            check_positive_int("key_dim", key_dim)
        _check_rate(dropout, "dropout")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.attention = MultiHeadAttention(
            num_heads, key_dim=key_dim, dropout=dropout, dtype=self.dtype_policy, name="attention"
        )

    def build(self, x_shape, context_shape=None, context_mask_shape=None):
        width = x_shape[-1]
        self.norm.build((None, None, width))
        self.attention.build((None, None, width), (None, None, context_shape[-1]))

    def call(self, x, context, context_mask=None, training=None):
        shape = ops.shape(x)
        tokens = ops.reshape(x, (shape[0], -1, shape[-1]))  # (B, N, D), maps flattened
        attended = self.attention(
            self.norm(tokens), context, key_padding_mask=context_mask, training=training
        )
        return x + ops.reshape(attended, shape)

    def compute_output_shape(self, x_shape, *args, **kwargs):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class FiLM(keras.layers.Layer):
    """Feature-wise linear modulation: `x * (1 + gamma(c)) + beta(c)`.

    `gamma` and `beta` come from one linear layer on the conditioning vector,
    initialised to zero, so a new FiLM layer is the identity (the `1 +` keeps the
    scale centred on 1, as DiT's `modulate`).

    Args:
        **kwargs: base layer arguments.

    `call(x, conditioning)`: `x` `(B, ..., C)` (tokens or NHWC maps),
    `conditioning` `(B, E)`; returns the shape of `x`.

    Example:
    ```python
    feature_map = kzoo.layers.FiLM()(feature_map, text["pooled"])  # (B, H, W, C)
    ```
    """

    def build(self, x_shape, conditioning_shape=None):
        self.modulation = keras.layers.Dense(
            2 * x_shape[-1], kernel_initializer="zeros", dtype=self.dtype_policy, name="modulation"
        )
        self.modulation.build(conditioning_shape)

    def call(self, x, conditioning):
        scale, shift = ops.split(self.modulation(conditioning), 2, axis=-1)
        return x * (1.0 + _broadcast_vector(scale, x)) + _broadcast_vector(shift, x)

    def compute_output_shape(self, x_shape, conditioning_shape=None):
        return x_shape


@keras.saving.register_keras_serializable(package="kzoo")
class ConcatFusion(keras.layers.Layer):
    """Concatenates a conditioning vector to every position, then projects: `W [x; c] + b`.

    Args:
        output_dim: output width; default the width of `x`.
        **kwargs: base layer arguments.

    `call(x, conditioning)`: `x` `(B, ..., C)`, `conditioning` `(B, E)`
    (broadcast over the positions of `x`) or `(B, ..., E)` with the positions of
    `x`; returns `(B, ..., output_dim)`.

    Example:
    ```python
    fused = kzoo.layers.ConcatFusion()(image_tokens, text["pooled"])  # (B, N, D)
    ```
    """

    def __init__(self, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        if output_dim is not None:
            check_positive_int("output_dim", output_dim)
        self.output_dim = output_dim

    def build(self, x_shape, conditioning_shape=None):
        width = x_shape[-1] + conditioning_shape[-1]
        self.projection = keras.layers.Dense(
            self.output_dim or x_shape[-1], dtype=self.dtype_policy, name="projection"
        )
        self.projection.build((None, width))

    def call(self, x, conditioning):
        if len(conditioning.shape) == 2 and len(x.shape) > 2:
            target = (*ops.shape(x)[:-1], ops.shape(conditioning)[-1])
            conditioning = ops.broadcast_to(_broadcast_vector(conditioning, x), target)
        return self.projection(ops.concatenate([x, ops.cast(conditioning, x.dtype)], axis=-1))

    def compute_output_shape(self, x_shape, conditioning_shape=None):
        return (*x_shape[:-1], self.output_dim or x_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim})
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class GatedFusion(keras.layers.Layer):
    """Flamingo's gated cross-attention block, identity at initialisation.

    ```
    x = x + tanh(alpha_attn) * CrossAttn(LN(x), context)
    x = x + tanh(alpha_mlp) * MLP(LN(x))
    ```
    with scalar gates `alpha` initialised at 0 (Alayrac et al. 2022, Sec. 2.2), so
    inserting the block leaves a pretrained stream unchanged until the gates open.

    Args:
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of the width of `x`.
        dropout: dropout rate on the attention weights.
        layer_norm_epsilon: LayerNorm epsilon.
        **kwargs: base layer arguments.

    `call(x, context, context_mask=None, training=None)`: `x` `(B, N, D)`,
    `context` `(B, T, E)`, `context_mask` `(B, T)`; returns `(B, N, D)`.

    Example:
    ```python
    layer = kzoo.layers.GatedFusion(num_heads=4)
    text_tokens = layer(text_tokens, image["sequence"])  # == text_tokens at init
    ```
    """

    def __init__(self, num_heads, mlp_ratio=4.0, dropout=0.0, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive. Received: mlp_ratio={mlp_ratio!r}")
        _check_rate(dropout, "dropout")
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="attention_norm"
        )
        self.attention = MultiHeadAttention(
            num_heads, dropout=dropout, dtype=policy, name="attention"
        )
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="mlp_norm"
        )

    def build(self, x_shape, context_shape=None, context_mask_shape=None):
        width = x_shape[-1]
        self.attention_norm.build((None, None, width))
        self.attention.build((None, None, width), (None, None, context_shape[-1]))
        self.mlp_norm.build((None, None, width))
        self.mlp_in = keras.layers.Dense(
            int(width * self.mlp_ratio), activation="gelu", dtype=self.dtype_policy, name="mlp_in"
        )
        self.mlp_in.build((None, None, width))
        self.mlp_out = keras.layers.Dense(width, dtype=self.dtype_policy, name="mlp_out")
        self.mlp_out.build((None, None, self.mlp_in.units))
        self.attention_gate = self.add_weight(name="attention_gate", shape=(), initializer="zeros")
        self.mlp_gate = self.add_weight(name="mlp_gate", shape=(), initializer="zeros")

    def call(self, x, context, context_mask=None, training=None):
        attended = self.attention(
            self.attention_norm(x), context, key_padding_mask=context_mask, training=training
        )
        x = x + ops.cast(ops.tanh(self.attention_gate), x.dtype) * attended
        hidden = self.mlp_out(self.mlp_in(self.mlp_norm(x)))
        return x + ops.cast(ops.tanh(self.mlp_gate), x.dtype) * hidden

    def compute_output_shape(self, x_shape, *args, **kwargs):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
