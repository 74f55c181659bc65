import keras
import numpy as np
import pytest
from keras import ops

from kzoo.models import VQVAE
from kzoo.testing import assert_keras_roundtrip, gradients

TINY = dict(
    image_shape=(16, 16, 3),
    codebook_size=16,
    embedding_dim=8,
    channels=(8, 16),
    num_res_blocks=1,
    norm_groups=4,
)


def _images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype("float32")


def _blobs(n=64, seed=0):
    """Smooth, learnable images: a coloured square on a dark background."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 16, 16, 3), -0.8, "float32")
    for image in images:
        y, x = rng.integers(0, 10, size=2)
        image[y : y + 6, x : x + 6] = rng.uniform(-1, 1, size=3)
    return images


def test_shapes_and_dtypes():
    model = VQVAE(**TINY)
    x = _images()
    assert model(x).shape == (4, 16, 16, 3)
    codes = model.encode(x)
    assert codes.shape == (4, 8, 8) and codes.dtype == "int32"
    assert model.latent_shape == (8, 8, 8)
    assert model.decode(codes).shape == (4, 16, 16, 3)
    # The forward pass is decode(encode(x)) exactly: the STE only changes gradients.
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x, training=False)),
        ops.convert_to_numpy(model.decode(codes)),
        atol=1e-5,
    )


def test_benchmark_configuration_matches_diffusers_vqmodel_parameter_count():
    # diffusers VQModel(block_out_channels=(64, 128), layers_per_block=1, latent 64,
    # 512 codes, norm_num_groups=32): 2,781,571 parameters (benchmarks/WORKLOADS.md).
    assert VQVAE().count_params() == 2_781_571


def test_straight_through_gradient_reaches_the_encoder():
    model = VQVAE(**TINY)
    x = _images()
    model(x)
    encoder_kernel = model.encoder.get_layer("conv_in").kernel
    grad, codebook_grad = gradients(
        lambda: ops.mean(ops.square(model(x, training=True) - x)) + ops.sum(model.losses),
        [encoder_kernel, model.quantizer.codebook],
    )
    assert np.abs(ops.convert_to_numpy(grad)).sum() > 0
    assert np.abs(ops.convert_to_numpy(codebook_grad)).sum() > 0


def test_fit_on_images_alone_lowers_the_loss():
    keras.utils.set_random_seed(1)
    model = VQVAE(**TINY, decay=0.9)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(_blobs(), batch_size=16, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    for name in ("vq_loss", "vq_perplexity", "vq_usage"):
        assert name in history.history
    assert 0 < history.history["vq_usage"][-1] <= 1


def test_fit_on_pairs_then_keras_roundtrip_keeps_outputs_and_optimizer(tmp_path):
    model = VQVAE(**TINY, decay=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _blobs(16)
    history = model.fit(x, x, epochs=1, verbose=0)  # (x, x) pairs train the same way
    assert np.isfinite(history.history["loss"][0])
    reloaded = assert_keras_roundtrip(model, _images(), str(tmp_path))
    assert reloaded.get_config() == model.get_config()
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) == 1
    np.testing.assert_array_equal(
        ops.convert_to_numpy(reloaded.encode(_images())),
        ops.convert_to_numpy(model.encode(_images())),
    )


# One training step under each dtype policy: tests/integration/test_precision.py.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codebook_size": 0}, r"Received: codebook_size=0"),
        ({"commitment_cost": -1.0}, r"Received: commitment_cost=-1.0"),
        ({"image_shape": (15, 16, 3)}, r"divisible by 2.*Received: image_shape=\(15, 16, 3\)"),
        ({"image_shape": (16, 16)}, r"Received: image_shape=\(16, 16\)"),
        ({"norm_groups": 5}, r"Received: norm_groups=5"),
        ({"channels": ()}, r"Received: channels=\(\)"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VQVAE(**{**TINY, **kwargs})


def test_bad_inputs_name_the_value():
    model = VQVAE(**TINY)
    with pytest.raises(ValueError, match=r"Received: images.shape=\(16, 16, 3\)"):
        model(np.zeros((16, 16, 3), "float32"))
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 16, 16, 1\)"):
        model.encode(np.zeros((2, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match=r"\[0, 16\).*Received: indices with min=16 and max=16"):
        model.decode(np.full((1, 8, 8), 16, "int32"))
    with pytest.raises(ValueError, match=r"Received: indices.shape=\(1, 4, 4\)"):
        model.decode(np.zeros((1, 4, 4), "int32"))
