"""Tests of kzoo.metrics: PSNR, SSIM, FID, KID and the kzoo_shapes feature network."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kzoo.data
from kzoo.metrics import (
    ShapesClassifier,
    compute_fid,
    compute_kid,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    load_or_train_shapes_classifier,
    psnr,
    ssim,
)
from kzoo.metrics import features as features_module
from kzoo.metrics import kid as kid_module
from kzoo.metrics.kid import _mmd2_unbiased
from kzoo.testing import dtype_policy


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kzoo_cache"))


@pytest.fixture(scope="module")
def classifier(cache_dir):
    """The default classifier (the one recipes and benchmarks score with), trained once."""
    return load_or_train_shapes_classifier(cache_dir, image_size=32)


@pytest.fixture(scope="module")
def test_split():
    return kzoo.data.load_arrays("kzoo_shapes", split="test", image_size=32)


# --- PSNR / SSIM -----------------------------------------------------------


def test_psnr_known_values():
    images = np.zeros((2, 4, 4, 3), np.float32)
    # mse 0.0004 -> 10 log10(4 / 4e-4) = 40 dB.
    assert psnr(images, images + 0.02) == pytest.approx(40.0, abs=1e-6)
    # Per-image values are averaged: 40 dB and 20 dB (mse 0.04).
    reconstructions = np.stack([images[0] + 0.02, images[1] - 0.2])
    assert psnr(images, reconstructions) == pytest.approx(30.0, abs=1e-6)
    assert psnr(images, images + 0.02, data_range=1.0) == pytest.approx(33.9794, abs=1e-4)
    # Reconstructions are clipped to [-1, 1] first: 3.0 counts as 1.0 (mse 1, 6.02 dB).
    assert psnr(images, np.full_like(images, 3.0)) == pytest.approx(10 * np.log10(4.0), abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        psnr(images, images[:1])


def test_ssim_identical_noisy_and_uint8_equivalence(test_split):
    images = test_split[0][:16]
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    values = [
        ssim(images, np.clip(images + rng.normal(0, std, images.shape), -1, 1))
        for std in (0.05, 0.2, 0.5)
    ]
    assert 1.0 > values[0] > values[1] > values[2]
    # The shift to [0, 2] makes it the standard SSIM of the uint8 images.
    noisy = np.clip(images + rng.normal(0, 0.2, images.shape), -1, 1)
    as_uint8 = lambda x: tf.constant(np.round((x + 1.0) * 127.5), tf.float32)
    reference = float(tf.reduce_mean(tf.image.ssim(as_uint8(images), as_uint8(noisy), 255.0)))
    quantized = np.round((noisy + 1.0) * 127.5) / 127.5 - 1.0
    # (float32 rounding of the two scalings differs by ~2e-5)
    assert ssim(np.round((images + 1) * 127.5) / 127.5 - 1, quantized) == pytest.approx(
        reference, abs=1e-4
    )


def test_ssim_bad_input():
    images = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="filter_size=11"):
        ssim(images, images)
    assert ssim(images, images, filter_size=7) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="filter_size"):
        ssim(images, images, filter_size=0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(images, images[..., :1])


# --- FID -------------------------------------------------------------------


def _random_covariance(rng, dim):
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def test_fid_closed_forms():
    rng = np.random.default_rng(0)
    dim = 6
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    sigma = _random_covariance(rng, dim)
    assert frechet_distance_from_stats(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-9)
    # Equal covariances: only the means count.
    assert frechet_distance_from_stats(mu1, sigma, mu2, sigma) == pytest.approx(
        np.sum((mu1 - mu2) ** 2), rel=1e-9
    )
    # sigma2 = c * sigma1 (non-diagonal): Tr(S + cS - 2 sqrt(c) S) = (1 - sqrt(c))^2 Tr(S).
    expected = np.sum((mu1 - mu2) ** 2) + (1 - np.sqrt(4.0)) ** 2 * np.trace(sigma)
    assert frechet_distance_from_stats(mu1, sigma, mu2, 4.0 * sigma) == pytest.approx(
        expected, rel=1e-9
    )
    # Diagonal: sum of (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.5, 2.0, dim), rng.uniform(0.5, 2.0, dim)
    assert frechet_distance_from_stats(mu1, np.diag(a), mu1, np.diag(b)) == pytest.approx(
        np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9
    )


def test_fid_general_covariances_match_eigenvalues_of_product():
    rng = np.random.default_rng(1)
    dim = 5
    sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    # Independent route: S1 S2 has real non-negative eigenvalues.
    trace_sqrt = np.sum(np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).real))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2) - 2 * trace_sqrt
    value = frechet_distance_from_stats(mu1, sigma1, mu2, sigma2)
    assert value == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_stats(mu2, sigma2, mu1, sigma1) == pytest.approx(value, rel=1e-9)


def test_fid_of_samples():
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(500, 4))
    # Whitened samples have exactly zero mean and identity covariance, so the
    # closed form holds exactly for these finite samples.
    samples -= samples.mean(axis=0)
    samples = samples @ np.linalg.inv(np.linalg.cholesky(np.cov(samples, rowvar=False))).T
    shift = np.array([1.0, 0.0, -1.0, 0.5])
    assert frechet_distance(samples, samples) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(samples, samples + shift) == pytest.approx(2.25, rel=1e-9)
    # N(0, I) vs N(shift, 4 I): 2.25 + 4 * (1 - 2)^2.
    assert frechet_distance(samples, 2 * samples + shift) == pytest.approx(6.25, rel=1e-9)
    # Fewer samples than dimensions: singular covariances still give a finite value.
    assert np.isfinite(frechet_distance(samples[:3], samples[3:6] + shift))


def test_fid_bad_input():
    with pytest.raises(ValueError, match="real_features"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same feature size"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance_from_stats(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.full((4, 2), np.nan), np.zeros((4, 2)))


# --- KID -------------------------------------------------------------------


def test_mmd2_matches_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, size=(6, 3))
    k = lambda a, b: (a @ b / 3 + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(6)) / (5 * 6)
    assert _mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_subset_batching_matches_loop(monkeypatch):
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(60, 8)), rng.normal(0.3, size=(50, 8))
    batched = kernel_inception_distance(real, fake, num_subsets=7, subset_size=30, seed=3)
    monkeypatch.setattr(kid_module, "_MAX_KERNEL_ELEMENTS", 0)
    looped = kernel_inception_distance(real, fake, num_subsets=7, subset_size=30, seed=3)
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_kid_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same_mean, same_std = kernel_inception_distance(real, fake, num_subsets=20, subset_size=200)
    shifted = rng.normal(0.5, size=(400, 16))
    shift_mean, shift_std = kernel_inception_distance(real, shifted, num_subsets=20)
    assert abs(same_mean) < 0.05
    assert shift_mean > 0.3 and shift_mean > 20 * shift_std
    assert same_std > 0
    # Identical arrays with one shared subset per draw are not exactly zero either
    # (subsets are drawn independently), but close.
    assert abs(kernel_inception_distance(real, real, num_subsets=5)[0]) < 0.05


def test_kid_is_unbiased():
    # The mean of the unbiased estimator over independent pairs of small samples
    # of one distribution is 0 within its standard error (a biased estimator, the
    # V-statistic, would sit clearly above 0 at 20 samples).
    rng = np.random.default_rng(5)
    estimates = [
        kernel_inception_distance(
            rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), num_subsets=1, seed=i
        )[0]
        for i in range(300)
    ]
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates)) < 4 * standard_error


def test_kid_bad_input():
    features = np.zeros((10, 4))
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(features, features, subset_size=11)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(features, features, num_subsets=0)
    with pytest.raises(ValueError, match="feature size"):
        kernel_inception_distance(features, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="fake_features"):
        kernel_inception_distance(features, np.zeros(10))


# --- ShapesClassifier ------------------------------------------------------


def test_classifier_accuracy_on_test_split(classifier, test_split):
    images, labels = test_split
    accuracy = classifier.attribute_accuracy(images, labels)
    assert set(accuracy) == {"shape", "color", "size", "position", "background"}
    # The default recipe (1200 steps); measured shape 0.927 / 0.932 and colour
    # 0.999 on the test split for seeds 0 / 1 (chance: 1/6 and 1/8).
    assert accuracy["shape"] > 0.9
    assert accuracy["color"] > 0.99
    assert accuracy["size"] > 0.85
    assert accuracy["position"] > 0.99 and accuracy["background"] > 0.99


def test_classifier_outputs(classifier, test_split):
    images = test_split[0][:300]
    features = classifier.features(images)
    assert features.shape == (300, 128) and features.dtype == np.float32
    np.testing.assert_array_equal(features, classifier.features(images))
    # Batching (256 per call) does not change the features of an image.
    np.testing.assert_allclose(classifier.features(images[256:]), features[256:], atol=1e-5)
    predicted = classifier.predict_attributes(images)
    assert predicted["shape"].dtype == np.int64 and predicted["shape"].shape == (300,)
    assert predicted["color"].max() < len(kzoo.data.COLORS)
    assert classifier.features(images[:0]).shape == (0, 128)
    # A global mixed policy changes nothing: the classifier is float32 throughout
    # (the same batch, so the same kernels: equal to the bit).
    float32_features = classifier.features(images[:8])
    with dtype_policy("mixed_float16"):
        np.testing.assert_array_equal(classifier.features(images[:8]), float32_features)


def test_classifier_bad_input(classifier):
    with pytest.raises(ValueError, match="image_size=16"):
        classifier.features(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="labels"):
        classifier.attribute_accuracy(np.zeros((2, 32, 32, 3), np.float32), {"label": [0, 1]})
    with pytest.raises(ValueError, match=r"labels\['shape'\]"):
        classifier.attribute_accuracy(np.zeros((2, 32, 32, 3), np.float32), {"shape": [0]})
    with pytest.raises(ValueError, match="image_size"):
        ShapesClassifier(image_size=30)
    with pytest.raises(ValueError, match="filters"):
        ShapesClassifier(filters=())
    with pytest.raises(ValueError, match="steps"):
        load_or_train_shapes_classifier(steps=0)


def test_classifier_cache_hit_does_not_retrain(classifier, cache_dir, test_split, monkeypatch):
    path = features_module.classifier_cache_path(cache_dir, 32, features_module.DEFAULT_STEPS, 0)
    assert os.path.isfile(path)
    assert not [name for name in os.listdir(cache_dir) if name.startswith(".tmp-")]

    def fail(**kwargs):
        raise AssertionError(f"retrained with {kwargs}")

    monkeypatch.setattr(features_module, "train_shapes_classifier", fail)
    loaded = load_or_train_shapes_classifier(cache_dir, image_size=32)
    assert isinstance(loaded, ShapesClassifier) and loaded.image_size == 32
    images = test_split[0][:32]
    np.testing.assert_allclose(loaded.features(images), classifier.features(images), atol=1e-5)
    # Another image size is another cache entry: that one would train.
    with pytest.raises(AssertionError, match="retrained"):
        load_or_train_shapes_classifier(cache_dir, image_size=16)


def test_classifier_corrupt_cache_is_replaced(tmp_path, monkeypatch):
    path = features_module.classifier_cache_path(str(tmp_path), 16, 5, 0)
    with open(path, "w") as f:
        f.write("not a keras file")
    calls = []

    def train(image_size, steps, seed):
        calls.append((image_size, steps, seed))
        return ShapesClassifier(image_size=image_size, seed=seed)

    monkeypatch.setattr(features_module, "train_shapes_classifier", train)
    with pytest.warns(UserWarning, match="Retraining"):
        first = load_or_train_shapes_classifier(str(tmp_path), image_size=16, steps=5)
    assert calls == [(16, 5, 0)]
    second = load_or_train_shapes_classifier(str(tmp_path), image_size=16, steps=5)
    assert calls == [(16, 5, 0)]
    images = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(second.features(images), first.features(images), atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KZOO_CACHE_DIR", str(tmp_path))
    assert features_module.default_cache_dir() == str(tmp_path)
    assert os.path.dirname(features_module.classifier_cache_path()) == str(tmp_path)
    monkeypatch.delenv("KZOO_CACHE_DIR")
    assert features_module.default_cache_dir() == os.path.join(
        os.path.expanduser("~"), ".cache", "kzoo"
    )


# --- KID / FID on images ---------------------------------------------------


def test_kid_and_fid_on_shapes_images(classifier, test_split):
    images, labels = test_split
    real = images[:500]
    other_real, _ = kzoo.data.load_arrays("kzoo_shapes", split="train", num_examples=500)
    noisy = np.clip(real + np.random.default_rng(6).normal(0, 0.3, real.shape), -1, 1)
    blurred = tf.image.resize(tf.nn.avg_pool2d(real, 2, 2, "VALID"), (32, 32)).numpy()
    white_background = images[labels["background"] == kzoo.data.BACKGROUNDS.index("white")]
    features = {
        name: classifier.features(batch)
        for name, batch in [
            ("real", real),
            ("same", other_real),
            ("noisy", noisy),
            ("blurred", blurred),
            ("white_background", white_background),
        ]
    }
    # Features are scaled to a mean square of 1 on training images.
    assert np.mean(np.square(features["same"])) == pytest.approx(1.0, rel=0.1)
    kid = lambda name: kernel_inception_distance(
        features["real"], features[name], num_subsets=50, subset_size=250
    )
    fid = lambda name: frechet_distance(features["real"], features[name])
    # Measured (600 steps): same 0.0002 +- 0.010; noisy 3.4, blurred 1.5, white
    # backgrounds only 0.23 (FID: 0.44; 29, 22, 6.1).
    same_mean, same_std = kid("same")
    assert 0 < same_std < 0.05
    assert abs(same_mean) < 3 * same_std
    for name in ("noisy", "blurred", "white_background"):
        assert kid(name)[0] > 10 * same_std, name
        assert fid(name) > 5 * fid("same"), name
    # The image-level functions give the same numbers.
    assert compute_kid(
        real, noisy, feature_fn=classifier.features, num_subsets=50, subset_size=250
    ) == pytest.approx(kid("noisy"))
    assert compute_fid(real, noisy, feature_fn=classifier.features) == pytest.approx(fid("noisy"))


def test_compute_kid_defaults_to_cached_classifier(classifier, test_split, monkeypatch):
    calls = []

    def fake_load(cache_dir=None, image_size=32, **kwargs):
        calls.append((cache_dir, image_size))
        return classifier

    monkeypatch.setattr(features_module, "load_or_train_shapes_classifier", fake_load)
    images = test_split[0][:40]
    value = compute_kid(images, images[::-1], num_subsets=3, cache_dir="/somewhere")
    expected = compute_kid(images, images[::-1], feature_fn=classifier.features, num_subsets=3)
    assert value == pytest.approx(expected)
    assert calls == [("/somewhere", 32)]  # loaded once for both sets
    # A user's feature network plugs in; its output must be 2-D.
    user_model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    assert np.isfinite(compute_fid(images, images[::-1], feature_fn=user_model))
    with pytest.raises(ValueError, match="2-D"):
        compute_kid(images, images, feature_fn=lambda x: x)


def test_autoencoder_metrics_score_the_reconstructions_with_a_classifier():
    from kzoo.metrics import autoencoder_metrics
    from kzoo.testing import tiny_vqvae

    model = tiny_vqvae()
    images = np.random.default_rng(0).uniform(-1, 1, (10, 8, 8, 3)).astype(np.float32)

    class Recorder:
        """Stands in for ShapesClassifier: records what it is asked to score."""

        def attribute_accuracy(self, scored, labels):
            self.scored = scored
            return {"shape": 0.25}

    recorder = Recorder()
    results = autoencoder_metrics(model, images, {"shape": np.zeros(10)}, recorder, batch_size=4)
    reconstructions = np.asarray(model(images))
    # The classifier sees the clipped reconstructions, not the inputs.
    np.testing.assert_allclose(recorder.scored, np.clip(reconstructions, -1, 1), atol=1e-5)
    mse = np.mean((np.clip(reconstructions, -1, 1) - images) ** 2, axis=(1, 2, 3))
    assert results["test_psnr_db"] == pytest.approx(np.mean(10 * np.log10(4.0 / mse)), abs=0.01)
    assert results["reconstruction_shape_accuracy"] == 0.25 and results["num_examples"] == 10
    assert 0 < results["codebook_usage"] <= 1 and results["codebook_dead_codes"] >= 0
    with pytest.raises(ValueError, match="`labels` and `classifier` go together"):
        autoencoder_metrics(model, images, labels={"shape": np.zeros(10)})


def test_caption_words_reads_the_shape_and_its_colour():
    from kzoo.metrics import caption_words

    assert caption_words(
        [b"a small red circle at the top left on a blue background", "a blue", ""]
    ) == [("circle", "red"), (None, None), (None, None)]
