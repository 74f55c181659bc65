"""Tests of the tf.data pipelines `kzoo.data.load` and `kzoo.data.load_arrays`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kzoo.data import SHAPES, generate_split, load, load_arrays


def _batches(dataset):
    return list(dataset.as_numpy_iterator())


def test_kzoo_shapes_images_only():
    dataset = load("kzoo_shapes", split="test", batch_size=300, shuffle=False)
    assert dataset.element_spec == tf.TensorSpec((None, 32, 32, 3), tf.float32)
    batches = _batches(dataset)
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    images = np.concatenate(batches)
    expected = generate_split("test")["image"].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_kzoo_shapes_image_label_tuples_fit_a_model():
    dataset = load("kzoo_shapes", batch_size=16, outputs=("image", "label"), num_examples=64)
    images, labels = next(iter(dataset))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (16,) and labels.dtype == tf.int64
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(len(SHAPES))]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_kzoo_shapes_captions_match_labels():
    dataset = load(
        "kzoo_shapes",
        batch_size=50,
        outputs=("caption", "label", "image"),
        num_examples=100,
        image_size=16,
    )
    spec = dataset.element_spec
    assert spec[0] == tf.TensorSpec((None,), tf.string)
    assert spec[2].shape.as_list() == [None, 16, 16, 3]
    for captions, labels, _ in dataset.as_numpy_iterator():
        for caption, label in zip(captions, labels, strict=True):
            assert SHAPES[label] in caption.decode().split()


@pytest.mark.parametrize("image_size", [16, 64])
def test_kzoo_shapes_renders_natively_at_image_size(image_size):
    images = np.concatenate(
        _batches(load("kzoo_shapes", image_size=image_size, shuffle=False, num_examples=40))
    )
    expected = generate_split("train", num_examples=40, image_size=image_size)["image"]
    np.testing.assert_allclose(images, expected / 127.5 - 1.0, atol=1e-6)


def test_batching_repeat_and_drop_remainder():
    sizes = [len(b) for b in _batches(load("kzoo_shapes", batch_size=32, num_examples=100))]
    # Without deterministic=True the parallel map may yield the short batch early.
    assert sorted(sizes, reverse=True) == [32, 32, 32, 4]
    kwargs = dict(batch_size=32, num_examples=100, drop_remainder=True)
    assert [len(b) for b in _batches(load("kzoo_shapes", **kwargs))] == [32, 32, 32]
    repeated = load("kzoo_shapes", batch_size=32, num_examples=50, repeat=True)
    assert repeated.element_spec.shape.as_list() == [None, 32, 32, 3]
    assert [len(b) for b in repeated.take(7).as_numpy_iterator()] == [32] * 7


def test_shuffle_permutes_the_split():
    def labels(**kwargs):
        dataset = load("kzoo_shapes", outputs=("caption",), batch_size=100, **kwargs)
        return np.concatenate(_batches(dataset))

    ordered = labels(shuffle=False, num_examples=300)
    shuffled = labels(shuffle=True, num_examples=300)
    assert not np.array_equal(ordered, shuffled)
    assert sorted(ordered) == sorted(shuffled)


def test_deterministic_mode_repeats_exactly():
    def run(seed):
        dataset = load(
            "kzoo_shapes",
            batch_size=40,
            outputs=("image", "label"),
            num_examples=120,
            repeat=True,
            seed=seed,
            deterministic=True,
            channels=1,  # adds a parallel per-example map
        )
        return list(dataset.take(6).as_numpy_iterator())  # two epochs

    first, second, other = run(3), run(3), run(4)
    for (a_images, a_labels), (b_images, b_labels) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)
    # Each epoch is reshuffled, and another seed gives another order.
    assert not np.array_equal(first[0][1], first[3][1])
    assert not np.array_equal(first[0][1], other[0][1])
    assert first[0][0].shape == (40, 32, 32, 1)


def test_load_arrays_kzoo_shapes():
    images, labels = load_arrays("kzoo_shapes", split="test", num_examples=300, image_size=16)
    expected = generate_split("test", num_examples=300, image_size=16)
    assert images.dtype == np.float32 and images.shape == (300, 16, 16, 3)
    np.testing.assert_allclose(images, expected["image"] / 127.5 - 1.0, atol=1e-6)
    assert set(labels) == {"caption", "label", "shape", "color", "size", "position", "background"}
    for key, values in labels.items():
        np.testing.assert_array_equal(values, expected[key])
    assert isinstance(labels["caption"][0], str)


def test_mnist_grayscale_to_rgb_and_resize(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        raw = [ex["image"] for ex in tfds.load("mnist", split="train").as_numpy_iterator()]
        native = next(iter(load("mnist", batch_size=4, shuffle=False, data_dir=str(tmp_path))))
        rgb, labels = next(
            iter(
                load(
                    "mnist",
                    batch_size=4,
                    shuffle=False,
                    channels=3,
                    outputs=("image", "label"),
                    data_dir=str(tmp_path),
                )
            )
        )
        resized = next(iter(load("mnist", batch_size=4, image_size=32, data_dir=str(tmp_path))))
    assert native.shape == (4, 28, 28, 1) and native.dtype == tf.float32
    np.testing.assert_allclose(native.numpy(), np.stack(raw[:4]) / 127.5 - 1.0, atol=1e-6)
    assert rgb.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_array_equal(rgb[..., :1], native)
    assert labels.dtype == tf.int64 and labels.shape == (4,)
    assert resized.shape == (4, 32, 32, 1)
    assert float(tf.reduce_min(resized)) >= -1.0 and float(tf.reduce_max(resized)) <= 1.0


def test_cifar10_resize_matches_antialiased_bilinear(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        raw = np.stack(
            [ex["image"] for ex in tfds.load("cifar10", split="test").as_numpy_iterator()]
        )
        images, labels = load_arrays("cifar10", split="test", image_size=16, data_dir=str(tmp_path))
    expected = tf.image.resize(raw, (16, 16), method="bilinear", antialias=True).numpy()
    expected = np.round(np.clip(expected, 0, 255)) / 127.5 - 1.0
    assert images.shape == (6, 16, 16, 3)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert set(labels) == {"id", "label"}
    assert labels["label"].shape == (6,)


def test_tfds_path_reads_prepared_kzoo_shapes(tmp_path):
    data_dir = str(tmp_path)
    dataset = load(
        "kzoo_shapes/16x16",
        split="test[:100]",
        batch_size=25,
        outputs=("image", "caption", "label"),
        data_dir=data_dir,
    )
    batches = _batches(dataset)
    assert [len(images) for images, _, _ in batches] == [25] * 4
    images, captions, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    assert images.shape == (100, 16, 16, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    for caption, label in zip(captions, labels, strict=True):
        assert SHAPES[label] in caption.decode().split()
    # Once prepared, the split names are known and checked before loading.
    with pytest.raises(
        ValueError, match=r"Unknown split 'valid'.*\['test', 'train', 'validation'\]"
    ):
        load("kzoo_shapes/16x16", split="valid[:10]", data_dir=data_dir)


def test_nonsquare_images_are_center_cropped():
    from kzoo.data import pipelines

    image = np.zeros((6, 10, 1), np.uint8)
    image[:, 2:8] = 255  # the central 6x6 square is white, the side bands black
    cropped = pipelines._center_square(tf.constant(image)).numpy()
    assert cropped.shape == (6, 6, 1)
    assert np.all(cropped == 255)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"name": "no_such_dataset"},
            r"Unknown dataset 'no_such_dataset'.*'kzoo_shapes' or a TFDS dataset name.*"
            r"Received: name='no_such_dataset'",
        ),
        ({"name": "Not A Name"}, r"Cannot open dataset.*Received: name='Not A Name'"),
        ({"name": "kzoo_shapes", "split": "val"}, r"Received: split='val'"),
        ({"name": "kzoo_shapes", "batch_size": 0}, r"Received: batch_size=0"),
        ({"name": "kzoo_shapes", "image_size": 4}, r"Received: image_size=4"),
        ({"name": "kzoo_shapes", "image_size": 32.0}, r"Received: image_size=32.0"),
        ({"name": "kzoo_shapes", "channels": 2}, r"Received: channels=2"),
        (
            {"name": "kzoo_shapes", "outputs": ("image", "nope")},
            r"Unknown output feature\(s\) \['nope'\].*available: \['background', 'caption'.*"
            r"Received: outputs=\('image', 'nope'\)",
        ),
    ],
)
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load(**kwargs)


def test_load_rejects_dataset_without_image(tmp_path):
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match=r"no 'image' feature.*Received: name='imdb_reviews'"):
            load("imdb_reviews", data_dir=str(tmp_path))


def test_load_arrays_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"Received: split='val'"):
        load_arrays("kzoo_shapes", split="val")
    with pytest.raises(ValueError, match=r"Received: num_examples=0"):
        load_arrays("kzoo_shapes", num_examples=0)
