"""DDPM U-Net denoiser: `unet([x_t, t, labels])` predicts the noise (or any target) of x_t.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
https://arxiv.org/abs/2006.11239 (Appendix B: the PixelCNN++-style U-Net with
GroupNorm, a sinusoidal time embedding added in every residual block, and
self-attention at 16x16). The layout and parameter names follow diffusers'
`UNet2DModel` (down blocks of `num_res_blocks` resnets with stride-2 conv
downsampling except at the last level; a middle block res-attention-res; up
blocks of `num_res_blocks + 1` resnets, each consuming one skip connection, with
nearest-neighbour + conv upsampling; time embedding `sinusoidal(channels[0])`,
cosines first, then Linear-SiLU-Linear to `time_embedding_dim`). With the
defaults it has exactly the parameters of the `unet_train` peer in
benchmarks/WORKLOADS.md (8,952,067). One difference in computation, not in
parameters: by default `Downsample`'s stride-2 conv pads as TF's "same" (0
before, 1 after; as the original TF DDPM code), while `UNet2DModel` pads 1 on
each side (`downsample_padding="symmetric"` does that). `kzoo.convert.from_diffusers`
sets this and the other layout options (`norm_epsilon`, `attention_head_dim`,
`flip_sin_to_cos`, `freq_shift`) from a diffusers config; the converted model
gives PyTorch's outputs within 1.3e-6 on the test fixtures (tests/test_convert.py)
and 7.2e-6 at the 35.7M-parameter CIFAR-10 size (benchmarks/convert_parity.py).
"""

import keras
from keras import ops

from kzoo.layers import (
    CrossAttention,
    Downsample,
    GroupNorm,
    ResBlock,
    SinusoidalTimestepEmbedding,
    SpatialSelfAttention,
    Upsample,
)
from kzoo.layers._trainable import apply_trainable_flag
from kzoo.layers.checks import check_positive_int
from kzoo.presets import PresetMixin


