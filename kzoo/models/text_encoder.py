"""Transformer text encoder over token ids: token + learned position embeddings, pre-LN blocks.

The text tower of CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020,
Sec. 2.4), bidirectional by default, sized for small vocabularies. Token ids come
from `kzoo.data.tokenizer.Tokenizer` (id 0 = `[PAD]`, masked everywhere).
"""

import keras
from keras import ops

from kzoo.layers._trainable import apply_trainable_flag
from kzoo.layers.checks import check_positive_int
from kzoo.layers.transformer import (
    PositionEmbedding,
    TransformerBlock,
    _check_rate,
)
from kzoo.presets import PresetMixin

POOLING_MODES = ("mean", "last")


def masked_pool(sequence, padding_mask, mode="mean"):
    """Pools `(B, T, D)` token states over the real tokens of `padding_mask` `(B, T)`.

    `"mean"`: the mean over real tokens. `"last"`: the state of the last real token
    (the `[EOS]` when the tokenizer appends one: CLIP's EOS pooling). A row with no
    real token pools to the zero vector in both modes.

    Returns:
        `(B, D)` in `sequence.dtype`.
    """
    mask = ops.cast(padding_mask, sequence.dtype)  # (B, T)
    if mode == "mean":
        total = ops.sum(sequence * mask[..., None], axis=1)
        count = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        return total / count
    # Position of the last real token; rows with none select nothing.
    positions = ops.cast(ops.arange(ops.shape(mask)[1]), sequence.dtype)[None, :]
    last = ops.max(mask * (positions + 1.0), axis=1, keepdims=True) - 1.0  # (B, 1), -1 if empty
    selector = ops.cast(ops.equal(positions, last), sequence.dtype)  # (B, T)
    return ops.sum(sequence * selector[..., None], axis=1)


@keras.saving.register_keras_serializable(package="kzoo")
class TextEncoder(PresetMixin, keras.Model):
    """Transformer encoder: int32 token ids `(B, T)` -> `{"sequence": (B, T, D), "pooled": (B, D)}`.

    Ids equal to 0 are padding: no token attends to them and pooling skips them.
    `sequence` holds the final-LayerNorm states of every position (padding
    positions hold values that should be ignored); `pooled` is the masked mean of
    the real tokens (`pooling="mean"`) or the state of the last real token
    (`pooling="last"`, CLIP's EOS pooling when the tokenizer adds `[EOS]`). An
    all-padding row (an empty caption) pools to the zero vector, never NaN.

    Args:
        vocabulary_size: number of token ids (`Tokenizer.vocabulary_size`).
        sequence_length: maximum number of tokens `T` (learned positions).
        hidden_dim: token width `D`.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_dim: MLP width; default `4 * hidden_dim`.
        dropout: dropout in the blocks and on the embeddings.
        pooling: `"mean"` or `"last"`.
        causal: causal self-attention (a GPT-style / CLIP-style text tower).
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    tokenizer = Tokenizer.from_shapes_vocabulary(sequence_length=16)  # kzoo.data.tokenizer
    encoder = kzoo.models.TextEncoder(tokenizer.vocabulary_size, 16, hidden_dim=64)
    outputs = encoder(tokenizer(["a small red circle"]))
    outputs["pooled"].shape  # (1, 64)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length=16,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=None,
        dropout=0.0,
        pooling="mean",
        causal=False,
        **kwargs,
    ):
        check_positive_int("vocabulary_size", vocabulary_size)
        check_positive_int("sequence_length", sequence_length)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("num_layers", num_layers)
        check_positive_int("num_heads", num_heads)
        _check_rate(dropout, "dropout")
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_dim`={hidden_dim}. "
                f"Received: num_heads={num_heads!r}"
            )
        if pooling not in POOLING_MODES:
            raise ValueError(
                f"`pooling` must be one of {POOLING_MODES}. Received: pooling={pooling!r}"
            )

        # === Layers ===
        token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding",
        )
        position_embedding = PositionEmbedding(
            sequence_length, initializer_stddev=0.01, name="position_embedding"
        )
        embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                mlp_dim=mlp_dim,
                dropout=dropout,
                causal=causal,
                name=f"block{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")

        # === Functional Model ===
        token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
        padding_mask = ops.not_equal(token_ids, 0)  # (B, T)
        x = position_embedding(token_embedding(token_ids))
        x = embedding_dropout(x)
        for block in blocks:
            x = block(x, padding_mask=padding_mask)
        sequence = final_norm(x)  # (B, T, D)
        pooled = masked_pool(sequence, padding_mask, pooling)
        super().__init__(
            inputs=token_ids, outputs={"sequence": sequence, "pooled": pooled}, **kwargs
        )
        apply_trainable_flag(self)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.pooling = pooling
        self.causal = bool(causal)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "sequence_length": self.sequence_length,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "pooling": self.pooling,
            "causal": self.causal,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
