"""DiffusionModel: train any denoiser with `fit`, sample from it in one graph, export it.

- DDPM training objective (random timestep, random noise, regress the target):
  Ho et al. 2020, https://arxiv.org/abs/2006.11239 (Algorithm 1).
- Classifier-free guidance (label dropout in training, a null class for sampling):
  Ho & Salimans 2022, https://arxiv.org/abs/2207.12598 (Algorithm 1).
- Min-SNR-gamma loss weighting: Hang et al. 2023, https://arxiv.org/abs/2303.09556.
- Latent diffusion over a frozen autoencoder, latents scaled to unit variance
  (`latent_scale = 1 / std` of a first batch): Rombach et al. 2022,
  https://arxiv.org/abs/2112.10752 (Sec. 3.3 and Appendix G).

The denoiser is any Keras layer or model called as `denoiser([x_t, t])` or, when
class-conditional, `denoiser([x_t, t, labels])`, returning a float32 prediction
shaped like `x_t` (`kzoo.models.UNet` and `kzoo.models.DiT` follow this contract;
label id `num_classes` is the null class). This module never imports a model.

Text-to-image: with a `text_encoder` (a kzoo `TextEncoder`, or any model mapping
token ids `(B, T)` to `{"sequence": (B, T, D), "pooled": (B, D)}`) and a
`tokenizer`, the denoiser is called as
`denoiser([x_t, t, context, context_mask, pooled])` (a `UNet` / `DiT` built with
`context_dim=D`), `fit` takes `(images, captions)` and captions are replaced by
the empty caption (all `[PAD]`: no token to attend to, zero pooled vector) with
probability `caption_dropout_prob`, the null condition of classifier-free
guidance (as Imagen and Stable Diffusion drop text to the empty prompt).

Weight EMA: recipes use the optimizer's `use_ema=True`
(`keras.optimizers.AdamW(..., use_ema=True, ema_momentum=0.999)`); Keras keeps the
moving averages in the optimizer and swaps them into the model's weights at the end
of `fit`, so `generate`, `.keras` checkpoints and exports taken after `fit` use the
EMA weights.

`train_step` and the compiled `generate` use TensorFlow (`tf.GradientTape`,
`tf.function`), imported lazily: kzoo trains and serves on the TensorFlow backend.
"""

import keras
import numpy as np
from keras import ops

from kzoo.diffusion.guidance import drop_labels, guided_denoiser
from kzoo.diffusion.samplers import SAMPLERS, Sampler, make_sampler, sample
from kzoo.diffusion.schedules import (
    SCHEDULE_NAMES,
    NoiseSchedule,
    add_noise,
    make_schedule,
    min_snr_loss_weight,
    training_target,
    validate_prediction_type,
)
from kzoo.layers._trainable import apply_trainable_flag
from kzoo.layers.checks import is_int, is_number
from kzoo.task import Task

# How `train_step` draws timesteps (see `DiffusionModel`'s `timestep_sampling`).
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
# Inputs of the exported `generate` endpoint, in signature order (labels and
# guidance_scale only for class-conditional models).
GENERATE_INPUTS = ("noise", "labels", "num_steps", "guidance_scale", "seed")
# Inputs of the exported `generate_from_text` endpoint of text-to-image models.
GENERATE_FROM_TEXT_INPUTS = ("captions", "num_steps", "guidance_scale", "seed")
# Second component of the stateless seed of `generate_from_text`'s initial noise.
_TEXT_NOISE_STREAM = 1
# What `export_parity_batch` feeds `generate`: few steps keep the check fast.
PARITY_NUM_STEPS = 4
PARITY_GUIDANCE_SCALE = 3.0
PARITY_BATCH_SIZE = 2
_SEED_MODULUS = 2**31 - 1


def _check_seed(seed):
    if not is_int(seed):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    return int(seed)


def _per_example_arg(name, value, num_images, check):
    """`check(value)` for a scalar; for a 1-D sequence of `num_images` entries, the
    list of `check(entry)`."""
    if not isinstance(value, list | tuple | np.ndarray):
        return check(value)
    values = np.asarray(value)
    if values.ndim != 1 or values.size != num_images:
        raise ValueError(
            f"`{name}` must be a scalar or a 1-D sequence with one entry per image "
            f"({num_images}). Received: {name}={value!r}"
        )
    return [check(v) for v in values.tolist()]


def _per_example_kinds(*values):
    return tuple(isinstance(value, list) for value in values)


def _chunk_sampling_args(num_steps, guidance_scale, seed, index, start, stop):
    """`(num_steps, guidance_scale, seed)` of chunk `index` (`[start, stop)`) as arrays.

    Scalars stay scalars (chunk `i` of a scalar seed uses `seed + i`, as before
    per-example values existed); per-example lists are sliced.
    """
    if isinstance(num_steps, list):
        num_steps = np.asarray(num_steps[start:stop], np.int32)
    else:
        num_steps = np.int32(num_steps)
    if isinstance(guidance_scale, list):
        guidance_scale = np.asarray(guidance_scale[start:stop], np.float32)
    elif guidance_scale is not None:
        guidance_scale = np.float32(guidance_scale)
    if isinstance(seed, list):
        seed = np.asarray(seed[start:stop], np.int64) % _SEED_MODULUS
        seed = seed.astype(np.int32)
    else:
        seed = np.int32((seed + index) % _SEED_MODULUS)
    return num_steps, guidance_scale, seed


def _same_batch(reference, named):
    """`named`'s tensors, after asserting each has `reference`'s batch size.

    TF Serving's batching concatenates requests along dimension 0, so every input
    is per-example and all must agree.
    """
    tf = _tensorflow()
    batch = tf.shape(reference)[0]
    checked = []
    for name, value in named.items():
        message = tf.strings.format(
            f"{name} must have one entry per example ({{}}). Received: {name} of batch {{}}",
            (batch, tf.shape(value)[0]),
        )
        assertion = tf.debugging.Assert(tf.equal(tf.shape(value)[0], batch), [message])
        with tf.control_dependencies([assertion]):
            checked.append(tf.identity(value))
    return checked


def _tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "DiffusionModel trains and compiles its sampling loop with TensorFlow. "
            f"Received: KERAS_BACKEND={keras.backend.backend()!r}"
        )
    import tensorflow as tf

    return tf


def resolve_schedule(schedule):
    """A `NoiseSchedule` from a name, a dict of `make_schedule` arguments or a schedule.

    Args:
        schedule: one of `SCHEDULE_NAMES`, a dict such as `{"name": "cosine",
            "num_train_timesteps": 1000}`, or a `NoiseSchedule`.

    Returns:
        A `NoiseSchedule`.

    Example:
    ```python
    resolve_schedule({"name": "linear", "num_train_timesteps": 500})
    ```
    """
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if isinstance(schedule, str):
        if schedule not in SCHEDULE_NAMES:
            raise ValueError(
                f"Unknown noise schedule: `schedule` must be one of {list(SCHEDULE_NAMES)}, "
                "a dict of make_schedule arguments or a NoiseSchedule. "
                f"Received: schedule={schedule!r}"
            )
        return make_schedule(schedule)
    if isinstance(schedule, dict):
        config = dict(schedule)
        config.setdefault("name", "linear")
        try:
            return NoiseSchedule(**config)
        except TypeError as error:
            raise ValueError(
                f"`schedule` dict must hold make_schedule arguments ({error}). "
                f"Received: schedule={schedule!r}"
            ) from None
    raise ValueError(
        f"`schedule` must be one of {list(SCHEDULE_NAMES)}, a dict of make_schedule "
        f"arguments or a NoiseSchedule. Received: schedule={schedule!r}"
    )


