"""DiffusionModel: training step, CFG dropout, prediction types, min-SNR, mixed precision,
.keras round trip, generate, latent diffusion, bad input, and the diffusion recipes."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.diffusion import (
    DDIMSampler,
    DiffusionModel,
    make_schedule,
    min_snr_loss_weight,
    sample,
)
from kzoo.testing import dtype_policy, tiny_vqvae

SHAPE = (4, 4, 2)


@keras.saving.register_keras_serializable(package="kzoo_tests")
class TinyDenoiser(keras.Model):
    """Follows the denoiser contract: `([x_t, t(, labels)]) -> prediction like x_t` (float32)."""

    def __init__(self, shape=SHAPE, num_classes=None, out_channels=None, out_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.shape_ = tuple(shape)
        self.num_classes = num_classes
        self.out_channels = out_channels
        self.out_scale = out_scale
        self.image_shape = self.shape_
        self.time_dense = keras.layers.Dense(8, name="time_dense")
        self.conv_in = keras.layers.Conv2D(8, 3, padding="same", activation="silu", name="conv_in")
        self.conv_out = keras.layers.Conv2D(
            out_channels or self.shape_[-1], 3, padding="same", dtype="float32", name="conv_out"
        )
        self.label_embedding = (
            keras.layers.Embedding(num_classes + 1, 8, name="labels")
            if num_classes is not None
            else None
        )

    def call(self, inputs):
        x, t = inputs[0], inputs[1]
        embedding = self.time_dense(ops.expand_dims(ops.cast(t, "float32") / 1000.0, -1))
        if self.label_embedding is not None:
            embedding = embedding + self.label_embedding(inputs[2])
        h = self.conv_in(x) + ops.cast(embedding[:, None, None, :], self.compute_dtype)
        return self.conv_out(h) * self.out_scale

    def get_config(self):
        return {
            **super().get_config(),
            "shape": self.shape_,
            "num_classes": self.num_classes,
            "out_channels": self.out_channels,
            "out_scale": self.out_scale,
        }


def make_model(num_classes=None, shape=SHAPE, **kwargs):
    kwargs.setdefault("seed", 0)
    return DiffusionModel(TinyDenoiser(shape, num_classes=num_classes), **kwargs)


def toy_data(num=64, shape=SHAPE, seed=0):
    """Images that are one of 3 constant patterns; the label says which."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(-1, 1, (3, *shape)).astype(np.float32)
    labels = np.arange(num) % 3
    return patterns[labels], labels.astype(np.int32)


# === Training ===


