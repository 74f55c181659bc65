"""Masked multi-head attention and a pre-LN transformer block, shared by text and image encoders.

Attention is Vaswani et al. 2017 (https://arxiv.org/abs/1706.03762, Eq. 1,
Sec. 3.2.2); the block is pre-LN (`x + f(LN(x))`, Xiong et al. 2020,
https://arxiv.org/abs/2002.04745) with a GELU MLP, as in GPT-2, ViT
(https://arxiv.org/abs/2010.11929) and CLIP's text and image towers
(https://arxiv.org/abs/2103.00020).

Masks: a key padding mask `(B, T_k)` (True / nonzero = a real token) stops
attention to padded keys; `causal=True` stops attention to later positions.
Scores and softmax run in float32 under mixed precision. Masked scores get a
large finite negative instead of `-inf`, and a query row whose keys are all
masked (an empty caption) gets all-zero attention weights, so its output is
the output projection's bias: finite, and independent of the padded keys.
"""

import keras
from keras import ops

from kzoo.layers.checks import check_positive_int

# Added to masked float32 scores; finite so an all-masked row cannot produce NaN.
_MASKED_SCORE = -1e9


def _check_rate(value, name):
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")


def attention_mask(key_padding_mask=None, query_length=None, key_length=None, causal=False):
    """Boolean mask `(B or 1, 1, T_q, T_k)` combining key padding and causality, or None.

    Args:
        key_padding_mask: `(B, T_k)` bool or int, True / nonzero where the key is
            a real token; None for no padding.
        query_length: `T_q` (needed with `causal`).
        key_length: `T_k` (needed with `causal`).
        causal: also mask keys after each query position (`T_q == T_k`).

    Returns:
        A bool tensor broadcastable to `(B, heads, T_q, T_k)`, or None when nothing
        is masked.
    """
    mask = None
    if key_padding_mask is not None:
        mask = ops.cast(key_padding_mask, "bool")[:, None, None, :]
    if causal:
        rows = ops.arange(query_length)[:, None]
        cols = ops.arange(key_length)[None, :]
        lower = (cols <= rows)[None, None]
        mask = lower if mask is None else ops.logical_and(mask, lower)
    return mask


def scaled_dot_product_attention(query, key, value, mask=None, dropout=None, training=None):
    """`softmax(q k^T / sqrt(d)) v` per head, with masking and float32 softmax.

    Args:
        query: `(B, heads, T_q, d)`.
        key: `(B, heads, T_k, d)`.
        value: `(B, heads, T_k, d_v)`.
        mask: bool, broadcastable to `(B, heads, T_q, T_k)`, True = attend.
        dropout: an optional `keras.layers.Dropout` on the attention weights.
        training: passed to `dropout`.

    Returns:
        `(B, heads, T_q, d_v)` in `value.dtype`. Rows with every key masked are zero.
    """
    head_dim = ops.shape(query)[-1]
    scale = ops.rsqrt(ops.cast(head_dim, "float32"))
    scores = ops.matmul(ops.cast(query, "float32"), ops.cast(ops.swapaxes(key, -1, -2), "float32"))
    scores = scores * scale  # (B, heads, T_q, T_k)
    if mask is not None:
        scores = ops.where(mask, scores, _MASKED_SCORE)
    weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        # Rows with no valid key would spread weight uniformly over padding; zero them.
        any_valid = ops.any(mask, axis=-1, keepdims=True)
        weights = weights * ops.cast(any_valid, "float32")
    weights = ops.cast(weights, value.dtype)
    if dropout is not None:
        weights = dropout(weights, training=training)
    return ops.matmul(weights, value)


