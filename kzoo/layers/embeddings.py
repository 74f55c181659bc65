"""Embeddings for diffusion denoisers: sinusoidal timesteps, patches, fixed 2-D positions.

- Sinusoidal timestep embedding: Vaswani et al. 2017 (https://arxiv.org/abs/1706.03762,
  Sec. 3.5) as used by DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239) and
  diffusers' `get_timestep_embedding` (`flip_sin_to_cos`, `downscale_freq_shift`).
  With `flip_sin_to_cos=True, freq_shift=0` it equals DiT's `TimestepEmbedder`.
- Patch embedding and fixed 2-D sin-cos positions: ViT (Dosovitskiy et al. 2020,
  https://arxiv.org/abs/2010.11929) and DiT (Peebles & Xie 2022,
  https://arxiv.org/abs/2212.09748), whose positions come from MAE's
  `get_2d_sincos_pos_embed` (He et al. 2021, https://arxiv.org/abs/2111.06377).
"""

import math

import keras
from keras import ops

from kzoo.layers.checks import check_positive_int


def timestep_embedding(timesteps, dim, max_period=10000.0, flip_sin_to_cos=True, freq_shift=0.0):
    """Sinusoidal embedding of (possibly fractional) timesteps, computed in float32.

    `freqs[i] = exp(-log(max_period) * i / (dim // 2 - freq_shift))`, and the
    embedding is `[cos(t * freqs), sin(t * freqs)]` (`[sin, cos]` when
    `flip_sin_to_cos=False`), zero-padded by one column when `dim` is odd.

    Args:
        timesteps: `(B,)` integer or float tensor.
        dim: embedding size.
        max_period: the longest period (the base of the geometric frequencies).
        flip_sin_to_cos: put the cosines first (diffusers' UNet2DModel and DiT).
        freq_shift: diffusers' `downscale_freq_shift` (0 for DiT and UNet2DModel).

    Returns:
        A float32 tensor `(B, dim)`.

    Example:
    ```python
    emb = timestep_embedding(keras.ops.array([0, 500, 999]), 64)  # (3, 64)
    ```
    """
    half = dim // 2
    exponent = -math.log(max_period) * ops.arange(half, dtype="float32") / (half - freq_shift)
    args = ops.cast(timesteps, "float32")[:, None] * ops.exp(exponent)[None, :]  # (B, half)
    first, second = (
        (ops.cos(args), ops.sin(args)) if flip_sin_to_cos else (ops.sin(args), ops.cos(args))
    )
    embedding = ops.concatenate([first, second], axis=-1)
    if dim % 2:
        embedding = ops.pad(embedding, [[0, 0], [0, 1]])
    return embedding


def sincos_position_table(embed_dim, grid_size, max_period=10000.0):
    """DiT/MAE fixed 2-D sin-cos positions for a `(height, width)` grid of tokens.

    Row-major token order (index `h * width + w`); the first half of the
    features encodes the column, the second half the row, each as
    `[sin(pos * omega), cos(pos * omega)]` with `omega_i = max_period ** (-i / (embed_dim / 4))`
    (MAE's `get_2d_sincos_pos_embed`, whose `meshgrid(grid_w, grid_h)` puts the
    column coordinate first).

    Args:
        embed_dim: feature size, divisible by 4.
        grid_size: `(height, width)` of the token grid (or one int for a square).
        max_period: the longest period.

    Returns:
        A float32 tensor `(height * width, embed_dim)`.
    """
    height, width = _pair(grid_size, "grid_size")
    if embed_dim % 4:
        raise ValueError(f"`embed_dim` must be divisible by 4. Received: embed_dim={embed_dim!r}")
    quarter = embed_dim // 4
    omega = 1.0 / max_period ** (ops.arange(quarter, dtype="float32") / quarter)  # (D/4,)
    rows = ops.repeat(ops.arange(height, dtype="float32"), width)  # (H*W,)
    cols = ops.tile(ops.arange(width, dtype="float32"), [height])  # (H*W,)

    def encode(pos):
        angles = pos[:, None] * omega[None, :]  # (H*W, D/4)
        return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)

    return ops.concatenate([encode(cols), encode(rows)], axis=-1)


