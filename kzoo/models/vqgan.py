"""VQGAN: a VQ-VAE trained with a perceptual loss and a PatchGAN discriminator.

Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis"
(https://arxiv.org/abs/2012.09841): Eq. 4-6 (the VQ losses, rec + perceptual
loss as `L_rec`), Eq. 7 (the adaptive weight
`lambda = ||grad_GL[L_rec]|| / (||grad_GL[L_GAN]|| + 1e-4)` at the last decoder
layer `GL`) and the hinge loss of taming-transformers' `VQLPIPSWithDiscriminator`
(Lim & Ye 2017, https://arxiv.org/abs/1705.02894). The discriminator is the
PatchGAN of pix2pix (Isola et al. 2017, https://arxiv.org/abs/1611.07004), with
GroupNorm instead of BatchNorm (no batch statistics to keep in step across the
two optimizers). The perceptual loss is LPIPS-style (`kzoo.models.perceptual`).
"""

import keras
from keras import ops

from kzoo.layers import GroupNorm
from kzoo.models.perceptual import ShapesPerceptual, load_or_train_shapes_perceptual
from kzoo.models.perceptual import perceptual_distance as _perceptual_distance
from kzoo.models.vqvae import VQVAE, _check_image_shape
from kzoo.presets import PresetMixin


def _check_channels(channels, name):
    channels = tuple(channels) if isinstance(channels, list | tuple) else channels
    if not channels or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels
    ):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive integers. "
            f"Received: {name}={channels!r}"
        )
    return channels


def _check_non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="kzoo")
class Discriminator(PresetMixin, keras.Model):
    """PatchGAN discriminator: strided 4x4 convs giving one real/fake logit per patch.

    The first conv (stride 2) has no norm; the middle ones are stride 2 with
    GroupNorm; the last of `channels` is stride 1, then a 1-channel 4x4 conv gives
    the float32 logits `(B, H / 2 ** (len(channels) - 1), W / ..., 1)`.
    LeakyReLU(0.2) everywhere, as in pix2pix and taming's `NLayerDiscriminator`.

    Args:
        image_shape: `(height, width, channels)` the discriminator accepts; other
            sizes raise a `ValueError`.
        channels: filters of each conv, e.g. `(64, 128, 256)`.
        norm_groups: GroupNorm groups; must divide `channels[1:]`.
        **kwargs: base `keras.Model` arguments.

    Example:
    ```python
    disc = kzoo.models.Discriminator((32, 32, 3), channels=(64, 128))
    logits = disc(images)  # (B, 16, 16, 1)
    ```
    """

    def __init__(self, image_shape=(32, 32, 3), channels=(64, 128, 256), norm_groups=32, **kwargs):
        kwargs.setdefault("name", "discriminator")
        super().__init__(**kwargs)
        image_shape = _check_image_shape(image_shape)
        channels = _check_channels(channels, "channels")
        bad = [c for c in channels[1:] if c % norm_groups]
        if bad:
            raise ValueError(
                f"`norm_groups` must divide `channels[1:]`={channels[1:]}. "
                f"Received: norm_groups={norm_groups!r}"
            )
        factor = 2 ** (len(channels) - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(
                f"`image_shape` height and width must be divisible by {factor} "
                f"(2 ** (len(channels) - 1)). Received: image_shape={image_shape}"
            )
        self.image_shape = image_shape
        self.channels = channels
        self.norm_groups = norm_groups

        # === Functional Model ===
        images = keras.Input(image_shape, name="images")
        x = images
        last = len(channels) - 1
        for index, filters in enumerate(channels):
            stride = 1 if index == last and index > 0 else 2
            x = keras.layers.Conv2D(
                filters, 4, strides=stride, padding="same", use_bias=index == 0, name=f"conv{index}"
            )(x)
            if index > 0:
                x = GroupNorm(norm_groups, name=f"norm{index}")(x)
            x = keras.layers.LeakyReLU(0.2, name=f"lrelu{index}")(x)
        # Logits stay float32 for the hinge losses under mixed precision.
        logits = keras.layers.Conv2D(1, 4, padding="same", dtype="float32", name="logits")(x)
        self.network = keras.Model(images, logits, name="patchgan")
        self.built = True

    def call(self, images, training=None):
        shape = tuple(images.shape)
        if len(shape) != 4 or any(
            want is not None and got is not None and want != got
            for want, got in zip(self.image_shape, shape[1:], strict=True)
        ):
            raise ValueError(
                f"This discriminator was built for images of shape (batch, "
                f"{', '.join(map(str, self.image_shape))}). Received: images.shape={shape}"
            )
        return self.network(images, training=training)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": self.image_shape,
            "channels": self.channels,
            "norm_groups": self.norm_groups,
        }