@keras.saving.register_keras_serializable(package="kzoo")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with a key padding mask, causal option and float32 softmax.

    Unlike `keras.layers.MultiHeadAttention`, the softmax always runs in float32
    and a query whose keys are all padding gets zero attention (not a uniform
    average of the padding), so padded keys never influence any output.

    Args:
        num_heads: attention heads.
        key_dim: per-head width of queries and keys; default `query_dim // num_heads`.
        output_dim: output width; default the query width.
        dropout: dropout rate on the attention weights.
        use_bias: biases in the projections.
        **kwargs: base layer arguments.

    `call(query, context=None, key_padding_mask=None, causal=False, training=None)`:
    `query` `(B, T_q, D_q)`; `context` `(B, T_k, D_k)` for cross-attention (None:
    self-attention on `query`); `key_padding_mask` `(B, T_k)`. Returns
    `(B, T_q, output_dim)`.

    Example:
    ```python
    attention = kzoo.layers.MultiHeadAttention(num_heads=4)
    out = attention(tokens, key_padding_mask=token_ids != 0)  # (B, T, D)
    ```
    """

    def __init__(
        self, num_heads, key_dim=None, output_dim=None, dropout=0.0, use_bias=True, **kwargs
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        if key_dim is not None:
            check_positive_int("key_dim", key_dim)
        if output_dim is not None:
            check_positive_int("output_dim", output_dim)
        _check_rate(dropout, "dropout")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.output_dim = output_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.attention_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, query_shape, context_shape=None):
        query_dim = query_shape[-1]
        context_dim = query_dim if context_shape is None else context_shape[-1]
        key_dim = self.key_dim
        if key_dim is None:
            if query_dim % self.num_heads:
                raise ValueError(
                    f"`num_heads`={self.num_heads} must divide the query width {query_dim} "
                    f"(or pass `key_dim`). Received: query_shape={tuple(query_shape)}"
                )
            key_dim = query_dim // self.num_heads
        self._head_dim = key_dim
        inner = key_dim * self.num_heads
        output_dim = self.output_dim or query_dim
        dense = {"use_bias": self.use_bias, "dtype": self.dtype_policy}
        self.query_proj = keras.layers.Dense(inner, name="query", **dense)
        self.key_proj = keras.layers.Dense(inner, name="key", **dense)
        self.value_proj = keras.layers.Dense(inner, name="value", **dense)
        self.output_proj = keras.layers.Dense(output_dim, name="output", **dense)
        self.query_proj.build((None, None, query_dim))
        self.key_proj.build((None, None, context_dim))
        self.value_proj.build((None, None, context_dim))
        self.output_proj.build((None, None, inner))

    def _split_heads(self, x):
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], self.num_heads, self._head_dim))
        return ops.transpose(x, (0, 2, 1, 3))  # (B, heads, T, d)

    def call(self, query, context=None, key_padding_mask=None, causal=False, training=None):
        source = query if context is None else context
        q = self._split_heads(self.query_proj(query))
        k = self._split_heads(self.key_proj(source))
        v = self._split_heads(self.value_proj(source))
        mask = attention_mask(
            key_padding_mask, ops.shape(query)[1], ops.shape(source)[1], causal=causal
        )
        attended = scaled_dot_product_attention(
            q, k, v, mask, dropout=self.attention_dropout, training=training
        )
        shape = ops.shape(attended)
        attended = ops.reshape(
            ops.transpose(attended, (0, 2, 1, 3)), (shape[0], shape[2], shape[1] * shape[3])
        )  # (B, T_q, heads * d)
        return self.output_proj(attended)

    def compute_output_shape(self, query_shape, context_shape=None):
        return (*query_shape[:-1], self.output_dim or query_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "output_dim": self.output_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class TransformerBlock(keras.layers.Layer):
    """Pre-LN transformer block: `x + Attn(LN(x))`, then `x + MLP(LN(x))`.

    With `cross_attention=True` a pre-LN cross-attention sublayer
    `x + CrossAttn(LN(x), context)` sits between the two (a decoder block, as in
    Vaswani et al. Sec. 3.1), for captioners.

    Args:
        hidden_dim: token width `D`.
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_dim: MLP hidden width; default `4 * hidden_dim`.
        dropout: dropout on attention weights and on each residual branch.
        causal: mask attention to later positions (autoregressive decoding).
        cross_attention: add a cross-attention sublayer over a `context`.
        layer_norm_epsilon: LayerNorm epsilon (statistics run in float32).
        activation: MLP activation name.
        **kwargs: base layer arguments.

    `call(x, padding_mask=None, context=None, context_mask=None, training=None)`:
    `x` `(B, T, D)`, `padding_mask` `(B, T)` (True = real token), `context`
    `(B, T_c, D_c)` and `context_mask` `(B, T_c)` with `cross_attention`.
    Returns `(B, T, D)`. Padded positions still get (ignored) outputs; no real
    position attends to them.

    Example:
    ```python
    block = kzoo.layers.TransformerBlock(hidden_dim=64, num_heads=4)
    tokens = block(tokens, padding_mask=token_ids != 0)
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_dim=None,
        dropout=0.0,
        causal=False,
        cross_attention=False,
        layer_norm_epsilon=1e-5,
        activation="gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("num_heads", num_heads)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_dim`={hidden_dim}. "
                f"Received: num_heads={num_heads!r}"
            )
        if mlp_dim is not None:
            check_positive_int("mlp_dim", mlp_dim)
        _check_rate(dropout, "dropout")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.causal = bool(causal)
        self.cross_attention = bool(cross_attention)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation
        policy = self.dtype_policy

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=policy, name=name
            )

        self.attention_norm = norm("attention_norm")
        self.attention = MultiHeadAttention(
            num_heads, dropout=dropout, dtype=policy, name="attention"
        )
        self.cross_norm = norm("cross_norm") if self.cross_attention else None
        self.cross = (
            MultiHeadAttention(num_heads, dropout=dropout, dtype=policy, name="cross_attention")
            if self.cross_attention
            else None
        )
        self.mlp_norm = norm("mlp_norm")
        self.mlp_in = keras.layers.Dense(
            mlp_dim or 4 * hidden_dim, activation=activation, dtype=policy, name="mlp_in"
        )
        self.mlp_out = keras.layers.Dense(hidden_dim, dtype=policy, name="mlp_out")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, x_shape, padding_mask_shape=None, context_shape=None, context_mask_shape=None):
        if x_shape[-1] != self.hidden_dim:
            raise ValueError(
                f"Expected tokens of width `hidden_dim`={self.hidden_dim}. "
                f"Received: x_shape={tuple(x_shape)}"
            )
        token_shape = (None, None, self.hidden_dim)
        self.attention_norm.build(token_shape)
        self.attention.build(token_shape)
        if self.cross_attention:
            self.cross_norm.build(token_shape)
            self.cross.build(token_shape, tuple(context_shape) if context_shape else token_shape)
        self.mlp_norm.build(token_shape)
        self.mlp_in.build(token_shape)
        self.mlp_out.build((None, None, self.mlp_in.units))

    def call(self, x, padding_mask=None, context=None, context_mask=None, training=None):
        hidden = self.attention(
            self.attention_norm(x),
            key_padding_mask=padding_mask,
            causal=self.causal,
            training=training,
        )
        x = x + self.residual_dropout(hidden, training=training)
        if self.cross_attention:
            if context is None:
                raise ValueError(
                    "This TransformerBlock has `cross_attention=True` and needs a `context`. "
                    "Received: context=None"
                )
            hidden = self.cross(
                self.cross_norm(x), context, key_padding_mask=context_mask, training=training
            )
            x = x + self.residual_dropout(hidden, training=training)
        hidden = self.mlp_out(self.mlp_in(self.mlp_norm(x)))
        return x + self.residual_dropout(hidden, training=training)

    def compute_output_shape(self, x_shape, *args, **kwargs):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "causal": self.causal,
                "cross_attention": self.cross_attention,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": self.activation,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding `(sequence_length, D)` to tokens `(B, T, D)`.

    As in BERT, GPT-2, ViT and CLIP. `T` may be shorter than `sequence_length`
    (the first `T` rows are used).

    Args:
        sequence_length: the most positions.
        initializer_stddev: standard deviation of the normal initialiser.
        **kwargs: base layer arguments.

    Example:
    ```python
    tokens = kzoo.layers.PositionEmbedding(16)(token_embeddings)  # (B, 16, D)
    ```
    """

    def __init__(self, sequence_length, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("sequence_length", sequence_length)
        self.sequence_length = sequence_length
        self.initializer_stddev = initializer_stddev

    def build(self, input_shape):
        length = input_shape[1]
        if length is not None and length > self.sequence_length:
            raise ValueError(
                f"Inputs have more positions than `sequence_length`={self.sequence_length}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=self.initializer_stddev),
        )

    def call(self, inputs):
        length = ops.shape(inputs)[1]
        return inputs + ops.cast(self.embeddings[:length], inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer_stddev": self.initializer_stddev,
            }
        )
        return config
