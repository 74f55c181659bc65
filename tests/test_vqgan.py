"""VQGAN, PatchGAN discriminator and the LPIPS-style perceptual distance (tiny configs)."""

import math
import os

import keras
import numpy as np
import pytest

from kzoo.models import VQGAN, Discriminator, ShapesPerceptual, perceptual_distance
from kzoo.models.perceptual import load_or_train_shapes_perceptual
from kzoo.models.vqgan import adaptive_weight, hinge_discriminator_loss
from kzoo.testing import dtype_policy

NAMED_LOSSES = ("loss", "rec_loss", "perceptual_loss", "vq_loss", "g_loss", "d_loss", "disc_weight")


def tiny_vqgan(image_size=16, **overrides):
    args = dict(
        image_shape=(image_size, image_size, 3),
        codebook_size=16,
        embedding_dim=8,
        channels=(8, 16),
        num_res_blocks=1,
        norm_groups=4,
        disc_channels=(8, 16),
        disc_start_step=2,
        perceptual_model=ShapesPerceptual(image_size=image_size, filters=(8, 16)),
    )
    args.update(overrides)
    return VQGAN(**args)


def images(count=8, size=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype("float32")


class _DiscSnapshots(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.snapshots.append(
            [np.array(v) for v in self.model.discriminator.trainable_variables]
        )


@pytest.fixture(scope="module")
def trained():
    """A tiny VQGAN after 4 one-step epochs on one batch, the discriminator starting at step 2."""
    keras.utils.set_random_seed(0)
    model = tiny_vqgan()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), run_eagerly=True)
    model.snapshots = [[np.array(v) for v in model.discriminator.trainable_variables]]
    history = model.fit(
        images(), batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[_DiscSnapshots()]
    )
    return model, history.history


def test_fit_lowers_rec_loss_and_logs_every_named_loss(trained):
    _, history = trained
    for name in (*NAMED_LOSSES, "vq_perplexity", "vq_usage"):
        assert name in history, sorted(history)
        assert all(math.isfinite(v) for v in history[name]), (name, history[name])
    assert history["rec_loss"][-1] < history["rec_loss"][0] - 0.02, history["rec_loss"]
    assert all(v > 0 for v in history["perceptual_loss"])


def test_discriminator_starts_at_disc_start_step(trained):
    model, history = trained
    np.testing.assert_array_equal(history["d_loss"][:2], [0.0, 0.0])
    assert all(v > 0 for v in history["d_loss"][2:]), history["d_loss"]
    before, after_two, after_four = model.snapshots[0], model.snapshots[2], model.snapshots[4]
    for a, b in zip(before, after_two, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(after_two, after_four, strict=True))
    assert int(model.optimizer.iterations) == 4
    assert int(model.discriminator_optimizer.iterations) == 2


def test_adaptive_weight_finite_and_positive(trained):
    _, history = trained
    assert all(0 < v < 1e4 for v in history["disc_weight"]), history["disc_weight"]
    # Eq. 7: ||a|| / (||b|| + 1e-4), clipped; non-finite -> 0.
    weight = float(adaptive_weight(np.full((3,), 2.0), np.full((3,), 1.0)))
    assert weight == pytest.approx(2 * math.sqrt(3) / (math.sqrt(3) + 1e-4), rel=1e-6)
    assert float(adaptive_weight(np.array([np.inf]), np.array([1.0]))) == 0.0


def _generator_weights_after(steps, **overrides):
    """Generator weights of a tiny VQGAN after `steps` SGD steps on one batch, and its history."""
    keras.utils.set_random_seed(0)
    model = tiny_vqgan(disc_start_step=0, **overrides)
    model.compile(optimizer=keras.optimizers.SGD(0.05), run_eagerly=True)
    history = model.fit(images(), batch_size=8, epochs=steps, shuffle=False, verbose=0)
    return [np.array(v) for v in model.generator_variables], history.history


def test_disc_warmup_ramps_the_adversarial_loss_in_while_the_discriminator_trains():
    no_adversarial, _ = _generator_weights_after(3, disc_weight=0.0)
    ramped, history = _generator_weights_after(3, disc_warmup_steps=10**9)
    switched, _ = _generator_weights_after(3)
    # A ramp of 1e9 steps: the generator is (numerically) untouched by the GAN loss ...
    for a, b in zip(no_adversarial, ramped, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # ... while the discriminator trains from the start step.
    assert all(v > 0 for v in history["d_loss"]), history["d_loss"]
    # Without a ramp the adversarial loss moves the generator at once.
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(no_adversarial, switched, strict=True))


