"""VQ-VAE: a conv autoencoder with a vector-quantized bottleneck.

van den Oord et al. 2017, https://arxiv.org/abs/1711.00937. The encoder and
decoder follow the LDM/VQGAN autoencoder layout (Esser et al. 2021,
https://arxiv.org/abs/2012.09841) used by diffusers' `VQModel`: residual blocks
per level, stride-2 downsampling, a middle block with self-attention, and 1x1
convs around the quantizer.
"""

import keras
import numpy as np
from keras import ops

from kzoo.layers import (
    Downsample,
    GroupNorm,
    ResBlock,
    SpatialSelfAttention,
    Upsample,
    VectorQuantizer,
)
from kzoo.task import Task


@keras.saving.register_keras_serializable(package="kzoo")
class VQVAE(Task):
    """Vector-quantized autoencoder that trains with plain `fit`.

    `model(images)` returns the reconstruction (straight-through through the
    quantizer) and adds the codebook and commitment losses. Images are float32
    NHWC in [-1, 1]. The latent grid is the image size divided by
    `2 ** (len(channels) - 1)`.

    `compile()` defaults to a mean-squared reconstruction loss, and `fit` accepts
    a dataset of images alone (the target is the input) or of `(x, x)` pairs.

    Args:
        image_shape: `(height, width, channels)` of the images.
        codebook_size: number of codes.
        embedding_dim: size of each code vector (latent channels).
        channels: filters per resolution level, e.g. `(64, 128)`.
        num_res_blocks: residual blocks per level (the decoder uses one more).
        norm_groups: GroupNorm groups; must divide every entry of `channels`.
        commitment_cost: weight of the commitment loss.
        decay: `None` (learned codebook) or an EMA decay in (0, 1).
        attention: self-attention in the middle blocks of encoder and decoder.
        quantizer_options: extra `kzoo.layers.VectorQuantizer` arguments, e.g.
            `{"kmeans_init": True, "dead_code_threshold": 1.0, "seed": 0}`.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    model = kzoo.models.VQVAE(image_shape=(32, 32, 3), codebook_size=512)
    model.compile(optimizer=keras.optimizers.AdamW(2e-4))
    model.fit(kzoo.data.load("kzoo_shapes", batch_size=32), epochs=1)
    codes = model.encode(images)          # (B, 16, 16) int32
    reconstruction = model.decode(codes)  # (B, 32, 32, 3)
    ```
    """

    capabilities = frozenset({"reconstruct"})

    def __init__(
        self,
        image_shape=(32, 32, 3),
        codebook_size=512,
        embedding_dim=64,
        channels=(64, 128),
        num_res_blocks=1,
        norm_groups=32,
        commitment_cost=0.25,
        decay=None,
        attention=True,
        quantizer_options=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "vqvae")
        super().__init__(**kwargs)
        image_shape = _check_image_shape(image_shape)
        channels = tuple(channels) if isinstance(channels, list | tuple) else channels
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(
                f"`channels` must be a non-empty sequence of positive integers. "
                f"Received: channels={channels!r}"
            )
        if (
            isinstance(num_res_blocks, bool)
            or not isinstance(num_res_blocks, int)
            or (num_res_blocks < 1)
        ):
            raise ValueError(
                f"`num_res_blocks` must be a positive integer. "
                f"Received: num_res_blocks={num_res_blocks!r}"
            )
        bad = [c for c in channels if c % norm_groups]
        if bad:
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
        self.image_shape = image_shape
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.channels = channels
        self.num_res_blocks = num_res_blocks
        self.norm_groups = norm_groups
        self.commitment_cost = commitment_cost
        self.decay = decay
        self.attention = attention
        self.quantizer_options = dict(quantizer_options or {})
        self.latent_shape = (image_shape[0] // factor, image_shape[1] // factor, embedding_dim)

        # === Layers ===
        self.quantizer = VectorQuantizer(
            codebook_size,
            embedding_dim,
            commitment_cost=commitment_cost,
            decay=decay,
            name="vq",
            **self.quantizer_options,
        )
        self.encoder = self._build_encoder()
        self.decoder = self._build_decoder()
        self.vq_loss_tracker = keras.metrics.Mean(name="vq_loss")
        # Encoder and decoder are built functional models; building the quantizer
        # completes the model, so weights exist before the first call.
        self.quantizer.build((None, *self.latent_shape))
        self.built = True

    # === Functional sub-models ===
    def _build_encoder(self):
        groups = self.norm_groups
        images = keras.Input(self.image_shape, name="images")
        x = keras.layers.Conv2D(self.channels[0], 3, padding="same", name="conv_in")(images)
        for level, filters in enumerate(self.channels):
            for block in range(self.num_res_blocks):
                x = ResBlock(filters, groups, name=f"down{level}_res{block}")(x)
            if level < len(self.channels) - 1:
                x = Downsample(filters, name=f"down{level}_downsample")(x)
        x = self._middle(x, "mid")
        x = GroupNorm(groups, activation="silu", name="norm_out")(x)
        x = keras.layers.Conv2D(self.embedding_dim, 3, padding="same", name="conv_out")(x)
        latents = keras.layers.Conv2D(self.embedding_dim, 1, name="quant_conv")(x)
        return keras.Model(images, latents, name="encoder")

    def _build_decoder(self):
        groups = self.norm_groups
        latents = keras.Input(self.latent_shape, name="latents")
        x = keras.layers.Conv2D(self.embedding_dim, 1, name="post_quant_conv")(latents)
        x = keras.layers.Conv2D(self.channels[-1], 3, padding="same", name="conv_in")(x)
        x = self._middle(x, "mid")
        for level, filters in reversed(list(enumerate(self.channels))):
            for block in range(self.num_res_blocks + 1):
                x = ResBlock(filters, groups, name=f"up{level}_res{block}")(x)
            if level > 0:
                x = Upsample(filters, name=f"up{level}_upsample")(x)
        x = GroupNorm(groups, activation="silu", name="norm_out")(x)
        # The output layer stays float32 so the reconstruction loss is computed
        # at full precision under mixed_float16.
        images = keras.layers.Conv2D(
            self.image_shape[-1], 3, padding="same", dtype="float32", name="conv_out"
        )(x)
        return keras.Model(latents, images, name="decoder")

    def _middle(self, x, prefix):
        filters = x.shape[-1]
        x = ResBlock(filters, self.norm_groups, name=f"{prefix}_res0")(x)
        if self.attention:
            x = SpatialSelfAttention(self.norm_groups, name=f"{prefix}_attn")(x)
        return ResBlock(filters, self.norm_groups, name=f"{prefix}_res1")(x)

    # === Forward ===
    def call(self, images, training=None):
        self._check_images(images)
        latents = self.encoder(images, training=training)
        quantized = self.quantizer(latents, training=training)
        return self.decoder(quantized, training=training)

    def encode(self, images):
        """Code indices of `images`: int32 `(B, h, w)` on the latent grid."""
        self._check_images(images)
        return self.quantizer.get_code_indices(self.encoder(images, training=False))

    def decode(self, indices):
        """Images `(B, H, W, C)` from int32 code indices `(B, h, w)`."""
        self._check_indices(indices)
        vectors = self.quantizer.lookup(indices)
        return self.decoder(vectors, training=False)

    # === Training ===
    def compile(self, optimizer="adam", loss="mse", **kwargs):
        """`keras.Model.compile` with a mean-squared reconstruction loss by default."""
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # A dataset of images alone gives y=None: the target is the input.
        target = x if y is None else y
        if self.losses:
            self.vq_loss_tracker.update_state(ops.sum(self.losses))
        return super().compute_loss(
            x=x, y=target, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    # === Export ===
    def export_endpoints(self):
        """Serving signatures: reconstruction (default), `encode` and `decode`."""
        image_spec = keras.InputSpec(
            shape=(None, *self.image_shape), dtype="float32", name="images"
        )
        index_spec = keras.InputSpec(
            shape=(None, *self.latent_shape[:2]), dtype="int32", name="indices"
        )
        return {
            "serving_default": (
                lambda images: {"reconstruction": self(images, training=False)},
                [image_spec],
            ),
            "encode": (lambda images: {"indices": self.encode(images)}, [image_spec]),
            "decode": (lambda indices: {"images": self.decode(indices)}, [index_spec]),
        }

    def export_png_endpoints(self):
        """Encoded-image twins (SavedModel only, `kzoo.export.image_bytes`).

        `reconstruct_png`: `image_bytes` (PNG/JPEG, any size) -> `png_bytes`; `encode_png`:
        `image_bytes` -> `indices`.
        """
        return {"reconstruct_png": "serving_default", "encode_png": "encode"}

    def export_parity_choices(self):
        """The nearest-code choices in the endpoints, so export parity judges near ties.

        A trained codebook has near-tied codes, and an export whose floats differ from
        Keras's within its tolerance (float16 LiteRT stores the codebook in float16) may
        pick the other code of a tie. `encode` picks each latent's nearest code: where
        an export picks another, parity accepts it only as a near tie
        (`kzoo.export.parity._near_ties`). `serving_default` decodes the codes `encode`
        picks: where the export's codes differ from Keras's by near ties only, its
        reconstruction is compared with Keras's `decode` of the export's codes, under
        the same strict limit as `decode`.
        """
        return {
            "encode": {
                "indices": {
                    "search": lambda images: self.quantizer.search_vectors(
                        self.encoder(images, training=False)
                    )
                }
            },
            "serving_default": {
                "reconstruction": {"codes": ("encode", "indices"), "decode": ("decode", "images")}
            },
        }

    # === Input checks ===
    def _check_images(self, images):
        shape = tuple(images.shape)
        if len(shape) != 4 or any(
            want is not None and got is not None and want != got
            for want, got in zip(self.image_shape, shape[1:], strict=True)
        ):
            raise ValueError(
                f"Expected images of shape (batch, {', '.join(map(str, self.image_shape))}). "
                f"Received: images.shape={shape}"
            )

    def _check_indices(self, indices):
        shape = tuple(indices.shape)
        if len(shape) != 3 or tuple(shape[1:]) != tuple(self.latent_shape[:2]):
            raise ValueError(
                f"Expected code indices of shape (batch, {self.latent_shape[0]}, "
                f"{self.latent_shape[1]}). Received: indices.shape={shape}"
            )
        values = _concrete(indices)
        if (
            values is not None
            and values.size
            and (values.min() < 0 or values.max() >= self.codebook_size)
        ):
            raise ValueError(
                f"Code indices must lie in [0, {self.codebook_size}) (`codebook_size`). "
                f"Received: indices with min={values.min()} and max={values.max()}"
            )

    # === Config ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": self.image_shape,
            "codebook_size": self.codebook_size,
            "embedding_dim": self.embedding_dim,
            "channels": self.channels,
            "num_res_blocks": self.num_res_blocks,
            "norm_groups": self.norm_groups,
            "commitment_cost": self.commitment_cost,
            "decay": self.decay,
            "attention": self.attention,
            "quantizer_options": self.quantizer_options,
        }


def _check_image_shape(image_shape):
    if (
        not isinstance(image_shape, list | tuple)
        or len(image_shape) != 3
        or not all(isinstance(d, int) and d > 0 for d in image_shape)
    ):
        raise ValueError(
            "`image_shape` must be (height, width, channels) of positive integers. "
            f"Received: image_shape={image_shape!r}"
        )
    return tuple(image_shape)


def _concrete(tensor):
    """The tensor's values as numpy when they are known (eager), else None."""
    if isinstance(tensor, np.ndarray):
        return tensor
    try:
        return np.asarray(ops.convert_to_numpy(tensor))
    except Exception:  # a symbolic tensor inside a traced function
        return None
