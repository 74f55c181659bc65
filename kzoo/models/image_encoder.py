"""Image encoders for cross-modal models: a small ViT or a residual conv net.

- `kind="vit"`: ViT (Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929):
  non-overlapping patches, a learned `[CLS]` token and learned positions, pre-LN
  transformer blocks, a final LayerNorm; CLIP's image tower (Radford et al. 2021,
  https://arxiv.org/abs/2103.00020) without its pre-LN on the embeddings.
- `kind="conv"`: the VQGAN/DDPM residual stack (`kzoo.layers.ResBlock`,
  `Downsample`), a GroupNorm-SiLU and a 1x1 projection to `hidden_dim`; its
  tokens are the positions of the final feature map.
"""

import keras
from keras import ops

from kzoo.layers._trainable import apply_trainable_flag
from kzoo.layers.checks import check_positive_int
from kzoo.layers.embeddings import PatchEmbedding
from kzoo.layers.normalization import GroupNorm
from kzoo.layers.resblocks import Downsample, ResBlock
from kzoo.layers.transformer import (
    PositionEmbedding,
    TransformerBlock,
    _check_rate,
)
from kzoo.presets import PresetMixin

KINDS = ("vit", "conv")
STEMS = ("patch", "conv")
POOLING_MODES = ("cls", "mean")


@keras.saving.register_keras_serializable(package="kzoo")
class ClassToken(keras.layers.Layer):
    """Prepends one learned `[CLS]` token to `(B, N, D)` tokens: `(B, 1 + N, D)`."""

    def build(self, input_shape):
        self.token = self.add_weight(
            name="token",
            shape=(1, 1, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        token = ops.broadcast_to(ops.cast(self.token, tokens.dtype), (batch, 1, tokens.shape[-1]))
        return ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])