def test_train_step_lowers_the_loss_on_a_toy_dataset():
    model = make_model(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images, labels = toy_data(80)
    weights_before = [np.array(w) for w in model.denoiser.weights]
    history = model.fit(images, labels, batch_size=16, epochs=6, verbose=0)  # 30 steps
    losses = history.history["loss"]
    assert list(history.history) == ["loss"]
    assert np.all(np.isfinite(losses))
    # eps-prediction MSE starts near 1 (unit-variance noise) and must clearly drop.
    assert 0.7 < losses[0] < 1.6
    assert losses[-1] < 0.6 * losses[0], losses
    # Only the denoiser trains; the evaluation loss is on the same scale.
    assert any(
        np.abs(np.array(w) - b).max() > 0
        for w, b in zip(model.denoiser.weights, weights_before, strict=True)
    )
    assert model.evaluate(images, labels, batch_size=16, verbose=0) < losses[0]


def test_unconditional_model_trains_on_images_alone_and_rejects_labels():
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images, labels = toy_data(32)
    assert np.isfinite(model.fit(images, batch_size=16, verbose=0).history["loss"][0])
    with pytest.raises(ValueError, match="unconditional"):
        model.fit(images, labels, batch_size=16, verbose=0)
    conditional = make_model(num_classes=3)
    conditional.compile(optimizer="adam")
    with pytest.raises(ValueError, match="num_classes=3"):
        conditional.fit(images, batch_size=16, verbose=0)


def test_class_dropout_replaces_labels_by_the_null_class_at_the_given_rate():
    model = make_model(num_classes=3, class_dropout_prob=0.3)
    images = np.zeros((4000, *SHAPE), np.float32)
    labels = np.arange(4000) % 3
    _, _, dropped, _ = model._noised_batch((images, labels), training=True)
    dropped = np.asarray(dropped)
    is_null = dropped == 3
    assert abs(is_null.mean() - 0.3) < 0.03
    np.testing.assert_array_equal(dropped[~is_null], labels[~is_null])
    # Evaluation keeps every label; each call draws a new mask.
    _, _, kept, _ = model._noised_batch((images, labels), training=False)
    np.testing.assert_array_equal(np.asarray(kept), labels)
    _, _, again, _ = model._noised_batch((images, labels), training=True)
    assert np.any((np.asarray(again) == 3) != is_null)


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_targets_of_each_prediction_type_are_consistent_with_x_t(prediction_type):
    model = make_model(schedule="cosine", prediction_type=prediction_type)
    x0 = np.random.default_rng(1).uniform(-1, 1, (256, *SHAPE)).astype(np.float32)
    x_t, t, labels, target = model._noised_batch(x0, training=True)
    t = np.asarray(t)
    assert labels is None and t.dtype == np.int32 and t.min() >= 0 and t.max() < 1000
    assert len(np.unique(t)) > 100  # timesteps are drawn per example
    ac = make_schedule("cosine").alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t, target = np.asarray(x_t), np.asarray(target)
    if prediction_type == "eps":
        recovered = (x_t - np.sqrt(1 - ac) * target) / np.sqrt(ac)
        np.testing.assert_allclose(recovered[t < 900], x0[t < 900], atol=2e-3)
        assert abs(target.std() - 1.0) < 0.05
    elif prediction_type == "v":
        np.testing.assert_allclose(np.sqrt(ac) * x_t - np.sqrt(1 - ac) * target, x0, atol=1e-5)
    else:
        np.testing.assert_array_equal(target, x0)
    prediction = model._denoise(x_t, t, None, training=True)
    assert np.isfinite(float(model._diffusion_loss(prediction, target, t)))


def test_min_snr_weighting_weights_each_example_mse():
    images = np.random.default_rng(2).uniform(-1, 1, (8, *SHAPE)).astype(np.float32)
    for prediction_type in ("eps", "v"):
        model = make_model(prediction_type=prediction_type, snr_gamma=5.0)
        plain = make_model(prediction_type=prediction_type)
        x_t, t, _, target = model._noised_batch(images, training=True)
        prediction = model._denoise(x_t, t, None, training=False)
        per_example = np.mean((np.asarray(prediction) - np.asarray(target)) ** 2, axis=(1, 2, 3))
        weights = np.asarray(min_snr_loss_weight(model.schedule, t, prediction_type, 5.0))
        assert not np.allclose(weights, 1.0)
        weighted = float(model._diffusion_loss(prediction, target, t))
        np.testing.assert_allclose(weighted, np.mean(weights * per_example), rtol=1e-5)
        np.testing.assert_allclose(
            float(plain._diffusion_loss(prediction, target, t)), per_example.mean(), rtol=1e-5
        )


def test_logit_normal_timesteps_follow_the_sigmoid_of_a_normal():
    """t / T = sigmoid(n), n ~ N(mean, std): the draws' logits have that mean and std."""
    images = np.zeros((4096, 2, 2, 1), np.float32)
    uniform = DiffusionModel(TinyDenoiser((2, 2, 1)), seed=0)
    default = DiffusionModel(TinyDenoiser((2, 2, 1)), seed=0, timestep_sampling="logit_normal")
    shifted = DiffusionModel(
        TinyDenoiser((2, 2, 1)),
        seed=0,
        timestep_sampling="logit_normal",
        logit_mean=1.0,
        logit_std=0.5,
    )
    total = uniform.schedule.num_train_timesteps
    draws = {}
    for name, model in (("uniform", uniform), ("default", default), ("shifted", shifted)):
        t = np.asarray(model._noised_batch(images, training=True)[1])
        assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= total - 1
        draws[name] = t
    middle = {name: np.mean((t >= 0.27 * total) & (t < 0.73 * total)) for name, t in draws.items()}
    # Binomial SE of a share of 4,096 draws is at most 0.008: 0.46 and 0.68 are
    # the exact shares of the band (uniform; Phi(1) - Phi(-1) for N(0, 1)).
    assert abs(middle["uniform"] - 0.46) < 0.03 and abs(middle["default"] - 0.68) < 0.03
    logits = np.log((draws["shifted"] + 0.5) / (total - draws["shifted"] - 0.5))
    assert abs(logits.mean() - 1.0) < 0.03 and abs(logits.std() - 0.5) < 0.03
    # Uniform sampling draws what it drew before the option existed (same stream).
    expected = keras.random.randint(
        (4096,), 0, total, dtype="int32", seed=keras.random.SeedGenerator(0)
    )
    np.testing.assert_array_equal(draws["uniform"], np.asarray(expected))


def test_noise_offset_adds_one_constant_per_example_and_channel():
    """The training noise is eps + offset * n[b, c]: its spatial mean varies that much more."""
    images = np.zeros((512, 8, 8, 2), np.float32)
    plain = make_model(shape=(8, 8, 2), prediction_type="eps")
    offset = make_model(shape=(8, 8, 2), prediction_type="eps", noise_offset=0.5)
    means = {}
    for name, model in (("plain", plain), ("offset", offset)):
        # eps prediction: the target is the noise itself.
        target = np.asarray(model._noised_batch(images, training=True)[3])
        means[name] = target.mean(axis=(1, 2))  # (B, C)
        # Around the spatial mean, the noise is still unit Gaussian.
        assert abs((target - means[name][:, None, None]).std() - 1.0) < 0.05
    # Spatial means: std 1/8 for plain noise on 8x8, sqrt(1/64 + 0.25) with the
    # offset (512 x 2 values: the sample std is within 5% of the true one).
    assert abs(means["plain"].std() - 1 / 8) < 0.1 / 8
    assert abs(means["offset"].std() - np.sqrt(1 / 64 + 0.25)) < 0.05 * np.sqrt(1 / 64 + 0.25)
    # Channels get their own constants.
    assert abs(np.corrcoef(means["offset"][:, 0], means["offset"][:, 1])[0, 1]) < 0.15


def test_mixed_float16_step_is_finite_and_scales_the_loss():
    with dtype_policy("mixed_float16"):
        model = make_model(num_classes=3)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.denoiser.conv_in.compute_dtype == "float16"
        images, labels = toy_data(32)
        before = np.array(model.denoiser.conv_in.kernel)
        history = model.fit(images, labels, batch_size=16, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert model.optimizer.iterations.numpy() >= 1  # steps with finite grads applied
        assert np.abs(np.array(model.denoiser.conv_in.kernel) - before).max() > 0
        assert model.denoiser.conv_in.kernel.dtype == "float32"
        assert np.isfinite(float(model.optimizer.dynamic_scale))
        out = model.generate(num_images=2, num_steps=3)
        assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_ema_optimizer_swaps_averaged_weights_in_at_the_end_of_fit():
    model = make_model(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5))
    images, labels = toy_data(32)
    model.fit(images, labels, batch_size=16, epochs=2, verbose=0)
    ema = {
        v.path: np.array(e)
        for v, e in zip(
            model.trainable_variables,
            model.optimizer._model_variables_moving_average,
            strict=True,
        )
    }
    for variable in model.trainable_variables:
        np.testing.assert_array_equal(np.array(variable), ema[variable.path])


# === Saving ===


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    model = make_model(
        num_classes=3,
        schedule={"name": "cosine", "num_train_timesteps": 500},
        prediction_type="v",
        snr_gamma=5.0,
        timestep_sampling="logit_normal",
        logit_mean=0.5,
        noise_offset=0.1,
        max_generate_steps=100,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images, labels = toy_data(32)
    model.fit(images, labels, batch_size=16, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DiffusionModel)
    assert json.dumps(loaded.get_config()) == json.dumps(model.get_config())
    assert loaded.schedule == model.schedule and loaded.image_shape == SHAPE
    x = np.random.default_rng(3).standard_normal((3, *SHAPE)).astype(np.float32)
    t, y = np.array([0, 250, 499], np.int32), np.array([0, 1, 3], np.int32)
    np.testing.assert_array_equal(loaded([x, t, y]), model([x, t, y]))
    np.testing.assert_array_equal(
        loaded.generate(labels=[0, 2], num_steps=5, guidance_scale=2.0, seed=4),
        model.generate(labels=[0, 2], num_steps=5, guidance_scale=2.0, seed=4),
    )
    # The optimizer state came back too: training continues from the same step.
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 2


# === Generate ===


def test_generate_shapes_range_determinism_and_the_sampler_loop():
    model = make_model(num_classes=3, prediction_type="v", max_generate_batch=2)
    first = model.generate(labels=[0, 1, 2, 1, 0], num_steps=6, seed=5)
    assert first.shape == (5, *SHAPE) and first.dtype == np.float32
    assert first.min() >= -1.0 and first.max() <= 1.0
    np.testing.assert_array_equal(
        first, model.generate(labels=[0, 1, 2, 1, 0], num_steps=6, seed=5)
    )
    assert np.abs(first - model.generate(labels=[0, 1, 2, 1, 0], num_steps=6, seed=6)).max() > 1e-3
    # Chunked by max_generate_batch=2, the result is the DDIM loop on numpy noise of `seed`.
    noise = np.random.default_rng(5).standard_normal((5, *SHAPE)).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 0], np.int32)

    def denoiser(x, t, y):
        return model.denoiser([x, t, y])

    # A pixel-space model's samplers clip each step's x0 to the data range [-1, 1].
    ddim = DDIMSampler(model.schedule, prediction_type="v", clip_sample=True)
    expected = sample(denoiser, ddim, noise, 6, conditioning=labels)
    np.testing.assert_allclose(first, np.clip(expected, -1, 1), atol=1e-5)
    # Without labels the classes cycle; guided sampling differs from plain sampling.
    assert model.generate(num_images=4, num_steps=3).shape == (4, *SHAPE)
    guided = model.generate(labels=[0, 1], num_steps=6, seed=5, guidance_scale=4.0)
    assert np.abs(guided - first[:2]).max() > 1e-4
    np.testing.assert_allclose(
        model.generate(labels=[0, 1], num_steps=6, seed=5, guidance_scale=1.0), first[:2], atol=1e-5
    )


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "euler", "heun"])
def test_generate_with_each_sampler(sampler):
    model = make_model(prediction_type="x0")
    images = model.generate(num_images=2, num_steps=4, sampler=sampler, seed=1)
    assert images.shape == (2, *SHAPE) and np.all(np.abs(images) <= 1.0)
    np.testing.assert_array_equal(
        images, model.generate(num_images=2, num_steps=4, sampler=sampler, seed=1)
    )