def hinge_discriminator_loss(logits_real, logits_fake):
    """`0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))))` (taming `hinge_d_loss`)."""
    return 0.5 * (ops.mean(ops.relu(1.0 - logits_real)) + ops.mean(ops.relu(1.0 + logits_fake)))


def adaptive_weight(rec_grad, gan_grad, max_weight=1e4):
    """Eq. 7 of Esser et al. 2021: `||rec_grad|| / (||gan_grad|| + 1e-4)`, clipped to [0, max]."""
    rec_norm = ops.sqrt(ops.sum(ops.square(ops.cast(rec_grad, "float32"))))
    gan_norm = ops.sqrt(ops.sum(ops.square(ops.cast(gan_grad, "float32"))))
    weight = rec_norm / (gan_norm + 1e-4)
    # Non-finite gradients (an overflowed loss-scaled step) give weight 0; the
    # LossScaleOptimizer skips that step anyway.
    weight = ops.where(ops.isfinite(weight), ops.clip(weight, 0.0, max_weight), 0.0)
    return ops.stop_gradient(weight)


@keras.saving.register_keras_serializable(package="kzoo")
class VQGAN(VQVAE):
    """VQ-VAE with perceptual and adversarial losses, trained by `fit` with two optimizers.

    Encoder, quantizer, decoder (self-attention in the lowest-resolution middle
    blocks), `encode`, `decode` and `export_endpoints` are those of
    `kzoo.models.VQVAE`. Training adds an LPIPS-style perceptual loss and a
    PatchGAN discriminator with the hinge loss; the generator's adversarial loss
    is weighted by `disc_weight * lambda`, `lambda` the adaptive weight of Eq. 7
    at the decoder's output conv, and only once the generator optimizer has made
    `disc_start_step` steps (before, the discriminator is not updated and `d_loss`
    is 0). The progress bar shows `loss` (generator total), `rec_loss` (L1),
    `perceptual_loss`, `vq_loss`, `g_loss`, `d_loss`, `disc_weight`
    (`disc_weight * lambda`) and the codebook metrics. Under `mixed_float16` both
    optimizers are `LossScaleOptimizer`s and every logged loss is unscaled.

    Args:
        image_shape, codebook_size, embedding_dim, channels, num_res_blocks,
        norm_groups, commitment_cost, decay, attention, quantizer_options: as in
            `kzoo.models.VQVAE`.
        disc_channels: the `Discriminator`'s conv filters.
        disc_start_step: generator steps before the adversarial losses start.
        disc_warmup_steps: steps over which the generator's adversarial weight
            ramps linearly from 0 to full after `disc_start_step`, while the
            discriminator trains at full rate (0: a step switch, taming's
            behaviour). A switch onto a still-random discriminator can wreck a
            well-trained autoencoder (measured on `vqgan_shapes`: L1 0.05 -> 1.05
            within 200 steps); the ramp lets the discriminator learn first.
        disc_weight: weight of the adaptive-weighted generator loss.
        perceptual_weight: weight of the perceptual loss (0 disables it and no
            perceptual network is built).
        perceptual_model: a Keras model mapping images to a list of feature maps
            (kept frozen), or None for the default `ShapesPerceptual` trained on
            `kzoo_shapes` and cached (`load_or_train_shapes_perceptual`).
        **kwargs: base `keras.Model` arguments.

    Example:
    ```python
    model = kzoo.models.VQGAN(image_shape=(32, 32, 3), codebook_size=256, disc_start_step=500)
    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
                  discriminator_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    model.fit(kzoo.data.load("kzoo_shapes", batch_size=32), epochs=1)
    ```
    """

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
        disc_channels=(64, 128),
        disc_start_step=0,
        disc_weight=0.8,
        perceptual_weight=1.0,
        perceptual_model=None,
        disc_warmup_steps=0,
        **kwargs,
    ):
        kwargs.setdefault("name", "vqgan")
        super().__init__(
            image_shape=image_shape,
            codebook_size=codebook_size,
            embedding_dim=embedding_dim,
            channels=channels,
            num_res_blocks=num_res_blocks,
            norm_groups=norm_groups,
            commitment_cost=commitment_cost,
            decay=decay,
            attention=attention,
            quantizer_options=quantizer_options,
            **kwargs,
        )
        for name, value in (
            ("disc_start_step", disc_start_step),
            ("disc_warmup_steps", disc_warmup_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
        _check_non_negative(disc_weight, "disc_weight")
        _check_non_negative(perceptual_weight, "perceptual_weight")
        if isinstance(perceptual_model, dict):
            perceptual_model = keras.saving.deserialize_keras_object(perceptual_model)
        if perceptual_model is not None and not callable(perceptual_model):
            raise TypeError(
                "`perceptual_model` must be a Keras model mapping images to a list of feature "
                f"maps, or None. Received: perceptual_model={perceptual_model!r}"
            )
        self.disc_channels = _check_channels(disc_channels, "disc_channels")
        self.disc_start_step = disc_start_step
        self.disc_warmup_steps = disc_warmup_steps
        self.disc_weight = disc_weight
        self.perceptual_weight = perceptual_weight

        # === Layers ===
        self.discriminator = Discriminator(
            self.image_shape, self.disc_channels, norm_groups, name="discriminator"
        )
        if perceptual_weight > 0 and perceptual_model is None:
            if self.image_shape[0] != self.image_shape[1] or self.image_shape[2] != 3:
                raise ValueError(
                    "The default perceptual network needs square RGB images; pass "
                    "`perceptual_model` or `perceptual_weight=0`. "
                    f"Received: image_shape={self.image_shape}"
                )
            perceptual_model = load_or_train_shapes_perceptual(image_size=self.image_shape[0])
        self.perceptual_model = perceptual_model if perceptual_weight > 0 else None
        if self.perceptual_model is not None:
            self.perceptual_model.trainable = False

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.rec_loss_tracker = keras.metrics.Mean(name="rec_loss")
        self.perceptual_loss_tracker = keras.metrics.Mean(name="perceptual_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.disc_weight_tracker = keras.metrics.Mean(name="disc_weight")

    # === Variables ===
    @property
    def generator_variables(self):
        """Trainable variables of encoder, quantizer and decoder (the generator optimizer's)."""
        return [
            *self.encoder.trainable_variables,
            *self.quantizer.trainable_variables,
            *self.decoder.trainable_variables,
        ]

    @property
    def last_layer_kernel(self):
        """The decoder's output conv kernel, where Eq. 7's gradient norms are taken."""
        return self.decoder.get_layer("conv_out").kernel

    # === Losses ===
    def perceptual_loss(self, images, reconstructions):
        """Mean perceptual distance of the batch (0 without a perceptual network)."""
        if self.perceptual_model is None:
            return ops.zeros((), "float32")
        return ops.mean(
            _perceptual_distance(
                self.perceptual_model(images, training=False),
                self.perceptual_model(reconstructions, training=False),
            )
        )

    # === Training ===
    def compile(self, optimizer="adam", discriminator_optimizer=None, **kwargs):
        """`keras.Model.compile` with a second optimizer for the discriminator.

        Args:
            optimizer: the generator (encoder, quantizer, decoder) optimizer.
            discriminator_optimizer: the discriminator's; default a fresh copy of
                `optimizer`'s config.
            **kwargs: other `compile` arguments (`jit_compile`, ...). `loss` is not
                accepted: the losses are fixed by the model.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "VQGAN computes its own losses; do not pass `loss`. "
                f"Received: loss={kwargs['loss']!r}"
            )
        kwargs.pop("loss", None)
        optimizer = keras.optimizers.get(optimizer)
        if discriminator_optimizer is None:
            discriminator_optimizer = optimizer.__class__.from_config(optimizer.get_config())
        discriminator_optimizer = keras.optimizers.get(discriminator_optimizer)
        super(VQVAE, self).compile(optimizer=optimizer, loss=None, **kwargs)
        self._compile_config.config["discriminator_optimizer"] = discriminator_optimizer
        if self.dtype_policy.name == "mixed_float16" and not isinstance(
            discriminator_optimizer, keras.optimizers.LossScaleOptimizer
        ):
            discriminator_optimizer = keras.optimizers.LossScaleOptimizer(
                discriminator_optimizer, name="discriminator_loss_scale_optimizer"
            )
        self.discriminator_optimizer = discriminator_optimizer
        self.build_optimizers()

    def build_optimizers(self):
        # Each optimizer on its own variables, so `fit` does not build the generator
        # optimizer on every trainable variable (the discriminator's too). Called
        # once both exist (the base `compile` runs before the second is set).
        if getattr(self, "discriminator_optimizer", None) is None:
            return
        if not self.optimizer.built:
            self.optimizer.build(self.generator_variables)
        if not self.discriminator_optimizer.built:
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def train_step(self, data):
        import tensorflow as tf  # train_step is the TensorFlow backend's (GradientTape)

        images = data[0] if isinstance(data, tuple | list) else data
        images = ops.cast(images, "float32")
        self._check_images(images)
        steps_since_start = ops.cast(self.optimizer.iterations - self.disc_start_step, "float32")
        disc_active = ops.cast(ops.greater_equal(steps_since_start, 0.0), "float32")
        if self.disc_warmup_steps > 0:
            adversarial_ramp = ops.clip(
                (steps_since_start + 1.0) / self.disc_warmup_steps, 0.0, 1.0
            )
        else:
            adversarial_ramp = disc_active
        kernel = self.last_layer_kernel
        with tf.GradientTape(persistent=True) as tape:
            latents = self.encoder(images, training=True)
            quantized = self.quantizer(latents, training=True)
            vq_loss = ops.cast(ops.sum(self.quantizer.losses), "float32")
            reconstructions = ops.cast(self.decoder(quantized, training=True), "float32")
            rec_loss = ops.mean(ops.abs(images - reconstructions))
            perceptual_loss = self.perceptual_loss(images, reconstructions)
            nll_loss = rec_loss + self.perceptual_weight * perceptual_loss
            logits_fake = ops.cast(self.discriminator(reconstructions, training=True), "float32")
            logits_real = ops.cast(self.discriminator(images, training=True), "float32")
            g_loss = -ops.mean(logits_fake)
            # Gradients of the scaled losses avoid float16 underflow in the
            # discriminator; the ratio of Eq. 7 does not depend on the scale.
            scaled_nll_loss = self.optimizer.scale_loss(nll_loss)
            scaled_g_loss = self.optimizer.scale_loss(g_loss)
            with tape.stop_recording():
                scale = ops.cast(self.optimizer.scale_loss(ops.ones((), "float32")), "float32")
                rec_grad = tape.gradient(scaled_nll_loss, kernel) / scale
                gan_grad = tape.gradient(scaled_g_loss, kernel) / scale
                weight = self.disc_weight * adaptive_weight(rec_grad, gan_grad)
            loss = nll_loss + vq_loss + adversarial_ramp * weight * g_loss
            d_loss = disc_active * hinge_discriminator_loss(logits_real, logits_fake)
            scaled_loss = self.optimizer.scale_loss(loss)
            scaled_d_loss = self.discriminator_optimizer.scale_loss(d_loss)

        generator_variables = self.generator_variables
        gradients = tape.gradient(scaled_loss, generator_variables)
        self.optimizer.apply_gradients(zip(gradients, generator_variables, strict=True))
        disc_variables = self.discriminator.trainable_variables
        disc_gradients = tape.gradient(scaled_d_loss, disc_variables)
        del tape

        def update_discriminator():
            self.discriminator_optimizer.apply_gradients(
                zip(disc_gradients, disc_variables, strict=True)
            )
            return ops.zeros(())

        # Before the start step the discriminator is not touched at all (weight
        # decay and Adam's moments included), not merely given zero gradients.
        ops.cond(disc_active > 0, update_discriminator, lambda: ops.zeros(()))

        self.loss_tracker.update_state(loss)
        self.rec_loss_tracker.update_state(rec_loss)
        self.perceptual_loss_tracker.update_state(perceptual_loss)
        self.vq_loss_tracker.update_state(vq_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.d_loss_tracker.update_state(d_loss)
        self.disc_weight_tracker.update_state(weight)
        return self._logs()

    def test_step(self, data):
        images = ops.cast(data[0] if isinstance(data, tuple | list) else data, "float32")
        self._check_images(images)
        latents = self.encoder(images, training=False)
        quantized = self.quantizer(latents, training=False)
        vq_loss = ops.cast(ops.sum(self.quantizer.losses), "float32")
        reconstructions = ops.cast(self.decoder(quantized, training=False), "float32")
        rec_loss = ops.mean(ops.abs(images - reconstructions))
        perceptual_loss = self.perceptual_loss(images, reconstructions)
        self.loss_tracker.update_state(
            rec_loss + self.perceptual_weight * perceptual_loss + vq_loss
        )
        self.rec_loss_tracker.update_state(rec_loss)
        self.perceptual_loss_tracker.update_state(perceptual_loss)
        self.vq_loss_tracker.update_state(vq_loss)
        return self._logs()

    def _logs(self):
        # Every metric but compile()'s own `loss` tracker, which this model never
        # updates (its `loss` is `self.loss_tracker`).
        compiled_tracker = getattr(self, "_loss_tracker", None)
        return {m.name: m.result() for m in self.metrics if m is not compiled_tracker}

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "disc_channels": self.disc_channels,
                "disc_start_step": self.disc_start_step,
                "disc_warmup_steps": self.disc_warmup_steps,
                "disc_weight": self.disc_weight,
                "perceptual_weight": self.perceptual_weight,
                "perceptual_model": (
                    None
                    if self.perceptual_model is None
                    else keras.saving.serialize_keras_object(self.perceptual_model)
                ),
            }
        )
        return config


__all__ = ["VQGAN", "Discriminator", "ShapesPerceptual"]