@keras.saving.register_keras_serializable(package="kzoo")
class ImageEncoder(PresetMixin, keras.Model):
    """Image tower: float32 NHWC images in [-1, 1] -> `{"sequence": (B, N, D), "pooled": (B, D)}`.

    `sequence` holds the final-normalised token states: the `N = (H/p)*(W/p)` patch
    tokens for `kind="vit"` (the `[CLS]` token is not included), or the
    `N = h*w` positions of the final feature map for `kind="conv"`. `pooled` is
    the `[CLS]` state (`pooling="cls"`, ViT only) or the mean of `sequence`
    (`pooling="mean"`).

    Args:
        image_shape: `(height, width, channels)`.
        kind: `"vit"` or `"conv"`.
        patch_size: ViT patch side; must divide height and width.
        hidden_dim: token width `D`.
        num_layers: ViT transformer blocks.
        num_heads: ViT attention heads; must divide `hidden_dim`.
        mlp_dim: ViT MLP width; default `4 * hidden_dim`.
        dropout: dropout in the ViT blocks / the ResBlocks.
        pooling: `"cls"` or `"mean"`; default `"cls"` for ViT, `"mean"` for conv.
        channels: conv filters per level (a stride-2 downsample between levels).
        num_res_blocks: conv ResBlocks per level.
        norm_groups: conv GroupNorm groups; must divide every entry of `channels`.
        stem: ViT tokenizer: `"patch"` (a linear projection of each patch, as ViT)
            or `"conv"` (log2(patch_size) stride-2 3x3 convs, Xiao et al. 2021,
            https://arxiv.org/abs/2106.14881, which helps small ViTs see local
            structure such as the outline of a small shape).
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Images of another shape are rejected (`ValueError`) when the model is called.

    Example:
    ```python
    encoder = kzoo.models.ImageEncoder((32, 32, 3), kind="vit", patch_size=4, hidden_dim=64)
    encoder(images)["pooled"].shape  # (B, 64)
    ```
    """

    def __init__(
        self,
        image_shape=(32, 32, 3),
        kind="vit",
        patch_size=4,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=None,
        dropout=0.0,
        pooling=None,
        channels=(32, 64),
        num_res_blocks=1,
        norm_groups=8,
        stem="patch",
        **kwargs,
    ):
        image_shape = _check_image_shape(image_shape)
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
        check_positive_int("hidden_dim", hidden_dim)
        _check_rate(dropout, "dropout")
        if pooling is None:
            pooling = "cls" if kind == "vit" else "mean"
        if pooling not in POOLING_MODES or (kind == "conv" and pooling == "cls"):
            allowed = POOLING_MODES if kind == "vit" else ("mean",)
            raise ValueError(
                f"`pooling` must be one of {allowed} for kind={kind!r}. "
                f"Received: pooling={pooling!r}"
            )
        channels = tuple(channels) if isinstance(channels, list | tuple) else channels
        if kind == "vit":
            check_positive_int("patch_size", patch_size)
            check_positive_int("num_layers", num_layers)
            check_positive_int("num_heads", num_heads)
            if hidden_dim % num_heads:
                raise ValueError(
                    f"`num_heads` must divide `hidden_dim`={hidden_dim}. "
                    f"Received: num_heads={num_heads!r}"
                )
            if stem not in STEMS:
                raise ValueError(f"`stem` must be one of {STEMS}. Received: stem={stem!r}")
            if stem == "conv" and patch_size & (patch_size - 1):
                raise ValueError(
                    "A conv stem downsamples by 2 per conv: `patch_size` must be a power of 2. "
                    f"Received: patch_size={patch_size!r}"
                )
            if image_shape[0] % patch_size or image_shape[1] % patch_size:
                raise ValueError(
                    f"`patch_size` must divide the image height and width {image_shape[:2]}. "
                    f"Received: patch_size={patch_size!r}"
                )
        else:
            if not channels or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels
            ):
                raise ValueError(
                    "`channels` must be a non-empty sequence of positive integers. "
                    f"Received: channels={channels!r}"
                )
            check_positive_int("num_res_blocks", num_res_blocks)
            check_positive_int("norm_groups", norm_groups)
            if any(c % norm_groups for c in channels):
                raise ValueError(
                    f"`norm_groups` must divide every entry of `channels`={channels}. "
                    f"Received: norm_groups={norm_groups!r}"
                )
            factor = 2 ** (len(channels) - 1)
            if image_shape[0] % factor or image_shape[1] % factor:
                raise ValueError(
                    f"The image height and width {image_shape[:2]} must be divisible by {factor} "
                    f"(2 ** (len(channels) - 1)). Received: channels={channels!r}"
                )

        # === Functional Model ===
        images = keras.Input(image_shape, name="images")
        if kind == "vit":
            sequence, pooled = _vit(
                images,
                patch_size,
                hidden_dim,
                num_layers,
                num_heads,
                mlp_dim,
                dropout,
                pooling,
                stem,
            )
        else:
            sequence, pooled = _conv(
                images, channels, num_res_blocks, norm_groups, hidden_dim, dropout
            )
        super().__init__(inputs=images, outputs={"sequence": sequence, "pooled": pooled}, **kwargs)
        apply_trainable_flag(self)

        # === Config ===
        self.image_shape = image_shape
        self.kind = kind
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.pooling = pooling
        self.channels = channels
        self.num_res_blocks = num_res_blocks
        self.norm_groups = norm_groups
        self.stem = stem

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": self.image_shape,
            "kind": self.kind,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "pooling": self.pooling,
            "channels": self.channels,
            "num_res_blocks": self.num_res_blocks,
            "norm_groups": self.norm_groups,
            "stem": self.stem,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _vit(images, patch_size, hidden_dim, num_layers, num_heads, mlp_dim, dropout, pooling, stem):
    if stem == "patch":
        tokens = PatchEmbedding(patch_size, hidden_dim, name="patch_embedding")(images)  # (B, N, D)
    else:
        tokens = _conv_stem(images, patch_size, hidden_dim)
    num_patches = tokens.shape[1]
    x = ClassToken(name="class_token")(tokens)  # (B, 1 + N, D)
    x = PositionEmbedding(num_patches + 1, name="position_embedding")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerBlock(
            hidden_dim, num_heads, mlp_dim=mlp_dim, dropout=dropout, name=f"block{i}"
        )(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
    sequence = x[:, 1:]  # (B, N, D) patch tokens
    pooled = x[:, 0] if pooling == "cls" else ops.mean(sequence, axis=1)
    return sequence, pooled


def _conv_stem(images, patch_size, hidden_dim):
    """A 3x3 conv, then stride-2 3x3 convs (widths doubling up to `hidden_dim`), GELU, a 1x1."""
    num_convs = patch_size.bit_length() - 1
    # A first stride-1 conv sees full-resolution edges before any downsampling.
    x = keras.layers.Conv2D(
        max(hidden_dim // 2**num_convs, 8),
        3,
        padding="same",
        activation="gelu",
        name="stem_conv_in",
    )(images)
    for i in range(num_convs):
        filters = max(hidden_dim // 2 ** (num_convs - 1 - i), 8)
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="gelu", name=f"stem_conv{i}"
        )(x)
    x = keras.layers.Conv2D(hidden_dim, 1, name="stem_proj")(x)  # (B, H/p, W/p, D)
    return keras.layers.Reshape((-1, hidden_dim), name="stem_tokens")(x)  # (B, N, D)


def _conv(images, channels, num_res_blocks, norm_groups, hidden_dim, dropout):
    x = keras.layers.Conv2D(channels[0], 3, padding="same", name="conv_in")(images)
    for level, filters in enumerate(channels):
        for block in range(num_res_blocks):
            x = ResBlock(filters, norm_groups, dropout=dropout, name=f"level{level}_res{block}")(x)
        if level < len(channels) - 1:
            x = Downsample(filters, name=f"level{level}_downsample")(x)
    x = GroupNorm(norm_groups, activation="silu", name="norm_out")(x)
    x = keras.layers.Conv2D(hidden_dim, 1, name="proj")(x)  # (B, h, w, D)
    sequence = keras.layers.Reshape((-1, hidden_dim), name="to_tokens")(x)  # (B, h*w, D)
    sequence = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(sequence)
    return sequence, ops.mean(sequence, axis=1)


def _check_image_shape(image_shape):
    if (
        not isinstance(image_shape, list | tuple)
        or len(image_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in image_shape)
    ):
        raise ValueError(
            "`image_shape` must be (height, width, channels) of positive integers. "
            f"Received: image_shape={image_shape!r}"
        )
    return tuple(image_shape)