# === Latent diffusion ===


def test_latent_diffusion_trains_on_scaled_latents_and_decodes(tmp_path):
    vqvae = tiny_vqvae()
    ae_weights = [np.array(w) for w in vqvae.weights]
    model = DiffusionModel(TinyDenoiser((4, 4, 4), num_classes=3), autoencoder=vqvae, seed=0)
    assert model.image_shape == (8, 8, 3) and model.sample_shape == (4, 4, 4)
    assert not vqvae.trainable and float(model.latent_scale) == 0.0
    assert len(model.trainable_variables) == len(model.denoiser.trainable_variables)
    images = np.random.default_rng(4).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    labels = np.arange(32) % 3
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(images, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # 1 / std of the first batch's pre-quantization latents, estimated once.
    latents = np.asarray(vqvae.encoder(images[:16]))
    np.testing.assert_allclose(float(model.latent_scale), 1.0 / latents.std(), rtol=1e-4)
    for before, after in zip(ae_weights, vqvae.weights, strict=True):
        np.testing.assert_array_equal(before, np.array(after))
    generated = model.generate(labels=[0, 1, 2], num_steps=3, guidance_scale=2.0)
    assert generated.shape == (3, 8, 8, 3) and np.all(np.abs(generated) <= 1.0)
    # Decoding goes through the quantizer: equal to decoding the nearest codes.
    x = np.random.default_rng(5).standard_normal((2, 4, 4, 4)).astype(np.float32)
    codes = vqvae.quantizer.get_code_indices(x / float(model.latent_scale))
    decoded = np.asarray(model._decode(x))
    np.testing.assert_allclose(decoded, np.clip(vqvae.decode(codes), -1, 1), atol=1e-6)
    # The autoencoder and the estimated scale are saved with the model.
    path = os.path.join(tmp_path, "latent.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(loaded.latent_scale) == float(model.latent_scale)
    assert not loaded.autoencoder.trainable
    # Deserialized frozen, its sublayers stay frozen: the optimizer state loads 1:1.
    assert len(loaded.trainable_variables) == len(model.denoiser.trainable_variables)
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    np.testing.assert_array_equal(np.asarray(loaded._decode(x)), decoded)


def test_clip_sample_defaults_to_pixel_space_only():
    assert make_model()._make_sampler("ddim").clip_sample is True
    unclipped = make_model(clip_sample=False)
    assert unclipped._make_sampler("euler").clip_sample is False
    assert DiffusionModel.from_config(unclipped.get_config()).clip_sample is False
    latent = DiffusionModel(TinyDenoiser((4, 4, 4)), autoencoder=tiny_vqvae(), latent_scale=0.5)
    assert latent.clip_sample is None and latent._make_sampler("dpmpp_2m").clip_sample is False


def test_given_latent_scale_is_kept():
    model = DiffusionModel(TinyDenoiser((4, 4, 4)), autoencoder=tiny_vqvae(), latent_scale=0.5)
    model.compile(optimizer="adam")
    model.fit(np.zeros((16, 8, 8, 3), np.float32), batch_size=16, verbose=0)
    assert float(model.latent_scale) == 0.5


# === Bad input ===


def test_bad_constructor_arguments_raise_clear_errors():
    denoiser = TinyDenoiser()
    cases = [
        (dict(schedule="quadratic"), "Received: schedule='quadratic'"),
        (dict(schedule={"name": "linear", "steps": 10}), "Received: schedule="),
        (dict(prediction_type="score"), "Received: prediction_type='score'"),
        (dict(class_dropout_prob=1.0), "Received: class_dropout_prob=1.0"),
        (dict(clip_sample="yes"), "Received: clip_sample='yes'"),
        (dict(snr_gamma=0), "Received: snr_gamma=0"),
        (dict(timestep_sampling="lognormal"), "Received: timestep_sampling='lognormal'"),
        (dict(logit_std=0.0), "Received: logit_std=0.0"),
        (dict(logit_mean="high"), "Received: logit_mean='high'"),
        (dict(noise_offset=-0.1), "Received: noise_offset=-0.1"),
        (dict(max_generate_steps=2000), "Received: max_generate_steps=2000"),
        (dict(max_generate_batch=0), "Received: max_generate_batch=0"),
        (dict(export_sampler="plms"), "Received: export_sampler='plms'"),
        (dict(latent_scale=0.2), "Received: latent_scale=0.2"),
        (dict(num_classes=0), "Received: num_classes=0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            DiffusionModel(denoiser, **kwargs)
    with pytest.raises(ValueError, match="Received: num_classes=4"):
        DiffusionModel(TinyDenoiser(num_classes=3), num_classes=4)
    with pytest.raises(TypeError, match="denoiser"):
        DiffusionModel(lambda inputs: inputs[0])


def test_denoiser_output_shape_and_latent_shape_are_checked_at_construction():
    with pytest.raises(
        ValueError, match=r"shaped like its input.*Received: output shape=\(1, 4, 4, 4\)"
    ):
        DiffusionModel(TinyDenoiser(out_channels=4))
    with pytest.raises(
        ValueError, match=r"Wrong latent shape.*Received: denoiser input shape=\(4, 4, 2\)"
    ):
        DiffusionModel(TinyDenoiser((4, 4, 2)), autoencoder=tiny_vqvae())
    with pytest.raises(ValueError, match="Received: sample_shape=None"):
        DiffusionModel(keras.layers.Conv2D(2, 3, padding="same"))
    # A layer that declares no shape works once told it.
    model = DiffusionModel(
        keras.layers.Lambda(lambda inputs: inputs[0] * 0.5), sample_shape=(4, 4, 2)
    )
    assert model.generate(num_images=1, num_steps=2).shape == (1, 4, 4, 2)


def test_bad_generate_requests_raise_clear_errors():
    conditional = make_model(
        num_classes=3,
        schedule={"name": "linear", "num_train_timesteps": 100},
        max_generate_steps=50,
    )
    unconditional = make_model()
    no_null = make_model(num_classes=3, class_dropout_prob=0.0)
    cases = [
        (conditional, dict(labels=[0], num_steps=0), "Received: num_steps=0"),
        (conditional, dict(labels=[0], num_steps=101), "Received: num_steps=101"),
        (
            unconditional,
            dict(num_images=1, guidance_scale=3.0),
            "num_classes=None. Received: guidance_scale=3.0",
        ),
        (
            no_null,
            dict(labels=[0], guidance_scale=3.0),
            "class_dropout_prob=0. Received: guidance_scale=3.0",
        ),
        (conditional, dict(labels=[0, 4]), r"Received: labels=\[0, 4\]"),
        (unconditional, dict(labels=[0]), "Received: labels="),
        (conditional, dict(num_images=3, labels=[0, 1]), "Received: num_images=3"),
        (unconditional, dict(), "Received: num_images=None"),
        (conditional, dict(labels=[0], sampler="plms"), "Received: sampler='plms'"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.generate(**kwargs)
    other = DDIMSampler(make_schedule("cosine"))
    with pytest.raises(ValueError, match="Received: sampler with prediction_type"):
        unconditional.generate(num_images=1, sampler=other)
    with pytest.raises(ValueError, match=r"Received: images.shape=\(\w+, 8, 8, 2\)"):
        unconditional.compile(optimizer="adam")
        unconditional.fit(np.zeros((2, 8, 8, 2), np.float32), verbose=0)


# === Recipes ===


TINY_DIT = ["model.denoiser.hidden_size=16", "model.denoiser.depth=1", "model.denoiser.num_heads=2"]


@pytest.mark.slow  # tracing a U-Net's gradient takes tens of seconds on 2 shared cores
@pytest.mark.parametrize(
    "recipe, overrides",
    # ddpm_unet_shapes and dit_shapes train and sample the same way, tiny, through the
    # CLI on their docs pages (tests/test_docs.py); CI time keeps them out of here.
    [("latent_dit_shapes", TINY_DIT)],
)
def test_recipes_build_and_train_two_steps(recipe, overrides, tmp_path):
    import recipes
    from kzoo.training import checkpoint, trainer

    config = recipes.get_recipe(
        recipe, [*overrides, "batch_size=8", "steps=2", "steps_per_epoch=2"]
    )
    assert config["outputs"] == ("image", "label")
    assert config["model"]["class_name"] == "DiffusionModel"
    if recipe == "latent_dit_shapes":
        # What the trainer does with `autoencoder_workdir`: load the trained VQ-VAE
        # checkpoint and hand it to the model as `autoencoder`.
        import recipes.vqvae_shapes

        vq_config = recipes.get_recipe(
            "vqvae_shapes",
            ["model.channels=(8,16)", "model.norm_groups=4", "model.embedding_dim=32"],
        )
        vq_dir = os.path.join(tmp_path, "vqvae")
        os.makedirs(vq_dir)
        vqvae = trainer.build_model(vq_config["model"])
        vqvae.compile(optimizer="adam")
        vqvae.optimizer.build(vqvae.trainable_variables)
        checkpoint.save_checkpoint(vqvae, vq_dir, epoch=1, step=1)
        assert config["autoencoder_workdir"] == "runs/vqvae_shapes"
        autoencoder = checkpoint.load_trained_model(vq_dir)
        model = trainer.build_model({**config["model"], "autoencoder": autoencoder})
    else:
        model = trainer.build_model(config["model"])
    assert model.image_shape == (32, 32, 3)
    model.compile(optimizer=trainer.build_optimizer(config))
    dataset = trainer.train_dataset(config, model)
    images, labels = next(iter(dataset))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)
    history = model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.optimizer.iterations.numpy() == 2
    assert model.generate(labels=[0, 5], num_steps=2, guidance_scale=2.0).shape == (2, 32, 32, 3)