@keras.saving.register_keras_serializable(package="kzoo")
class UNet(PresetMixin, keras.Model):
    """DDPM-style U-Net diffusion denoiser, a Functional model over `[x_t, t(, labels)]`.

    Inputs: `noisy_images` `(B, H, W, C)` float, `timesteps` `(B,)` int or float
    (train timesteps, fractional allowed), and, only when `num_classes` is set,
    `labels` `(B,)` int32 in `[0, num_classes]`, where the id `num_classes` is the
    null class for classifier-free guidance. Output: `(B, H, W, C)` float32 (the
    output conv stays float32 under mixed precision). Class conditioning adds a
    learned label embedding to the time embedding (diffusers' `num_class_embeds`).

    Args:
        image_shape: `(height, width, channels)`; height and width divisible by
            `2 ** (len(channels) - 1)`.
        channels: filters per resolution level, e.g. `(64, 128, 128, 128)`.
        num_res_blocks: residual blocks per down level (up levels use one more).
        attention_resolutions: feature-map heights (e.g. `(16,)`) at which every
            residual block is followed by self-attention; each must be a level's size.
        norm_groups: GroupNorm groups; must divide every entry of `channels`.
        time_embedding_dim: width of the time (and label) embedding.
        num_classes: `None` (unconditional) or the number of classes.
        dropout: dropout rate inside the residual blocks.
        num_heads: attention heads (must divide the channels where attention runs).
        mid_attention: self-attention between the two middle residual blocks.
        context_dim: None, or the width of text conditioning: the model then takes
            `[x_t, t, context, context_mask, pooled]` (see `context_inputs`), runs
            cross-attention to `context` after every self-attention, and adds a
            projection of `pooled` to the time embedding. Excludes `num_classes`.
        scale_shift_norm: inject the time/label embedding as a scale and shift
            after each residual block's second GroupNorm (ADM's AdaGN) instead of
            adding it before that norm; see `kzoo.layers.ResBlock`.
        norm_epsilon: epsilon of every GroupNorm (diffusers' `norm_eps`).
        attention_head_dim: None, or the channels per attention head: each
            attention site then has `its channels // attention_head_dim` heads, in
            place of `num_heads` (diffusers' `attention_head_dim`).
        downsample_padding: `"same"` or `"symmetric"`, the padding of the stride-2
            downsampling convs (see `kzoo.layers.Downsample`).
        flip_sin_to_cos: cosines first in the sinusoidal time embedding.
        freq_shift: diffusers' `freq_shift` of the time embedding
            (see `kzoo.layers.SinusoidalTimestepEmbedding`).
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    unet = kzoo.models.UNet(image_shape=(32, 32, 3), num_classes=10)
    eps = unet([x_t, t, labels])  # (B, 32, 32, 3) float32
    unet.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="mse")
    unet.fit([x_t, t, labels], noise, batch_size=32)
    text_unet = kzoo.models.UNet(image_shape=(32, 32, 3), context_dim=64)
    eps = text_unet([x_t, t, text["sequence"], token_ids != 0, text["pooled"]])
    ```
    """

    def __init__(
        self,
        image_shape=(32, 32, 3),
        channels=(64, 128, 128, 128),
        num_res_blocks=2,
        attention_resolutions=(16,),
        norm_groups=32,
        time_embedding_dim=256,
        num_classes=None,
        dropout=0.0,
        num_heads=1,
        mid_attention=True,
        context_dim=None,
        scale_shift_norm=False,
        norm_epsilon=1e-6,
        attention_head_dim=None,
        downsample_padding="same",
        flip_sin_to_cos=True,
        freq_shift=0,
        **kwargs,
    ):
        image_shape = _check_int_tuple(image_shape, "image_shape", length=3)
        _check_context_dim(context_dim, num_classes)
        channels = _check_int_tuple(channels, "channels")
        attention_resolutions = _check_int_tuple(
            attention_resolutions, "attention_resolutions", allow_empty=True
        )
        check_positive_int("num_res_blocks", num_res_blocks)
        check_positive_int("norm_groups", norm_groups)
        check_positive_int("time_embedding_dim", time_embedding_dim)
        check_positive_int("num_heads", num_heads)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        if attention_head_dim is not None:
            check_positive_int("attention_head_dim", attention_head_dim)
        if not isinstance(norm_epsilon, int | float) or not norm_epsilon > 0:
            raise ValueError(
                f"`norm_epsilon` must be a number > 0. Received: norm_epsilon={norm_epsilon!r}"
            )
        if not isinstance(scale_shift_norm, bool):
            raise ValueError(
                "`scale_shift_norm` must be True or False. "
                f"Received: scale_shift_norm={scale_shift_norm!r}"
            )
        if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        if any(c % norm_groups for c in channels):
            raise ValueError(
                f"`norm_groups` must divide every entry of `channels`={channels}. "
                f"Received: norm_groups={norm_groups!r}"
            )
        factor = 2 ** (len(channels) - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(
                f"`image_shape` height and width must be divisible by {factor} "
                f"(2 ** (len(channels) - 1)). Received: image_shape={image_shape}"
            )
        level_sizes = tuple(image_shape[0] // 2**level for level in range(len(channels)))
        unknown = [r for r in attention_resolutions if r not in level_sizes]
        if unknown:
            raise ValueError(
                f"`attention_resolutions` entries must be feature-map heights of the levels "
                f"{level_sizes}. Received: attention_resolutions={attention_resolutions}"
            )
        attended = [
            c for c, s in zip(channels, level_sizes, strict=True) if s in attention_resolutions
        ]
        if mid_attention:
            attended.append(channels[-1])
        if any(c % num_heads for c in attended):
            raise ValueError(
                f"`num_heads` must divide the channels of every attention level {attended}. "
                f"Received: num_heads={num_heads!r}"
            )
        if attention_head_dim is not None and any(c % attention_head_dim for c in attended):
            raise ValueError(
                "`attention_head_dim` must divide the channels of every attention level "
                f"{attended}. Received: attention_head_dim={attention_head_dim!r}"
            )

        # === Layers ===
        groups = norm_groups
        time_proj = SinusoidalTimestepEmbedding(
            channels[0], flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift, name="time_proj"
        )
        time_dense1 = keras.layers.Dense(time_embedding_dim, name="time_embedding_1")
        time_dense2 = keras.layers.Dense(time_embedding_dim, name="time_embedding_2")
        class_embedding = None
        if num_classes is not None:
            # One extra row: id `num_classes` is the null class of classifier-free guidance.
            # Rows start at unit scale, as torch's nn.Embedding in diffusers' and ADM's
            # U-Nets: Keras' default uniform(+-0.05) starts the label 8x weaker than
            # the time embedding (rms 0.03 vs 0.24), and the label was then left unused
            # (docs/ddpm_unet_shapes.md, diagnosis).
            class_embedding = keras.layers.Embedding(
                num_classes + 1,
                time_embedding_dim,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="class_embedding",
            )

        # === Functional Model ===
        images = keras.Input(image_shape, name="noisy_images")
        timesteps = keras.Input((), dtype="float32", name="timesteps")
        inputs = [images, timesteps]
        embedding = time_dense2(ops.silu(time_dense1(time_proj(timesteps))))  # (B, E)
        if class_embedding is not None:
            labels = keras.Input((), dtype="int32", name="labels")
            inputs.append(labels)
            embedding = embedding + class_embedding(labels)
        context = context_mask = None
        if context_dim is not None:
            context, context_mask, pooled = context_inputs(context_dim)
            inputs += [context, context_mask, pooled]
            # The pooled text vector joins the time embedding (as SDXL's pooled
            # text embedding); the tokens enter by cross-attention.
            embedding = embedding + keras.layers.Dense(time_embedding_dim, name="pooled_embedding")(
                pooled
            )

        def attention(x, name):
            heads = num_heads if attention_head_dim is None else x.shape[-1] // attention_head_dim
            x = SpatialSelfAttention(groups, heads, norm_epsilon, name=name)(x)
            if context is not None:
                # Text conditioning at every self-attention site (latent diffusion's
                # SpatialTransformer: self-attention, then cross-attention).
                x = CrossAttention(num_heads, name=name.replace("attn", "cross_attn"))(
                    x, context, context_mask=context_mask
                )
            return x

        x = keras.layers.Conv2D(channels[0], 3, padding="same", name="conv_in")(images)
        skips = [x]
        for level, filters in enumerate(channels):
            use_attention = level_sizes[level] in attention_resolutions
            for block in range(num_res_blocks):
                x = ResBlock(
                    filters,
                    groups,
                    dropout,
                    scale_shift_norm,
                    norm_epsilon,
                    name=f"down{level}_res{block}",
                )(x, embedding=embedding)
                if use_attention:
                    x = attention(x, f"down{level}_attn{block}")
                skips.append(x)
            if level < len(channels) - 1:
                x = Downsample(filters, downsample_padding, name=f"down{level}_downsample")(x)
                skips.append(x)

        x = ResBlock(
            channels[-1], groups, dropout, scale_shift_norm, norm_epsilon, name="mid_res0"
        )(x, embedding=embedding)
        if mid_attention:
            x = attention(x, "mid_attn")
        x = ResBlock(
            channels[-1], groups, dropout, scale_shift_norm, norm_epsilon, name="mid_res1"
        )(x, embedding=embedding)

        for level in reversed(range(len(channels))):
            filters = channels[level]
            use_attention = level_sizes[level] in attention_resolutions
            for block in range(num_res_blocks + 1):
                x = keras.layers.Concatenate(name=f"up{level}_skip{block}")([x, skips.pop()])
                x = ResBlock(
                    filters,
                    groups,
                    dropout,
                    scale_shift_norm,
                    norm_epsilon,
                    name=f"up{level}_res{block}",
                )(x, embedding=embedding)
                if use_attention:
                    x = attention(x, f"up{level}_attn{block}")
            if level > 0:
                x = Upsample(filters, name=f"up{level}_upsample")(x)

        x = GroupNorm(groups, norm_epsilon, activation="silu", name="norm_out")(x)
        # float32 output: the eps-MSE is computed at full precision under mixed_float16.
        outputs = keras.layers.Conv2D(
            image_shape[-1], 3, padding="same", dtype="float32", name="conv_out"
        )(x)
        kwargs.setdefault("name", "unet")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        apply_trainable_flag(self)

        # === Config ===
        self.image_shape = image_shape
        self.channels = channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.norm_groups = norm_groups
        self.time_embedding_dim = time_embedding_dim
        self.num_classes = num_classes
        self.dropout = dropout
        self.num_heads = num_heads
        self.mid_attention = mid_attention
        self.context_dim = context_dim
        self.scale_shift_norm = scale_shift_norm
        self.norm_epsilon = norm_epsilon
        self.attention_head_dim = attention_head_dim
        self.downsample_padding = downsample_padding
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def __call__(self, inputs, *args, **kwargs):
        inputs = standardize_denoiser_inputs(
            inputs, self.num_classes, self.name, context_dim=self.context_dim
        )
        return super().__call__(inputs, *args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": self.image_shape,
            "channels": self.channels,
            "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": self.attention_resolutions,
            "norm_groups": self.norm_groups,
            "time_embedding_dim": self.time_embedding_dim,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "num_heads": self.num_heads,
            "mid_attention": self.mid_attention,
            **({} if self.context_dim is None else {"context_dim": self.context_dim}),
            # Written only when set, so configs of earlier models stay as they were.
            **({"scale_shift_norm": True} if self.scale_shift_norm else {}),
            **{
                key: getattr(self, key)
                for key, default in _LAYOUT_DEFAULTS.items()
                if getattr(self, key) != default
            },
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# Layout options of ported checkpoints (kzoo.convert), written to the config only when
# they differ from these defaults, so configs of earlier models stay as they were.
_LAYOUT_DEFAULTS = {
    "norm_epsilon": 1e-6,
    "attention_head_dim": None,
    "downsample_padding": "same",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

TEXT_INPUTS = ("context", "context_mask", "pooled")


def context_inputs(context_dim):
    """The text-conditioning inputs of a denoiser built with `context_dim`.

    `context` `(B, T, context_dim)` float: the text encoder's token states;
    `context_mask` `(B, T)` int32, nonzero where the token is real (padding is
    never attended; an all-padding row, the empty caption, gets zero attention);
    `pooled` `(B, context_dim)` float: the pooled text vector.
    """
    return (
        keras.Input((None, context_dim), name="context"),
        keras.Input((None,), dtype="int32", name="context_mask"),
        keras.Input((context_dim,), name="pooled"),
    )


def _check_context_dim(context_dim, num_classes):
    if context_dim is None:
        return
    check_positive_int("context_dim", context_dim)
    if num_classes is not None:
        raise ValueError(
            "A denoiser is conditioned on classes or on text, not both: pass "
            f"num_classes=None with context_dim={context_dim}. "
            f"Received: num_classes={num_classes!r}"
        )


def standardize_denoiser_inputs(inputs, num_classes, model_name, context_dim=None):
    """Check `[x_t, t(, labels)]` against `num_classes`; a trailing `None` label is dropped.

    Keras' own error for a wrong number of inputs does not say why; this one
    names `labels` and `num_classes`. Dict inputs (keyed by input name) pass through.
    A text-conditioned denoiser (`context_dim` set) takes
    `[x_t, t, context, context_mask, pooled]` (see `context_inputs`).
    """
    if context_dim is not None and not isinstance(inputs, dict):
        if (
            not isinstance(inputs, list | tuple)
            or len(inputs) != 5
            or any(i is None for i in inputs)
        ):
            count = len(inputs) if isinstance(inputs, list | tuple) else type(inputs).__name__
            raise ValueError(
                f"{model_name} was built with context_dim={context_dim} (text-conditioned) and "
                "takes [x_t, timesteps, context, context_mask, pooled]. "
                f"Received: {count} inputs"
            )
        return list(inputs)
    if isinstance(inputs, dict):
        if "labels" in inputs and num_classes is None:
            raise ValueError(
                f"`labels` were given to {model_name}, which was built with num_classes=None "
                "(unconditional). Build it with `num_classes` to condition on labels."
            )
        return inputs
    if not isinstance(inputs, list | tuple):
        raise ValueError(
            f"{model_name} expects a list [x_t, timesteps] or [x_t, timesteps, labels]. "
            f"Received: inputs of type {type(inputs).__name__}"
        )
    inputs = list(inputs)
    if len(inputs) == 3 and inputs[2] is None and num_classes is None:
        inputs = inputs[:2]
    if num_classes is None and len(inputs) != 2:
        raise ValueError(
            f"{model_name} was built with num_classes=None and takes [x_t, timesteps]; "
            f"`labels` are not accepted. Received: {len(inputs)} inputs"
        )
    if num_classes is not None and (len(inputs) != 3 or inputs[2] is None):
        raise ValueError(
            f"{model_name} was built with num_classes={num_classes} and takes "
            f"[x_t, timesteps, labels] (`labels` id {num_classes} is the null class). "
            f"Received: {len(inputs)} inputs" + (" with labels=None" if len(inputs) == 3 else "")
        )
    return inputs


def _check_int_tuple(value, name, length=None, allow_empty=False):
    """`value` as a tuple of positive ints (optionally of a fixed length), else ValueError."""
    ok = isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
    ok = ok and (allow_empty or len(value) > 0) and (length is None or len(value) == length)
    if not ok:
        what = (
            f"{length} positive integers" if length else "a non-empty sequence of positive integers"
        )
        if allow_empty:
            what = "a sequence of positive integers"
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return tuple(value)