def _static_shape(shape):
    shape = tuple(shape)
    if shape and all(is_int(d) and d > 0 for d in shape):
        return tuple(int(d) for d in shape)
    return None


def _denoiser_sample_shape(denoiser):
    """The `x_t` shape (without batch) a denoiser declares, or None if unknown."""
    try:
        inputs = denoiser.inputs  # Functional models: the first input is x_t.
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        shape = _static_shape(inputs[0].shape[1:])
        if shape is not None:
            return shape
    for attribute in ("latent_shape", "image_shape"):
        value = getattr(denoiser, attribute, None)
        if isinstance(value, list | tuple) and _static_shape(value) is not None:
            return _static_shape(value)
    return None


def _check_text_conditioning(text_encoder, tokenizer, num_classes):
    """`(tokenizer, text_encoder)` of a text-to-image model, checked; `(None, None)` otherwise."""
    if text_encoder is None:
        if tokenizer is not None:
            raise ValueError(
                "`tokenizer` is for text-to-image models: pass `text_encoder` too. "
                f"Received: tokenizer={tokenizer!r} with text_encoder=None"
            )
        return None, None
    if num_classes is not None:
        raise ValueError(
            "A text-to-image model has no class labels: use num_classes=None (and a "
            f"denoiser built with `context_dim`). Received: num_classes={num_classes!r}"
        )
    from kzoo.data import tokenizer as tokenizer_module  # data, not a model

    if isinstance(tokenizer, dict) and "class_name" not in tokenizer:
        tokenizer = tokenizer_module.Tokenizer(**tokenizer)
    elif isinstance(tokenizer, dict):
        tokenizer = keras.saving.deserialize_keras_object(tokenizer)
    if not isinstance(tokenizer, tokenizer_module.Tokenizer):
        raise ValueError(
            "A text-to-image model needs `tokenizer`: a kzoo Tokenizer or a dict of its "
            "arguments (e.g. {'vocabulary': 'kzoo_shapes', 'sequence_length': 16}). "
            f"Received: tokenizer={tokenizer!r}"
        )
    if not isinstance(text_encoder, keras.Model):
        raise TypeError(
            "`text_encoder` must be a keras.Model mapping token ids (B, T) to "
            '{"sequence": (B, T, D), "pooled": (B, D)} (a kzoo TextEncoder). '
            f"Received: text_encoder={text_encoder!r}"
        )
    tokenizer.check_encoder(text_encoder)
    return tokenizer, text_encoder


class _Cache:
    """Samplers and compiled generate functions, kept out of Keras/TF object tracking
    (a tracked dict of `tf.function`s would break SavedModel export)."""

    def __init__(self):
        self.samplers = {}
        self.generate_functions = {}