def test_hinge_loss_values():
    real, fake = np.array([2.0, 0.0]), np.array([-2.0, 0.5])
    # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * (0.5 + 0.75)
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.625)


def test_keras_round_trip_keeps_weights_and_both_optimizers(trained, tmp_path):
    model, _ = trained
    path = os.path.join(tmp_path, "vqgan.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    batch = images(2, seed=1)
    np.testing.assert_array_equal(reloaded(batch), model(batch))
    np.testing.assert_array_equal(reloaded.encode(batch), model.encode(batch))
    assert int(reloaded.discriminator_optimizer.iterations) == 2
    assert isinstance(reloaded.perceptual_model, ShapesPerceptual)
    for a, b in zip(
        reloaded.discriminator.trainable_variables,
        model.discriminator.trainable_variables,
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert reloaded.get_config() == model.get_config()


def test_mixed_float16_step_is_finite_with_two_loss_scale_optimizers():
    with dtype_policy("mixed_float16"):
        model = tiny_vqgan(
            image_size=8,
            channels=(4, 8),
            disc_channels=(4, 8),
            disc_start_step=0,
            perceptual_model=ShapesPerceptual(image_size=8, filters=(4, 8)),
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.discriminator_optimizer, keras.optimizers.LossScaleOptimizer)
        before = [np.array(v) for v in model.discriminator.trainable_variables]
        history = model.fit(images(4, size=8), batch_size=4, epochs=1, verbose=0).history
    for name in NAMED_LOSSES:
        assert math.isfinite(history[name][0]), (name, history[name])
    # Logged losses are unscaled (the initial loss scale is 32768).
    assert 0 < history["rec_loss"][0] < 10 and 0 < history["d_loss"][0] < 10
    after = model.discriminator.trainable_variables
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_perceptual_distance_zero_for_identical_images_positive_otherwise():
    network = ShapesPerceptual(image_size=16, filters=(8, 16))
    a, b = images(3, seed=0), images(3, seed=1)
    np.testing.assert_allclose(network.distance(a, a), np.zeros(3), atol=1e-6)
    distance = np.asarray(network.distance(a, b))
    assert distance.shape == (3,) and np.all(distance > 1e-3)
    # Any model giving a list of feature maps works; a single map is a list of one.
    np.testing.assert_allclose(
        perceptual_distance(network(a), network(b)), distance, rtol=1e-6, atol=1e-7
    )


def test_default_perceptual_network_is_trained_once_and_cached(tmp_path):
    first = load_or_train_shapes_perceptual(image_size=16, steps=3, seed=0, cache_dir=tmp_path)
    files = [f for f in os.listdir(tmp_path) if f.endswith(".weights.h5")]
    assert len(files) == 1 and not files[0].startswith(".tmp-"), os.listdir(tmp_path)
    second = load_or_train_shapes_perceptual(image_size=16, steps=3, seed=0, cache_dir=tmp_path)
    assert not second.trainable
    batch = images(2)
    for a, b in zip(first(batch), second(batch), strict=True):
        np.testing.assert_array_equal(a, b)


def test_discriminator_rejects_other_image_sizes():
    disc = Discriminator((16, 16, 3), channels=(8, 16), norm_groups=4)
    assert tuple(disc(images(2)).shape) == (2, 8, 8, 1)
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 8, 8, 3\)"):
        disc(images(2, size=8))


def test_encode_decode_shapes(trained):
    model, _ = trained
    codes = model.encode(images(2))
    assert tuple(codes.shape) == (2, 8, 8)
    assert keras.backend.standardize_dtype(codes.dtype) == "int32"
    assert tuple(model.decode(codes).shape) == (2, 16, 16, 3)
    assert set(model.export_endpoints()) == {"serving_default", "encode", "decode"}


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"disc_channels": ()}, "disc_channels"),
        ({"disc_start_step": -1}, "disc_start_step=-1"),
        ({"disc_warmup_steps": 2.5}, "disc_warmup_steps=2.5"),
        ({"disc_weight": -0.5}, "disc_weight=-0.5"),
        ({"perceptual_weight": "high"}, "perceptual_weight='high'"),
        ({"disc_channels": (8, 6)}, "norm_groups=4"),
    ],
)
def test_bad_arguments_name_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_vqgan(**overrides)


def test_compile_rejects_a_loss():
    with pytest.raises(ValueError, match="Received: loss='mse'"):
        tiny_vqgan().compile(optimizer="adam", loss="mse")