@keras.saving.register_keras_serializable(package="kzoo")
class SinusoidalTimestepEmbedding(keras.layers.Layer):
    """Layer form of `timestep_embedding`: `(B,)` timesteps to `(B, dim)` features.

    Timesteps are never cast to the compute dtype (`autocast=False`): fractional
    timesteps keep float32 precision, and the sines are computed in float32 before
    the output is cast to the compute dtype.

    Args:
        dim: embedding size (a positive integer).
        max_period: the longest period.
        flip_sin_to_cos: cosines first (diffusers' UNet2DModel and DiT use True).
        freq_shift: diffusers' `downscale_freq_shift`.
        **kwargs: base layer arguments.

    Example:
    ```python
    layer = kzoo.layers.SinusoidalTimestepEmbedding(256)
    features = layer(keras.ops.array([0, 10, 999]))  # (3, 256)
    ```
    """

    def __init__(self, dim, max_period=10000.0, flip_sin_to_cos=True, freq_shift=0.0, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        check_positive_int("dim", dim)
        if dim // 2 - freq_shift <= 0:
            raise ValueError(
                f"`freq_shift` must be smaller than dim // 2 = {dim // 2}. "
                f"Received: freq_shift={freq_shift!r}"
            )
        if max_period <= 1:
            raise ValueError(f"`max_period` must be > 1. Received: max_period={max_period!r}")
        self.dim = dim
        self.max_period = max_period
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def call(self, timesteps):
        embedding = timestep_embedding(
            timesteps, self.dim, self.max_period, self.flip_sin_to_cos, self.freq_shift
        )
        return ops.cast(embedding, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "max_period": self.max_period,
                "flip_sin_to_cos": self.flip_sin_to_cos,
                "freq_shift": self.freq_shift,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class PatchEmbedding(keras.layers.Layer):
    """Non-overlapping `patch_size` patches of an NHWC map, linearly projected to tokens.

    A stride-`patch_size` convolution, flattened row-major to `(B, h * w, hidden_size)`.
    The kernel is Xavier-uniform over `(patch_size**2 * channels, hidden_size)`, as
    DiT initialises its `PatchEmbed` (a flattened linear layer), bias zero.

    Args:
        patch_size: patch side in pixels; must divide height and width.
        hidden_size: token width.
        **kwargs: base layer arguments.

    Example:
    ```python
    layer = kzoo.layers.PatchEmbedding(2, 384)
    tokens = layer(keras.random.normal((1, 32, 32, 4)))  # (1, 256, 384)
    ```
    """

    def __init__(self, patch_size, hidden_size, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("patch_size", patch_size)
        check_positive_int("hidden_size", hidden_size)
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.proj = None

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        for name, size in (("height", height), ("width", width)):
            if size is not None and size % self.patch_size:
                raise ValueError(
                    f"`patch_size`={self.patch_size} must divide the input {name}. "
                    f"Received: input_shape={tuple(input_shape)}"
                )
        fan_in = self.patch_size**2 * channels
        # Keras' glorot counts fan_out as k*k*filters; DiT's xavier on the flattened
        # kernel uses `hidden_size`. Rescale so the variance is 2 / (fan_in + hidden).
        scale = (fan_in + self.patch_size**2 * self.hidden_size) / (fan_in + self.hidden_size)
        self.proj = keras.layers.Conv2D(
            self.hidden_size,
            self.patch_size,
            strides=self.patch_size,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=scale, mode="fan_avg", distribution="uniform"
            ),
            dtype=self.dtype_policy,
            name="proj",
        )
        self.proj.build(input_shape)

    def call(self, inputs):
        patches = self.proj(inputs)  # (B, h, w, D)
        shape = ops.shape(patches)
        return ops.reshape(patches, (shape[0], shape[1] * shape[2], self.hidden_size))

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        tokens = None
        if height is not None and width is not None:
            tokens = (height // self.patch_size) * (width // self.patch_size)
        return (input_shape[0], tokens, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "hidden_size": self.hidden_size})
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class SinCosPositionEmbedding2D(keras.layers.Layer):
    """Adds DiT's fixed (non-trainable) 2-D sin-cos positions to `(B, h * w, D)` tokens.

    The table is a non-trainable weight, as DiT's `pos_embed` (a frozen
    parameter), so parameter counts match the paper's.

    Args:
        grid_size: `(height, width)` of the token grid (or one int for a square).
        max_period: the longest period.
        **kwargs: base layer arguments.

    Example:
    ```python
    layer = kzoo.layers.SinCosPositionEmbedding2D((16, 16))
    tokens = layer(keras.random.normal((2, 256, 384)))
    ```
    """

    def __init__(self, grid_size, max_period=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = _pair(grid_size, "grid_size")
        self.max_period = max_period

    def build(self, input_shape):
        tokens, embed_dim = input_shape[1], input_shape[2]
        height, width = self.grid_size
        if tokens is not None and tokens != height * width:
            raise ValueError(
                f"Expected {height * width} tokens for `grid_size`={self.grid_size}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        table = sincos_position_table(embed_dim, self.grid_size, self.max_period)
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(height * width, embed_dim),
            initializer=lambda shape, dtype=None: ops.cast(table, dtype or "float32"),
            trainable=False,
        )

    def call(self, inputs):
        return inputs + ops.cast(self.position_embedding, inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"grid_size": self.grid_size, "max_period": self.max_period})
        return config


def _pair(value, name):
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, list | tuple)
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a (height, width) pair of them. "
            f"Received: {name}={value!r}"
        )
    return tuple(pair)