@keras.saving.register_keras_serializable(package="kzoo")
class DiffusionModel(Task):
    """A diffusion model around any denoiser: `fit` on images, `generate`, export.

    `fit` takes a dataset of images in [-1, 1] or of `(images, labels)` pairs
    (labels `(B,)` ints in `[0, num_classes)`). Each `train_step` draws a timestep
    and Gaussian noise per example, noises the data (or the autoencoder latents),
    replaces labels by the null class `num_classes` with probability
    `class_dropout_prob`, and regresses the `prediction_type` target with an MSE in
    float32 (min-SNR-gamma weighted when `snr_gamma` is set). Under
    `mixed_float16` the loss is scaled by the optimizer (`compile` wraps it in a
    `LossScaleOptimizer`). The logged `loss` is the mean of the per-example losses.

    For weight EMA compile with an optimizer built with `use_ema=True`: Keras swaps
    the averaged weights in at the end of `fit`.

    Latent diffusion: with `autoencoder` (a kzoo `VQVAE`, frozen here) the model
    trains on `autoencoder.encoder(images) * latent_scale` (pre-quantization
    latents) and `generate` decodes sampled latents through the autoencoder's
    quantizer and decoder. `latent_scale=None` estimates `1 / std` of the first
    training batch's latents once and stores it as a (non-trainable) weight.

    Args:
        denoiser: a Keras layer/model called as `denoiser([x_t, t(, labels)])`
            returning a prediction shaped like `x_t`. Checked once here with a
            zeros batch.
        schedule: a schedule name (`"linear"`, `"scaled_linear"`, `"cosine"`,
            `"sigmoid"`), a dict of `make_schedule` arguments, or a `NoiseSchedule`.
        prediction_type: what the denoiser predicts: `"eps"`, `"v"` or `"x0"`.
        num_classes: number of classes for class conditioning; default the
            denoiser's `num_classes` attribute (None: unconditional).
        class_dropout_prob: probability in `[0, 1)` of training with the null class
            (classifier-free guidance needs it `> 0`).
        snr_gamma: None, or the gamma `> 0` of min-SNR loss weighting (5 in the paper).
        timestep_sampling: how `train_step` draws timesteps: `"uniform"` over
            `[0, num_train_timesteps)`, or `"logit_normal"`: `t / T =
            sigmoid(n)` with `n ~ N(logit_mean, logit_std)` (Esser et al. 2024,
            Stable Diffusion 3; diffusers' `weighting_scheme="logit_normal"`),
            which spends most of the training on middle noise levels (with the
            defaults 68% of the draws fall in `0.27 T ... 0.73 T`, against 46%
            uniformly). The loss weights (`snr_gamma`) apply on top. On
            `dit_shapes` it drew the requested shape less often than uniform
            (docs/dit_shapes.md, What was tried).
        logit_mean: the mean of `n` for `"logit_normal"` (> 0 moves the draws
            towards more noise).
        logit_std: the standard deviation (`> 0`) of `n` for `"logit_normal"`.
        noise_offset: 0 (default), or the std `> 0` of "offset noise" (Guttenberg
            2023; diffusers' `--noise_offset`): training noise gets a random
            constant per example and channel, `eps + noise_offset * n[b, c]`. Plain
            noise leaves an image's mean colour only `1 / sqrt(H W)` of noise, so the
            mean (a flat background) is decided in the last few percent of the
            timesteps; the offset spreads that decision over more of them.
            Sampling starts from plain noise. On `dit_shapes` (0.1) the samples'
            backgrounds got grayer and the requested shape rarer
            (docs/dit_shapes.md, What was tried).
        autoencoder: None, or a frozen kzoo `VQVAE` for latent diffusion.
        latent_scale: latent multiplier (`> 0`); None estimates it on the first batch.
        max_generate_steps: largest `num_steps` the exported `generate` accepts.
        max_generate_batch: largest batch the exported `generate` accepts; the
            Python `generate` runs larger requests in chunks of this size.
        export_sampler: sampler of the exported `generate` (one of `SAMPLERS`).
        clip_sample: whether the samplers `generate` builds clip each step's
            predicted `x0` to [-1, 1] (see `kzoo.diffusion.Sampler`); None (default)
            clips for pixel-space models, whose data is in [-1, 1], and not for
            latent diffusion, whose latents have no fixed range. A `Sampler`
            instance passed to `generate` keeps its own setting.
        sample_shape: `x_t` shape without batch, only for denoisers that do not
            declare it (Functional inputs, `image_shape` or `latent_shape`).
        seed: seed of the training noise `SeedGenerator`.
        text_encoder: None, or (text-to-image) a kzoo `TextEncoder` (any
            keras.Model mapping token ids `(B, T)` to `{"sequence", "pooled"}`),
            trained jointly with the denoiser; pass one with `trainable=False`
            (e.g. a trained `DualEncoder.text_encoder`) to keep it frozen. The
            denoiser must take `[x_t, t, context, context_mask, pooled]`
            (`UNet` / `DiT` with `context_dim`); needs `num_classes=None`.
        tokenizer: with `text_encoder`: a `kzoo.data.tokenizer.Tokenizer` or a dict
            of its arguments (`{"vocabulary": "kzoo_shapes", "sequence_length": 16}`).
            Captions longer than its `sequence_length` are truncated.
        caption_dropout_prob: probability in `[0, 1)` of training on the empty
            caption (the null condition of classifier-free guidance).
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    unet = kzoo.models.UNet(image_shape=(32, 32, 3), num_classes=6)
    model = kzoo.diffusion.DiffusionModel(unet, schedule="cosine", prediction_type="v")
    model.compile(optimizer=keras.optimizers.AdamW(2e-4, use_ema=True))
    model.fit(dataset_of_images_and_labels, epochs=10)
    images = model.generate(labels=[0, 1, 2], num_steps=50, guidance_scale=3.0)

    text_unet = kzoo.models.UNet(image_shape=(32, 32, 3), context_dim=32)
    text_model = kzoo.diffusion.DiffusionModel(
        text_unet,
        text_encoder=kzoo.models.TextEncoder(33, 16, hidden_dim=32),
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": 16},
    )
    text_model.fit(dataset_of_images_and_captions)  # captions: tf.string or token ids
    images = text_model.generate_from_text(["a large red circle"], guidance_scale=3.0)
    ```
    """

    def __init__(
        self,
        denoiser,
        schedule="linear",
        prediction_type="eps",
        num_classes=None,
        class_dropout_prob=0.1,
        snr_gamma=None,
        timestep_sampling="uniform",
        logit_mean=0.0,
        logit_std=1.0,
        noise_offset=0.0,
        autoencoder=None,
        latent_scale=None,
        max_generate_steps=250,
        max_generate_batch=64,
        export_sampler="ddim",
        clip_sample=None,
        sample_shape=None,
        seed=None,
        text_encoder=None,
        tokenizer=None,
        caption_dropout_prob=0.1,
        **kwargs,
    ):
        kwargs.setdefault("name", "diffusion_model")
        super().__init__(**kwargs)
        if not isinstance(denoiser, keras.layers.Layer):
            raise TypeError(
                "`denoiser` must be a Keras layer or model called as "
                f"denoiser([x_t, t(, labels)]). Received: denoiser={denoiser!r}"
            )
        schedule = resolve_schedule(schedule)
        validate_prediction_type(prediction_type)
        num_classes = self._resolve_num_classes(num_classes, denoiser)
        if not is_number(class_dropout_prob) or not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(
                "`class_dropout_prob` must be a number in [0, 1). "
                f"Received: class_dropout_prob={class_dropout_prob!r}"
            )
        if snr_gamma is not None and (not is_number(snr_gamma) or not snr_gamma > 0):
            raise ValueError(
                f"`snr_gamma` must be None or a number > 0. Received: snr_gamma={snr_gamma!r}"
            )
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(
                f"`timestep_sampling` must be one of {list(TIMESTEP_SAMPLINGS)}. "
                f"Received: timestep_sampling={timestep_sampling!r}"
            )
        if not is_number(logit_mean):
            raise ValueError(f"`logit_mean` must be a number. Received: logit_mean={logit_mean!r}")
        if not is_number(logit_std) or not logit_std > 0:
            raise ValueError(f"`logit_std` must be a number > 0. Received: logit_std={logit_std!r}")
        if not is_number(noise_offset) or noise_offset < 0:
            raise ValueError(
                f"`noise_offset` must be a number >= 0. Received: noise_offset={noise_offset!r}"
            )
        total = schedule.num_train_timesteps
        if not is_int(max_generate_steps) or not 1 <= max_generate_steps <= total:
            raise ValueError(
                f"`max_generate_steps` must be an integer in [1, num_train_timesteps={total}]. "
                f"Received: max_generate_steps={max_generate_steps!r}"
            )
        if not is_int(max_generate_batch) or max_generate_batch < 1:
            raise ValueError(
                "`max_generate_batch` must be an integer >= 1. "
                f"Received: max_generate_batch={max_generate_batch!r}"
            )
        if export_sampler not in SAMPLERS:
            raise ValueError(
                f"`export_sampler` must be one of {list(SAMPLERS)}. "
                f"Received: export_sampler={export_sampler!r}"
            )
        if seed is not None and not is_int(seed):
            raise ValueError(f"`seed` must be None or an integer. Received: seed={seed!r}")
        if clip_sample is not None and not isinstance(clip_sample, bool):
            raise ValueError(
                f"`clip_sample` must be None or a bool. Received: clip_sample={clip_sample!r}"
            )
        if not is_number(caption_dropout_prob) or not 0.0 <= caption_dropout_prob < 1.0:
            raise ValueError(
                "`caption_dropout_prob` must be a number in [0, 1). "
                f"Received: caption_dropout_prob={caption_dropout_prob!r}"
            )
        if latent_scale is not None:
            if autoencoder is None:
                raise ValueError(
                    "`latent_scale` applies to latent diffusion only (pass `autoencoder`). "
                    f"Received: latent_scale={latent_scale!r} with autoencoder=None"
                )
            if not is_number(latent_scale) or not latent_scale > 0:
                raise ValueError(
                    f"`latent_scale` must be None or a number > 0. "
                    f"Received: latent_scale={latent_scale!r}"
                )
        if sample_shape is not None:
            checked = (
                _static_shape(sample_shape) if isinstance(sample_shape, list | tuple) else None
            )
            if checked is None:
                raise ValueError(
                    "`sample_shape` must be None or a tuple of positive integers. "
                    f"Received: sample_shape={sample_shape!r}"
                )
            sample_shape = checked

        self.schedule = schedule
        self.prediction_type = prediction_type
        self.num_classes = num_classes
        self.class_dropout_prob = float(class_dropout_prob)
        self.snr_gamma = None if snr_gamma is None else float(snr_gamma)
        self.timestep_sampling = timestep_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.noise_offset = float(noise_offset)
        self.max_generate_steps = int(max_generate_steps)
        self.max_generate_batch = int(max_generate_batch)
        self.export_sampler = export_sampler
        self.clip_sample = clip_sample
        self.seed = seed
        self.caption_dropout_prob = float(caption_dropout_prob)
        self._latent_scale_config = None if latent_scale is None else float(latent_scale)
        self._sample_shape_config = sample_shape

        # === Layers ===
        self.denoiser = apply_trainable_flag(denoiser)
        self.tokenizer, self.text_encoder = _check_text_conditioning(
            text_encoder, tokenizer, num_classes
        )
        if self.text_encoder is not None:
            apply_trainable_flag(self.text_encoder)
        self.autoencoder = self._check_autoencoder(autoencoder)
        self.sample_shape = self._resolve_sample_shape(denoiser, sample_shape)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.latent_scale = None
        if self.autoencoder is not None:
            # 0 means "not estimated yet"; the first train_step stores 1 / std.
            self.latent_scale = self.add_weight(
                name="latent_scale",
                shape=(),
                initializer=keras.initializers.Constant(self._latent_scale_config or 0.0),
                trainable=False,
                aggregation="only_first_replica",
            )
        self._check_denoiser_output()
        self._cache = _Cache()
        self.built = True

    # === Construction checks ===
    @staticmethod
    def _resolve_num_classes(num_classes, denoiser):
        declared = getattr(denoiser, "num_classes", None)
        if num_classes is None:
            num_classes = declared
        elif declared is not None and declared != num_classes:
            raise ValueError(
                f"`num_classes` must match the denoiser's num_classes={declared}. "
                f"Received: num_classes={num_classes!r}"
            )
        if num_classes is not None and (not is_int(num_classes) or num_classes < 1):
            raise ValueError(
                "`num_classes` must be None or an integer >= 1. "
                f"Received: num_classes={num_classes!r}"
            )
        return None if num_classes is None else int(num_classes)

    @staticmethod
    def _check_autoencoder(autoencoder):
        if autoencoder is None:
            return None
        missing = [
            name
            for name in ("encoder", "decoder", "quantizer", "latent_shape", "image_shape")
            if not hasattr(autoencoder, name)
        ]
        if not isinstance(autoencoder, keras.Model) or missing:
            raise TypeError(
                "`autoencoder` must be a kzoo VQVAE-like keras.Model with `encoder`, `decoder`, "
                f"`quantizer`, `latent_shape` and `image_shape` (missing: {missing}). "
                f"Received: autoencoder={autoencoder!r}"
            )
        # Frozen: only the denoiser trains; its variables stay out of the optimizer.
        autoencoder.trainable = False
        return apply_trainable_flag(autoencoder)

    def _resolve_sample_shape(self, denoiser, sample_shape):
        declared = _denoiser_sample_shape(denoiser)
        if sample_shape is not None and declared is not None and sample_shape != declared:
            raise ValueError(
                f"`sample_shape` must match the denoiser's input shape {declared}. "
                f"Received: sample_shape={sample_shape}"
            )
        shape = sample_shape or declared
        if self.autoencoder is not None:
            latent_shape = tuple(self.autoencoder.latent_shape)
            if shape is not None and shape != latent_shape:
                raise ValueError(
                    f"Wrong latent shape for the denoiser: the autoencoder's latents are "
                    f"{latent_shape} (its `latent_shape`) but `denoiser` takes x_t of shape "
                    f"{shape}. Build the denoiser with input shape {latent_shape}. "
                    f"Received: denoiser input shape={shape}"
                )
            shape = latent_shape
        if shape is None:
            raise ValueError(
                "Cannot tell the shape of x_t: the denoiser declares no input shape "
                "(Functional inputs, `image_shape` or `latent_shape`); pass `sample_shape`. "
                "Received: sample_shape=None"
            )
        return shape

    def _check_denoiser_output(self):
        # One tiny eager call builds the denoiser and checks the output contract.
        zeros = ops.zeros((1, *self.sample_shape), "float32")
        timesteps = ops.zeros((1,), "int32")
        labels = None if self.num_classes is None else ops.full((1,), self.num_classes, "int32")
        if self.text_conditional:
            labels = ops.zeros((1, self.tokenizer.sequence_length), "int32")  # empty caption
        try:
            output = self._denoise(zeros, timesteps, labels, training=False)
        except Exception as error:
            raise ValueError(
                f"`denoiser` failed on a zeros batch x_t of shape {(1, *self.sample_shape)} "
                f"with timesteps (1,) and labels {None if labels is None else tuple(labels.shape)} "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
                f"Received: denoiser={self.denoiser.name!r} with num_classes={self.num_classes}"
            ) from None
        if tuple(output.shape) != (1, *self.sample_shape):
            raise ValueError(
                "`denoiser` must return a prediction shaped like its input x_t "
                f"{(1, *self.sample_shape)} (a DiT with learn_sigma=True returns twice the "
                f"channels). Received: output shape={tuple(output.shape)}"
            )

    # === Properties ===
    @property
    def image_shape(self):
        """Shape `(H, W, C)` of the images the model trains on and generates."""
        if self.autoencoder is not None:
            return tuple(self.autoencoder.image_shape)
        return self.sample_shape

    @property
    def metrics(self):
        return [self.loss_tracker]

    @property
    def capabilities(self):
        """`{"generate"}`, plus `"generate_from_text"` for a text-to-image model."""
        if self.text_conditional:
            return frozenset({"generate", "generate_from_text"})
        return frozenset({"generate"})

    @property
    def text_conditional(self):
        """True for a text-to-image model (built with a `text_encoder`)."""
        return self.text_encoder is not None

    # === Forward ===
    def _denoise(self, x_t, timesteps, labels, training):
        if self.text_conditional:
            # `labels` are token ids (encoded here, inside the training tape) or an
            # already encoded text condition (the sampling loop encodes once).
            text = labels if isinstance(labels, dict) else self.encode_text(labels, training)
            inputs = [x_t, timesteps, text["context"], text["context_mask"], text["pooled"]]
        elif self.num_classes is None:
            inputs = [x_t, timesteps]
        else:
            inputs = [x_t, timesteps, labels]
        return ops.cast(self.denoiser(inputs, training=training), "float32")

    def encode_text(self, token_ids, training=False):
        """The text condition of token ids `(B, T)`: `{"context", "context_mask", "pooled"}`.

        `context` float32 `(B, T, D)` (the text encoder's `sequence`), `context_mask`
        int32 `(B, T)` (1 for real tokens) and `pooled` float32 `(B, D)`. The empty
        caption (all `[PAD]`) is the null condition of classifier-free guidance.
        """
        token_ids = ops.cast(token_ids, "int32")
        encoded = self.text_encoder(token_ids, training=training)
        return {
            "context": ops.cast(encoded["sequence"], "float32"),
            "context_mask": ops.cast(ops.not_equal(token_ids, 0), "int32"),
            "pooled": ops.cast(encoded["pooled"], "float32"),
        }

    def tokenize(self, captions):
        """int32 token ids `(B, T)` of a batch of strings; long captions are truncated."""
        if not self.text_conditional:
            raise ValueError(
                "`tokenize` needs a text-to-image model (built with `text_encoder` and "
                "`tokenizer`). Received: a model with text_encoder=None"
            )
        return self.tokenizer(captions)

    def call(self, inputs, training=False):
        """The denoiser's prediction for `[x_t, t(, labels)]` (float32).

        Text-to-image models take `[x_t, t, token_ids]`.
        """
        inputs = list(inputs)
        labels = inputs[2] if len(inputs) > 2 else None
        return self._denoise(inputs[0], inputs[1], labels, training=training)

    def _encode(self, images):
        images = ops.cast(images, "float32")
        expected = self.image_shape
        got = tuple(images.shape[1:])
        if len(images.shape) != len(expected) + 1 or any(
            g is not None and g != e for g, e in zip(got, expected, strict=True)
        ):
            raise ValueError(
                f"`images` must have shape (batch, {', '.join(map(str, expected))}) "
                f"(the model's `image_shape`). Received: images.shape={tuple(images.shape)}"
            )
        if self.autoencoder is None:
            return images
        return ops.cast(self.autoencoder.encoder(images, training=False), "float32")

    def _current_latent_scale(self, latents=None):
        """The stored latent scale; where unset, `1 / std(latents)` (or 1 without latents)."""
        stored = ops.convert_to_tensor(self.latent_scale)
        fallback = 1.0 if latents is None else 1.0 / ops.maximum(ops.std(latents), 1e-6)
        return ops.where(stored > 0.0, stored, fallback)

    def _decode(self, x):
        """Final samples -> images in [-1, 1] (through the autoencoder for latents)."""
        if self.autoencoder is not None:
            latents = x / self._current_latent_scale()
            quantizer = self.autoencoder.quantizer
            vectors = quantizer.lookup(quantizer.get_code_indices(latents))
            x = self.autoencoder.decoder(vectors, training=False)
        return ops.clip(ops.cast(x, "float32"), -1.0, 1.0)

    # === Training ===
    def compile(self, optimizer="adam", **kwargs):
        """`keras.Model.compile`; the loss is the model's own (`loss` is not used)."""
        super().compile(optimizer=optimizer, **kwargs)

    def _unpack(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if labels is None and isinstance(images, list | tuple) and len(images) == 2:
            images, labels = images
        if self.text_conditional:
            return images, self._caption_ids(labels)
        if self.num_classes is None and labels is not None:
            raise ValueError(
                "Got (images, labels) batches but the model is unconditional "
                "(num_classes=None); feed images only or set `num_classes`. "
                f"Received: labels of shape {tuple(labels.shape)}"
            )
        if self.num_classes is not None and labels is None:
            raise ValueError(
                f"A class-conditional model (num_classes={self.num_classes}) trains on "
                "(images, labels) batches. Received: batches of images only"
            )
        if labels is not None:
            labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        return images, labels

    def _caption_ids(self, captions):
        if captions is None:
            raise ValueError(
                "A text-to-image model trains on (images, captions) batches. "
                "Received: batches of images only"
            )
        dtype = keras.backend.standardize_dtype(captions.dtype)
        if dtype == "string":
            return self.tokenizer(captions)
        if "int" not in dtype or len(captions.shape) != 2:
            raise ValueError(
                "Captions must be strings `(B,)` or int token ids `(B, T)`. "
                f"Received: captions of dtype {dtype} and shape {tuple(captions.shape)}"
            )
        return ops.cast(captions, "int32")

    def _noised_batch(self, data, training):
        """`(x_t, t, labels, target)` of one batch: the diffusion forward process."""
        images, labels = self._unpack(data)
        x0 = self._encode(images)
        if self.autoencoder is not None:
            scale = self._current_latent_scale(x0)
            if training:
                self.latent_scale.assign(scale)
            x0 = x0 * scale
        batch = ops.shape(x0)[0]
        timesteps = self._sample_timesteps(batch)
        noise = keras.random.normal(ops.shape(x0), dtype="float32", seed=self.seed_generator)
        if self.noise_offset > 0:
            # One constant per example and channel, broadcast over the spatial axes.
            offset_shape = (batch, *([1] * (len(x0.shape) - 2)), x0.shape[-1])
            offset = keras.random.normal(offset_shape, dtype="float32", seed=self.seed_generator)
            noise = noise + self.noise_offset * offset
        x_t = add_noise(self.schedule, x0, noise, timesteps)
        if self.text_conditional and training and self.caption_dropout_prob > 0:
            # The empty caption (all [PAD]) is the null condition.
            labels = drop_labels(labels, self.caption_dropout_prob, 0, seed=self.seed_generator)
        elif labels is not None and training and self.class_dropout_prob > 0:
            labels = drop_labels(
                labels, self.class_dropout_prob, self.num_classes, seed=self.seed_generator
            )
        target = training_target(self.prediction_type, self.schedule, x0, noise, timesteps)
        return x_t, timesteps, labels, target

    def _sample_timesteps(self, batch):
        """`(batch,)` int32 training timesteps, drawn as `timestep_sampling` says."""
        total = self.schedule.num_train_timesteps
        if self.timestep_sampling == "uniform":
            return keras.random.randint((batch,), 0, total, dtype="int32", seed=self.seed_generator)
        logits = keras.random.normal(
            (batch,), mean=self.logit_mean, stddev=self.logit_std, seed=self.seed_generator
        )
        timesteps = ops.floor(ops.sigmoid(logits) * total)
        return ops.cast(ops.clip(timesteps, 0, total - 1), "int32")

    def _diffusion_loss(self, prediction, target, timesteps):
        """Mean over the local batch of per-example MSEs (min-SNR weighted), float32."""
        error = ops.square(ops.cast(prediction, "float32") - target)
        per_example = ops.mean(ops.reshape(error, (ops.shape(error)[0], -1)), axis=-1)  # (B,)
        if self.snr_gamma is not None:
            weights = min_snr_loss_weight(
                self.schedule, timesteps, self.prediction_type, self.snr_gamma
            )
            per_example = per_example * weights
        loss = ops.mean(per_example)
        if self.denoiser.losses:
            loss = loss + ops.cast(ops.sum(self.denoiser.losses), "float32")
        return loss

    def train_step(self, data):
        tf = _tensorflow()
        x_t, timesteps, labels, target = self._noised_batch(data, training=True)
        with tf.GradientTape() as tape:
            prediction = self._denoise(x_t, timesteps, labels, training=True)
            loss = self._diffusion_loss(prediction, target, timesteps)
            # `loss` is this replica's batch mean and fit sums the replicas' gradients:
            # divide by the replica count once (so by the global batch overall).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas if replicas > 1 else loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(loss, sample_weight=ops.shape(x_t)[0])
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        x_t, timesteps, labels, target = self._noised_batch(data, training=False)
        prediction = self._denoise(x_t, timesteps, labels, training=False)
        loss = self._diffusion_loss(prediction, target, timesteps)
        self.loss_tracker.update_state(loss, sample_weight=ops.shape(x_t)[0])
        return {metric.name: metric.result() for metric in self.metrics}

    # === Sampling ===
    def _get_sampler(self, sampler):
        if isinstance(sampler, Sampler):
            if sampler.prediction_type != self.prediction_type or sampler.schedule != self.schedule:
                raise ValueError(
                    "`sampler` must use the model's schedule and "
                    f"prediction_type={self.prediction_type!r}. "
                    f"Received: sampler with prediction_type={sampler.prediction_type!r} "
                    f"and schedule={sampler.schedule!r}"
                )
            return sampler
        if sampler not in SAMPLERS:
            raise ValueError(
                f"`sampler` must be one of {list(SAMPLERS)} or a Sampler. "
                f"Received: sampler={sampler!r}"
            )
        samplers = self._cache.samplers
        if sampler not in samplers:
            # Built eagerly, outside any traced function: DDPM's SeedGenerator is a variable.
            samplers[sampler] = self._make_sampler(sampler)
        return samplers[sampler]

    def _make_sampler(self, name):
        clip_sample = self.clip_sample
        if clip_sample is None:
            clip_sample = self.autoencoder is None
        return make_sampler(
            name, self.schedule, prediction_type=self.prediction_type, clip_sample=clip_sample
        )

    def _sampling_denoiser(self, x, timesteps, labels):
        return self._denoise(x, timesteps, labels, training=False)

    def _generate_graph(self, sampler, noise, labels, num_steps, guidance_scale, seed):
        """The whole sampling loop (one `fori_loop`) and the decode, as tensors."""
        denoiser = self._sampling_denoiser
        conditioning = None if labels is None else ops.cast(labels, "int32")
        null_conditioning = self.num_classes
        if self.text_conditional:
            # Encode once, outside the loop; the null condition is the empty caption.
            conditioning = self.encode_text(conditioning)
            empty = ops.zeros((1, self.tokenizer.sequence_length), "int32")
            null_conditioning = self.encode_text(empty)
        if guidance_scale is not None:
            denoiser = guided_denoiser(denoiser, None, null_conditioning=null_conditioning)
            guidance_scale = ops.cast(guidance_scale, "float32")
        x = sample(
            denoiser,
            sampler,
            ops.cast(noise, "float32"),
            num_steps,
            conditioning=conditioning,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        return self._decode(x)

    def _text_generate_graph(self, sampler, token_ids, num_steps, guidance_scale, seed):
        """`_generate_graph` with the initial noise drawn in the graph from `seed`."""
        tf = _tensorflow()
        seed = tf.cast(seed, tf.int32)
        if seed.shape.rank == 1:
            # Per-example seeds: each example's noise is its own draw, whatever the batch.
            noise = tf.map_fn(
                lambda s: tf.random.stateless_normal(
                    self.sample_shape, seed=tf.stack([s, _TEXT_NOISE_STREAM])
                ),
                seed,
                fn_output_signature=tf.float32,
            )
        else:
            batch = tf.shape(token_ids)[0]
            noise = tf.random.stateless_normal(
                tf.concat([[batch], tf.constant(self.sample_shape, tf.int32)], axis=0),
                seed=tf.stack([seed, _TEXT_NOISE_STREAM]),
            )
        return self._generate_graph(sampler, noise, token_ids, num_steps, guidance_scale, seed)

    def _check_guidance(self, guidance_scale):
        if guidance_scale is None:
            return None
        if self.text_conditional:
            if self.caption_dropout_prob == 0:
                raise ValueError(
                    "`guidance_scale` needs a null (empty) caption trained with "
                    "caption_dropout_prob > 0; this model has caption_dropout_prob=0. "
                    f"Received: guidance_scale={guidance_scale!r}"
                )
        elif self.num_classes is None:
            raise ValueError(
                "`guidance_scale` needs a class-conditional model with a trained null class; "
                f"this model has num_classes=None. Received: guidance_scale={guidance_scale!r}"
            )
        elif self.class_dropout_prob == 0:
            raise ValueError(
                "`guidance_scale` needs a null class trained with class_dropout_prob > 0; "
                f"this model has class_dropout_prob=0. Received: guidance_scale={guidance_scale!r}"
            )
        if not is_number(guidance_scale) or not np.isfinite(guidance_scale):
            raise ValueError(
                "`guidance_scale` must be None or a finite number. "
                f"Received: guidance_scale={guidance_scale!r}"
            )
        return float(guidance_scale)

    def _check_labels(self, num_images, labels):
        if labels is None:
            if num_images is None:
                raise ValueError(
                    "Pass `num_images` (or `labels`) to say how many images to generate. "
                    "Received: num_images=None"
                )
            if not is_int(num_images) or num_images < 1:
                raise ValueError(
                    f"`num_images` must be an integer >= 1. Received: num_images={num_images!r}"
                )
            if self.num_classes is None:
                return int(num_images), None
            # No labels: cycle through the classes.
            return int(num_images), np.arange(num_images, dtype=np.int32) % self.num_classes
        if self.num_classes is None:
            raise ValueError(
                "`labels` need a class-conditional model; this model has num_classes=None. "
                f"Received: labels={labels!r}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or not labels.size or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"`labels` must be a non-empty 1-D sequence of ints. Received: labels={labels!r}"
            )
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise ValueError(
                f"`labels` must lie in [0, num_classes={self.num_classes}] (id "
                f"{self.num_classes} is the null class). Received: labels={labels.tolist()}"
            )
        if num_images is not None and num_images != labels.size:
            raise ValueError(
                f"`num_images` must equal len(labels)={labels.size}. "
                f"Received: num_images={num_images!r}"
            )
        return int(labels.size), labels.astype(np.int32)

    def _check_num_steps(self, num_steps):
        total = self.schedule.num_train_timesteps
        if not is_int(num_steps) or not 1 <= num_steps <= total:
            raise ValueError(
                f"`num_steps` must be an integer in [1, num_train_timesteps={total}]. "
                f"Received: num_steps={num_steps!r}"
            )
        return int(num_steps)

    def _check_sampling_args(self, num_steps, guidance_scale, seed, num_images):
        """Checks `num_steps`, `guidance_scale` and `seed`: each a scalar, or a 1-D
        sequence with one entry per image (returned as a list)."""
        num_steps = _per_example_arg("num_steps", num_steps, num_images, self._check_num_steps)
        guidance_scale = _per_example_arg(
            "guidance_scale", guidance_scale, num_images, self._check_guidance
        )
        if isinstance(guidance_scale, list) and None in guidance_scale:
            raise ValueError(
                "`guidance_scale` must be None or finite numbers. "
                f"Received: guidance_scale={guidance_scale!r}"
            )
        seed = _per_example_arg("seed", seed, num_images, _check_seed)
        return num_steps, guidance_scale, seed

    def _compiled_generate(self, sampler, guided, jit_compile, per_example):
        functions = self._cache.generate_functions
        # Scalar and per-example arguments get separate functions: retracing one for
        # the other would relax their shapes to an unknown rank.
        key = (id(sampler), guided, bool(jit_compile), per_example)
        if key not in functions:

            def fn(noise, labels, num_steps, guidance_scale, seed):
                return self._generate_graph(sampler, noise, labels, num_steps, guidance_scale, seed)

            if keras.backend.backend() == "tensorflow":
                tf = _tensorflow()
                fn = tf.function(fn, jit_compile=bool(jit_compile), reduce_retracing=True)
            functions[key] = fn
        return functions[key]

    def generate(
        self,
        num_images=None,
        labels=None,
        num_steps=50,
        sampler="ddim",
        guidance_scale=None,
        seed=0,
        jit_compile=False,
    ):
        """Sample images in [-1, 1]; the whole loop (and the decode) runs as one graph.

        Args:
            num_images: how many images; default `len(labels)`. A class-conditional
                model without `labels` cycles through the classes.
            labels: 1-D ints in `[0, num_classes]` (`num_classes` is the null class:
                unconditional samples), class-conditional models only.
            num_steps: sampler steps, in `[1, num_train_timesteps]`, or one count
                per image (a 1-D sequence): each image steps on its own table.
            sampler: `"ddim"`, `"ddpm"`, `"dpmpp_2m"`, `"euler"`, `"heun"` or a
                `Sampler` built with the model's schedule and prediction type.
            guidance_scale: None (plain conditional sampling) or the classifier-free
                guidance scale `w` (1: conditional, 0: unconditional, > 1: stronger),
                or one scale per image; needs a class-conditional model trained with
                `class_dropout_prob > 0`.
            seed: int seed of the initial noise and of stochastic samplers' noise,
                or one seed per image (a 1-D sequence): each image's noise is then
                its own draw, the same whatever else is in the batch.
            jit_compile: compile the loop with XLA.

        Returns:
            float32 NumPy images `(num_images, *image_shape)` in [-1, 1].

        Example:
        ```python
        images = model.generate(labels=[0, 0, 5], num_steps=20, sampler="dpmpp_2m",
                                guidance_scale=3.0, seed=1)
        ```

        Text-to-image models: `labels` are not accepted and `num_images` images of
        the empty caption (unconditional samples) are drawn; use
        `generate_from_text` for captions.
        """
        if self.text_conditional:
            if labels is not None:
                raise ValueError(
                    "A text-to-image model takes captions, not `labels`: call "
                    f"`generate_from_text(captions, ...)`. Received: labels={labels!r}"
                )
            if not is_int(num_images) or num_images < 1:
                raise ValueError(
                    f"`num_images` must be an integer >= 1. Received: num_images={num_images!r}"
                )
            return self.generate_from_text(
                [""] * num_images,
                num_steps=num_steps,
                sampler=sampler,
                guidance_scale=guidance_scale,
                seed=seed,
                jit_compile=jit_compile,
            )
        num_images, labels = self._check_labels(num_images, labels)
        num_steps, guidance_scale, seed = self._check_sampling_args(
            num_steps, guidance_scale, seed, num_images
        )
        sampler = self._get_sampler(sampler)
        fn = self._compiled_generate(
            sampler,
            guidance_scale is not None,
            jit_compile,
            _per_example_kinds(num_steps, guidance_scale, seed),
        )
        if isinstance(seed, list):  # one noise stream per example: batch-independent
            noise = np.stack(
                [np.random.default_rng(s).standard_normal(self.sample_shape) for s in seed]
            ).astype(np.float32)
        else:
            noise = (
                np.random.default_rng(seed)
                .standard_normal((num_images, *self.sample_shape))
                .astype(np.float32)
            )
        chunks = []
        for index, start in enumerate(range(0, num_images, self.max_generate_batch)):
            stop = start + self.max_generate_batch
            images = fn(
                noise[start:stop],
                None if labels is None else labels[start:stop],
                *_chunk_sampling_args(num_steps, guidance_scale, seed, index, start, stop),
            )
            chunks.append(np.asarray(ops.convert_to_numpy(images)))
        return np.concatenate(chunks, axis=0)

    def _check_captions(self, captions):
        if not self.text_conditional:
            raise ValueError(
                "`generate_from_text` needs a text-to-image model (built with `text_encoder` "
                "and `tokenizer`); use `generate`. Received: a model with text_encoder=None"
            )
        if isinstance(captions, str | bytes):
            raise ValueError(
                "`captions` must be a batch of strings; wrap one caption in a list. "
                f"Received: captions={captions!r}"
            )
        if isinstance(captions, np.ndarray) and captions.dtype.kind in "OUS":
            captions = captions.tolist()
        if (
            not isinstance(captions, list | tuple)
            or not captions
            or not all(isinstance(c, str | bytes) for c in captions)
        ):
            raise ValueError(
                "`captions` must be a non-empty list of strings (empty strings are allowed: "
                f"unconditional samples). Received: captions={captions!r}"
            )
        return [c.decode("utf-8") if isinstance(c, bytes) else c for c in captions]

    def generate_from_text(
        self,
        captions,
        num_steps=50,
        sampler="ddim",
        guidance_scale=None,
        seed=0,
        jit_compile=False,
    ):
        """Sample one image per caption; tokenizer, text encoder and loop run as one graph.

        The initial noise is drawn in the graph from `seed` (stateless), so the
        exported `generate_from_text` endpoint returns the same images for the same
        request. Batches above `max_generate_batch` run in chunks (chunk `i` uses
        seed `seed + i`).

        Args:
            captions: a list (or 1-D NumPy array) of strings. The empty string is
                the null condition (an unconditional sample); words past the
                tokenizer's `sequence_length` are dropped (truncation keeps the
                first words); words outside the vocabulary become `[UNK]`.
            num_steps: sampler steps, in `[1, num_train_timesteps]`, or one count
                per image (a 1-D sequence): each image steps on its own table.
            sampler: `"ddim"`, `"ddpm"`, `"dpmpp_2m"`, `"euler"`, `"heun"` or a
                `Sampler` built with the model's schedule and prediction type.
            guidance_scale: None (conditional sampling) or the classifier-free
                guidance scale `w` (1: conditional, 0: unconditional, > 1:
                stronger); needs `caption_dropout_prob > 0`.
            seed: int seed of the initial noise and of stochastic samplers, or
                one seed per caption (a 1-D sequence), as the exported endpoint
                takes them: each image's noise is then its own draw.
            jit_compile: compile the loop with XLA (tokenization stays outside).

        Returns:
            float32 NumPy images `(len(captions), *image_shape)` in [-1, 1].

        Example:
        ```python
        images = model.generate_from_text(
            ["a large red circle at the center on a white background"],
            num_steps=20, guidance_scale=3.0)
        ```
        """
        captions = self._check_captions(captions)
        num_steps, guidance_scale, seed = self._check_sampling_args(
            num_steps, guidance_scale, seed, len(captions)
        )
        sampler = self._get_sampler(sampler)
        key = (
            "text",
            id(sampler),
            guidance_scale is not None,
            bool(jit_compile),
            _per_example_kinds(num_steps, guidance_scale, seed),
        )
        functions = self._cache.generate_functions
        if key not in functions:

            def fn(token_ids, num_steps, guidance_scale, seed):
                return self._text_generate_graph(
                    sampler, token_ids, num_steps, guidance_scale, seed
                )

            tf = _tensorflow()
            functions[key] = tf.function(fn, jit_compile=bool(jit_compile), reduce_retracing=True)
        # Strings stay out of the (possibly XLA-compiled) loop: tokenize first.
        token_ids = np.asarray(ops.convert_to_numpy(self.tokenizer(captions)))
        chunks = []
        for index, start in enumerate(range(0, len(captions), self.max_generate_batch)):
            stop = start + self.max_generate_batch
            images = functions[key](
                token_ids[start:stop],
                *_chunk_sampling_args(num_steps, guidance_scale, seed, index, start, stop),
            )
            chunks.append(np.asarray(ops.convert_to_numpy(images)))
        return np.concatenate(chunks, axis=0)

    # === Export ===
    def _text_export_endpoints(self, sampler):
        """`generate_from_text` and `denoise` of a text-to-image model (see export_endpoints)."""
        tf = _tensorflow()
        sample_spec = (None, *self.sample_shape)
        length = self.tokenizer.sequence_length
        specs = [
            keras.InputSpec(shape=(None,), dtype="string", name="captions"),
            keras.InputSpec(shape=(None,), dtype="int32", name="num_steps"),
            keras.InputSpec(shape=(None,), dtype="float32", name="guidance_scale"),
            keras.InputSpec(shape=(None,), dtype="int32", name="seed"),
        ]

        def generate_from_text(captions, num_steps, guidance_scale, seed):
            # Signatures check dtypes, not ranks: a scalar string would fail deep inside.
            captions = tf.ensure_shape(captions, (None,))
            num_steps, guidance_scale, seed = _same_batch(
                captions, {"num_steps": num_steps, "guidance_scale": guidance_scale, "seed": seed}
            )
            token_ids = self.tokenizer(captions)
            images = self._text_generate_graph(sampler, token_ids, num_steps, guidance_scale, seed)
            return {"images": images}

        limits = {"num_steps": (1, self.max_generate_steps), "batch": self.max_generate_batch}
        denoise_specs = [
            keras.InputSpec(shape=sample_spec, dtype="float32", name="x_t"),
            keras.InputSpec(shape=(None,), dtype="float32", name="timesteps"),
            keras.InputSpec(shape=(None, length), dtype="int32", name="token_ids"),
        ]

        def denoise(x_t, timesteps, token_ids):
            return {"prediction": self._denoise(x_t, timesteps, token_ids, training=False)}

        return {
            "generate_from_text": (generate_from_text, specs, limits),
            "denoise": (denoise, denoise_specs),
        }

    def export_endpoints(self):
        """Serving signatures `generate` (default) and `denoise`, with request limits.

        `generate` inputs: `noise` float32 `(None, *sample_shape)` (standard normal;
        latent-shaped for latent diffusion), `labels` int32 `(None,)` and
        `guidance_scale` float32 `(None,)` (class-conditional models only; `1.0` is
        plain conditional sampling), `num_steps` int32 `(None,)`, `seed` int32
        `(None,)` (noise of stochastic samplers). Output `images` float32 `(None,
        *image_shape)` in [-1, 1]. The whole `export_sampler` loop runs inside.
        Every input is per-example (TF Serving's batching concatenates requests
        along dimension 0): a batch with different `num_steps` runs to the largest,
        each example stepping on its own timestep table and holding its sample
        once its own count is reached, and each example's sampler noise is drawn
        from its own seed, so an example's image does not depend on the rest of its
        batch. Requests with `num_steps` outside `[1, max_generate_steps]`, a batch
        above `max_generate_batch`, labels outside `[0, num_classes]` or inputs of
        different batch sizes fail with InvalidArgumentError.

        `denoise` inputs: `x_t` float32 `(None, *sample_shape)`, `timesteps` float32
        `(None,)` (train timesteps, fractional allowed), `labels` int32 `(None,)`
        (class-conditional only). Output `prediction` float32 in `prediction_type`.

        LiteRT: `denoise` converts with builtin ops. The whole `generate` loop
        converts too (a builtin WHILE) for the deterministic samplers (`ddim`,
        `dpmpp_2m`, `euler`, `heun`) and matches Keras within 1e-4; `ddpm` draws
        noise inside the loop with stateless random ops that are not LiteRT
        builtins, so it exports to SavedModel only. The converter drops Assert ops:
        a LiteRT `generate` does not enforce the limits, and `num_steps` is clamped
        to `[1, num_train_timesteps]` by the sampler instead.

        Text-to-image models export `generate_from_text` (default) and `denoise`
        instead. `generate_from_text` inputs: `captions` `tf.string` `(None,)`,
        `num_steps` int32 `(None,)`, `guidance_scale` float32 `(None,)` (`1.0`:
        plain conditional sampling; `0.0`: unconditional), `seed` int32 `(None,)`
        (each example's initial noise is drawn inside from its own seed). Output
        `images` float32 `(None, *image_shape)`. Tokenizer, text encoder and the
        whole `export_sampler` loop run inside; empty captions give unconditional
        samples, captions longer than the tokenizer's `sequence_length` are
        truncated (first words kept), unknown words become `[UNK]`. The same
        `num_steps` and batch limits apply.
        `denoise` takes `token_ids` int32 `(None, sequence_length)` in place of
        `labels`. Strings are not LiteRT builtins: SavedModel only.

        Returns:
            `{name: (fn, input_specs, limits)}` (see `kzoo.export`).
        """
        sampler = self._make_sampler(self.export_sampler)
        if self.text_conditional:
            return self._text_export_endpoints(sampler)
        conditional = self.num_classes is not None
        sample_spec = (None, *self.sample_shape)
        specs = {
            "noise": keras.InputSpec(shape=sample_spec, dtype="float32", name="noise"),
            "labels": keras.InputSpec(shape=(None,), dtype="int32", name="labels"),
            "num_steps": keras.InputSpec(shape=(None,), dtype="int32", name="num_steps"),
            "guidance_scale": keras.InputSpec(
                shape=(None,), dtype="float32", name="guidance_scale"
            ),
            "seed": keras.InputSpec(shape=(None,), dtype="int32", name="seed"),
        }
        names = [
            name
            for name in GENERATE_INPUTS
            if conditional or name not in ("labels", "guidance_scale")
        ]

        def generate(*args):
            named = dict(zip(names, args, strict=True))
            checked = _same_batch(named["noise"], {name: named[name] for name in names[1:]})
            named.update(zip(names[1:], checked, strict=True))
            images = self._generate_graph(
                sampler,
                named["noise"],
                named.get("labels"),
                named["num_steps"],
                named.get("guidance_scale"),
                named["seed"],
            )
            return {"images": images}

        limits = {"num_steps": (1, self.max_generate_steps), "batch": self.max_generate_batch}
        if conditional:
            limits["labels"] = (0, self.num_classes)

        denoise_specs = [
            keras.InputSpec(shape=sample_spec, dtype="float32", name="x_t"),
            keras.InputSpec(shape=(None,), dtype="float32", name="timesteps"),
        ]
        if conditional:
            denoise_specs.append(keras.InputSpec(shape=(None,), dtype="int32", name="labels"))

        def denoise(x_t, timesteps, labels=None):
            return {"prediction": self._denoise(x_t, timesteps, labels, training=False)}

        return {
            "generate": (generate, [specs[name] for name in names], limits),
            "denoise": (denoise, denoise_specs),
        }

    def export_png_endpoints(self):
        """`generate_png` (`generate_from_text_png` for a text model): the same inputs,
        PNG bytes out (SavedModel only, `kzoo.export.image_bytes`)."""
        if self.text_conditional:
            return {"generate_from_text_png": "generate_from_text"}
        return {"generate_png": "generate"}

    def export_parity_batch(self):
        """A fixed, meaningful parity batch for `kzoo.export`: `{endpoint: {input: array}}`.

        `generate`: standard-normal noise for 2 samples, labels `[0, num_classes - 1]`,
        `num_steps=[4, 4]`, `guidance_scale=[3, 3]`, `seed=[0, 1]`. `denoise`: standard-normal
        `x_t` at timesteps `[0.25 T, 0.75 T]`, labels `[0, num_classes]` (one null).
        """
        rng = np.random.default_rng(0)
        shape = (PARITY_BATCH_SIZE, *self.sample_shape)
        total = self.schedule.num_train_timesteps
        if self.text_conditional:
            return self._text_parity_batch(rng, shape, total)
        generate = {
            "noise": rng.standard_normal(shape).astype(np.float32),
            "num_steps": np.full(
                PARITY_BATCH_SIZE, min(PARITY_NUM_STEPS, self.max_generate_steps), np.int32
            ),
            "seed": np.arange(PARITY_BATCH_SIZE, dtype=np.int32),
        }
        denoise = {
            "x_t": rng.standard_normal(shape).astype(np.float32),
            "timesteps": np.array([0.25 * (total - 1), 0.75 * (total - 1)], np.float32),
        }
        if self.num_classes is not None:
            generate["labels"] = np.array([0, self.num_classes - 1], np.int32)
            generate["guidance_scale"] = np.full(
                PARITY_BATCH_SIZE, PARITY_GUIDANCE_SCALE, np.float32
            )
            denoise["labels"] = np.array([0, self.num_classes], np.int32)
        return {"generate": generate, "denoise": denoise}

    def _text_parity_batch(self, rng, shape, total):
        """Captions with an empty and an over-long one (batch capped at `max_generate_batch`)."""
        captions = np.array(
            [
                "a small red circle at the top left on a blue background",
                "",
                " ".join(["a large white square"] * 10),
            ],
            dtype=np.bytes_,  # bytes load without pickling in the parity runner
        )
        token_ids = ops.convert_to_numpy(self.tokenizer(captions[:PARITY_BATCH_SIZE].tolist()))
        captions = captions[: self.max_generate_batch]
        batch = len(captions)
        return {
            "generate_from_text": {
                "captions": captions,
                "num_steps": np.full(
                    batch, min(PARITY_NUM_STEPS, self.max_generate_steps), "int32"
                ),
                "guidance_scale": np.full(batch, PARITY_GUIDANCE_SCALE, np.float32),
                "seed": np.arange(batch, dtype=np.int32),
            },
            "denoise": {
                "x_t": rng.standard_normal(shape).astype(np.float32),
                "timesteps": np.array([0.25 * (total - 1), 0.75 * (total - 1)], np.float32),
                "token_ids": np.asarray(token_ids, np.int32)[: shape[0]],
            },
        }

    # === Config ===
    def get_config(self):
        text = {}
        if self.text_conditional:
            text = {
                "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "caption_dropout_prob": self.caption_dropout_prob,
            }
        return {
            "name": self.name,
            "trainable": self.trainable,
            "denoiser": keras.saving.serialize_keras_object(self.denoiser),
            "schedule": self.schedule.get_config(),
            "prediction_type": self.prediction_type,
            "num_classes": self.num_classes,
            "class_dropout_prob": self.class_dropout_prob,
            "snr_gamma": self.snr_gamma,
            "timestep_sampling": self.timestep_sampling,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
            "noise_offset": self.noise_offset,
            "autoencoder": (
                None
                if self.autoencoder is None
                else keras.saving.serialize_keras_object(self.autoencoder)
            ),
            "latent_scale": self._latent_scale_config,
            "max_generate_steps": self.max_generate_steps,
            "max_generate_batch": self.max_generate_batch,
            "export_sampler": self.export_sampler,
            "clip_sample": self.clip_sample,
            "sample_shape": self._sample_shape_config,
            "seed": self.seed,
            **text,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["denoiser"] = keras.saving.deserialize_keras_object(config["denoiser"])
        if config.get("autoencoder") is not None:
            config["autoencoder"] = keras.saving.deserialize_keras_object(config["autoencoder"])
        if isinstance(config.get("text_encoder"), dict):
            config["text_encoder"] = keras.saving.deserialize_keras_object(config["text_encoder"])
        # A serialized `tokenizer` is deserialized by the constructor, after it has
        # imported (and so registered) `kzoo.data.tokenizer`.
        if isinstance(config.get("sample_shape"), list):
            config["sample_shape"] = tuple(config["sample_shape"])
        return cls(**config)
