"""Residual conv blocks, down- and up-sampling, as in DDPM and the VQGAN/LDM autoencoders.

He et al. 2016 (https://arxiv.org/abs/1512.03385); the GroupNorm-SiLU-conv
ordering and time-embedding injection follow Ho et al. 2020
(https://arxiv.org/abs/2006.11239) and diffusers' `ResnetBlock2D`; the optional
scale-shift injection is ADM's AdaGN (Dhariwal & Nichol 2021,
https://arxiv.org/abs/2105.05233, Section 3 and Table 1: "scale-shift norm").
"""

import keras
from keras import ops

from kzoo.layers.normalization import GroupNorm

DOWNSAMPLE_PADDINGS = ("same", "symmetric")


@keras.saving.register_keras_serializable(package="kzoo")
class ResBlock(keras.layers.Layer):
    """`x + conv(silu(norm(conv(silu(norm(x))) + emb)))`, with a 1x1 skip when channels change.

    Args:
        filters: output channels.
        groups: GroupNorm groups.
        dropout: dropout rate before the second conv.
        scale_shift: how the embedding enters. False: projected to `filters` and
            added after the first conv (DDPM); the GroupNorm after it removes each
            group's mean of that bias. True: projected to a scale and a shift applied
            after that GroupNorm, `norm(h) * (1 + scale) + shift` (ADM's AdaGN), so
            the condition modulates every channel past the normalisation.
        norm_epsilon: epsilon of both GroupNorms (diffusers' `norm_eps`, 1e-5 by
            default there).
        **kwargs: base layer arguments.

    `call(x, embedding=None)`: `embedding` (B, E) is the diffusion time/class
    embedding.
    """

    def __init__(
        self, filters, groups=32, dropout=0.0, scale_shift=False, norm_epsilon=1e-6, **kwargs
    ):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters!r}")
        self.filters = filters
        self.groups = groups
        self.dropout = dropout
        self.scale_shift = bool(scale_shift)
        self.norm_epsilon = norm_epsilon
        self.norm1 = GroupNorm(
            groups, norm_epsilon, activation="silu", dtype=self.dtype_policy, name="norm1"
        )
        self.conv1 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv1"
        )
        self.norm2 = GroupNorm(
            groups,
            norm_epsilon,
            # With scale-shift the SiLU comes after the modulation.
            activation=None if self.scale_shift else "silu",
            dtype=self.dtype_policy,
            name="norm2",
        )
        self.drop = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv2"
        )
        self.embedding_proj = None
        self.skip = None

    def build(self, inputs_shape, embedding_shape=None):
        self.norm1.build(inputs_shape)
        self.conv1.build(inputs_shape)
        out_shape = (*inputs_shape[:-1], self.filters)
        self.norm2.build(out_shape)
        self.conv2.build(out_shape)
        if embedding_shape is not None:
            self.embedding_proj = keras.layers.Dense(
                self.filters * (2 if self.scale_shift else 1),
                dtype=self.dtype_policy,
                name="embedding_proj",
            )
            self.embedding_proj.build(embedding_shape)
        if inputs_shape[-1] != self.filters:
            self.skip = keras.layers.Conv2D(self.filters, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(inputs_shape)

    def call(self, inputs, embedding=None, training=None):
        hidden = self.conv1(self.norm1(inputs))
        projected = None
        if embedding is not None:
            if self.embedding_proj is None:
                raise ValueError(
                    "This ResBlock was built without an embedding; call it with one the "
                    "first time to create the projection."
                )
            projected = self.embedding_proj(ops.silu(embedding))[:, None, None, :]
        if projected is not None and self.scale_shift:
            scale, shift = ops.split(projected, 2, axis=-1)  # (B, 1, 1, filters) each
            hidden = ops.silu(self.norm2(hidden) * (1.0 + scale) + shift)
        else:
            if projected is not None:
                hidden = hidden + projected
            hidden = self.norm2(hidden)
            if self.scale_shift:  # no embedding: the SiLU norm2 leaves out
                hidden = ops.silu(hidden)
        hidden = self.conv2(self.drop(hidden, training=training))
        shortcut = inputs if self.skip is None else self.skip(inputs)
        return shortcut + hidden

    def compute_output_shape(self, inputs_shape, embedding_shape=None):
        return (*inputs_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "groups": self.groups,
                "dropout": self.dropout,
                "scale_shift": self.scale_shift,
                "norm_epsilon": self.norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class Downsample(keras.layers.Layer):
    """Halves height and width with a stride-2 3x3 conv.

    Args:
        filters: output channels.
        padding: `"same"` (TF's: 0 rows/columns before, 1 after on even sizes, as
            the original TF DDPM code and diffusers' `downsample_padding=0`) or
            `"symmetric"` (1 on each side, as PyTorch's `padding=1`: diffusers'
            `Downsample2D` with its default `downsample_padding=1`).
        **kwargs: base layer arguments.
    """

    def __init__(self, filters, padding="same", **kwargs):
        super().__init__(**kwargs)
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(
                f"`padding` must be one of {DOWNSAMPLE_PADDINGS}. Received: padding={padding!r}"
            )
        self.filters = filters
        self.padding = padding
        self.conv = keras.layers.Conv2D(
            filters,
            3,
            strides=2,
            padding="same" if padding == "same" else "valid",
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs):
        if self.padding == "symmetric":
            inputs = ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return self.conv(inputs)

    def compute_output_shape(self, input_shape):
        if self.padding == "symmetric":
            input_shape = (
                input_shape[0],
                *(None if size is None else size + 2 for size in input_shape[1:3]),
                input_shape[3],
            )
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "padding": self.padding}


@keras.saving.register_keras_serializable(package="kzoo")
class Upsample(keras.layers.Layer):
    """Doubles height and width: nearest-neighbour resize, then a 3x3 conv."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv"
        )

    def build(self, input_shape):
        self.conv.build((input_shape[0], None, None, input_shape[-1]))

    def call(self, inputs):
        # Repeat is a pure reshape/broadcast: converts to builtin TFLite ops.
        upsampled = ops.repeat(ops.repeat(inputs, 2, axis=1), 2, axis=2)
        return self.conv(upsampled)

    def compute_output_shape(self, input_shape):
        height = None if input_shape[1] is None else input_shape[1] * 2
        width = None if input_shape[2] is None else input_shape[2] * 2
        return (input_shape[0], height, width, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}
