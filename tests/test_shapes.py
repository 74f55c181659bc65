"""Tests of the embedded `kzoo_shapes` dataset: generator and TFDS builder."""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

import kzoo.data  # noqa: F401  (registers the TFDS builder)
from kzoo.data import shapes
from kzoo.data.shapes import BACKGROUNDS, COLORS, LABEL_NAMES, POSITIONS, SHAPES, SIZES

LABEL_KEYS = ("shape", "color", "size", "position", "background")
CAPTION = re.compile(r"^a (\w+) (\w+) (\w+) at the ([\w ]+) on a (\w+) background$")


def _shape_masks(data):
    """Boolean (N, H, W) masks of the pixels that have the example's shape colour."""
    rgb = shapes._COLOR_RGB[data["color"]][:, None, None, :]
    return np.all(data["image"] == rgb, axis=-1)


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_generate_structure(image_size):
    data = shapes.generate(40, image_size=image_size, seed=0)
    assert set(data) == {"image", "caption", "label", *LABEL_KEYS}
    assert data["image"].shape == (40, image_size, image_size, 3)
    assert data["image"].dtype == np.uint8
    assert data["caption"].shape == (40,)
    assert isinstance(data["caption"][0], str)
    vocab = dict(zip(LABEL_KEYS, (SHAPES, COLORS, SIZES, POSITIONS, BACKGROUNDS), strict=True))
    for key, names in vocab.items():
        assert data[key].dtype == np.int64
        assert data[key].shape == (40,)
        assert data[key].min() >= 0 and data[key].max() < len(names)
    np.testing.assert_array_equal(data["label"], data["shape"])


def test_generate_is_deterministic_and_seed_dependent():
    first = shapes.generate(200, seed=3)
    second = shapes.generate(200, seed=3)
    other = shapes.generate(200, seed=4)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["image"], other["image"])
    assert np.mean(first["caption"] != other["caption"]) > 0.9


@pytest.mark.parametrize(
    "a,b", [("train", "test"), ("train", "validation"), ("validation", "test")]
)
def test_splits_are_different_streams(a, b):
    first = shapes.generate_split(a, num_examples=300)
    second = shapes.generate_split(b, num_examples=300)
    assert np.mean(first["caption"] != second["caption"]) > 0.9
    differs = np.any(first["image"] != second["image"], axis=(1, 2, 3))
    assert differs.mean() > 0.95


def test_split_sizes():
    assert shapes.SPLIT_SIZES == {"train": 5000, "validation": 1000, "test": 1000}
    assert len(shapes.generate_split("test")["image"]) == 1000
    assert len(shapes.generate_split("validation")["image"]) == 1000


def test_novel_combinations_never_occur_in_train():
    train = shapes.generate_split("train")
    seen = {tuple(int(train[k][i]) for k in LABEL_NAMES) for i in range(5000)}
    for split in ("validation", "test"):
        data = shapes.generate_split(split)
        combos = [tuple(int(data[k][i]) for k in LABEL_NAMES) for i in range(1000)]
        novel = shapes.novel_combinations(split)
        assert novel.tolist() == [combo not in seen for combo in combos]
        # 5,184 combinations minus colour clashes, 5,000 draws: about 2/3 stay unseen per
        # combination, so a third or more of a held-out split is novel.
        assert 0.3 < novel.mean() < 0.45
    assert shapes.novel_combinations("test", num_examples=10).shape == (10,)
    with pytest.raises(ValueError, match="Received: split='val'"):
        shapes.novel_combinations("val")


def test_prefix_and_labels_do_not_depend_on_count_or_size():
    # 1500 crosses the 1024-example block boundary of the label streams.
    long = shapes.generate(1500, image_size=16, seed=7)
    short = shapes.generate(60, image_size=32, seed=7)
    for key in ("caption", *LABEL_KEYS):
        np.testing.assert_array_equal(long[key][:60], short[key])
    np.testing.assert_array_equal(
        shapes.generate(1500, image_size=16, seed=7)["image"][1100:], long["image"][1100:]
    )


def test_captions_match_labels():
    data = shapes.generate(500, seed=1)
    for index, caption in enumerate(data["caption"]):
        match = CAPTION.match(caption)
        assert match, caption
        size, color, shape, position, background = match.groups()
        assert shape == SHAPES[data["shape"][index]]
        assert color == COLORS[data["color"][index]]
        assert size == SIZES[data["size"][index]]
        assert position == POSITIONS[data["position"][index]]
        assert background == BACKGROUNDS[data["background"][index]]
    assert data["caption"][0] == shapes.make_caption(*(data[k][0] for k in LABEL_KEYS))
    assert shapes.make_caption(0, 0, 0, 0, 3) == (
        "a small red circle at the top left on a blue background"
    )


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_pixels_show_shape_colour_and_background(image_size):
    data = shapes.generate(2000, image_size=image_size, seed=2)
    masks = _shape_masks(data)
    counts = masks.sum(axis=(1, 2))
    # Every shape is visible, even a small one at 16 px.
    assert counts.min() >= 4
    background = shapes._BACKGROUND_RGB[data["background"]]
    corners = data["image"][:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (N, 4, 3)
    np.testing.assert_array_equal(corners, np.repeat(background[:, None], 4, axis=1))
    # The background fills most of the image.
    is_background = np.all(data["image"] == background[:, None, None, :], axis=-1)
    assert np.all(is_background.mean(axis=(1, 2)) > 0.6)
    assert np.all(is_background | masks)  # no other colour anywhere


def test_shape_colour_never_equals_background():
    data = shapes.generate(2000, seed=5)
    colors = np.array(COLORS)[data["color"]]
    backgrounds = np.array(BACKGROUNDS)[data["background"]]
    assert not np.any(colors == backgrounds)
    assert not np.any(
        np.all(
            shapes._COLOR_RGB[data["color"]] == shapes._BACKGROUND_RGB[data["background"]], axis=-1
        )
    )


def test_position_and_size_are_rendered():
    data = shapes.generate(1000, image_size=32, seed=6)
    masks = _shape_masks(data)
    rows, cols = np.divmod(data["position"], 3)
    grid = np.arange(32) + 0.5
    counts = masks.sum(axis=(1, 2))
    center_y = (masks.sum(axis=2) * grid).sum(axis=1) / counts
    center_x = (masks.sum(axis=1) * grid).sum(axis=1) / counts
    # The centroid lies in the third of the image named by the position.
    np.testing.assert_array_equal(np.floor(center_y / (32 / 3)), rows)
    np.testing.assert_array_equal(np.floor(center_x / (32 / 3)), cols)
    for kind in range(len(SHAPES)):
        mean_area = [counts[(data["shape"] == kind) & (data["size"] == s)].mean() for s in range(3)]
        assert mean_area[0] < mean_area[1] < mean_area[2], (SHAPES[kind], mean_area)


def test_shape_kinds_are_distinct_and_symmetric():
    count = len(SHAPES)
    labels = {
        "shape": np.arange(count),
        "color": np.zeros(count, np.int64),
        "size": np.full(count, 2),
        "position": np.full(count, 4),
        "background": np.zeros(count, np.int64),
        "jitter": np.zeros((count, 2)),
        "scale": np.ones(count),
    }
    masks = _shape_masks(dict(labels, image=shapes._render(labels, 32)))
    assert len({mask.tobytes() for mask in masks}) == count
    # Centred on a pixel, each kind is mirror-symmetric left to right.
    np.testing.assert_array_equal(masks[:, :, 1:], masks[:, :, 1:][:, :, ::-1])


def test_every_label_value_occurs():
    data = shapes.generate(1000, seed=0)
    vocab = dict(zip(LABEL_KEYS, (SHAPES, COLORS, SIZES, POSITIONS, BACKGROUNDS), strict=True))
    for key, names in vocab.items():
        assert set(np.unique(data[key])) == set(range(len(names))), key


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_examples": -1}, "Received: num_examples=-1"),
        ({"num_examples": 2.0}, "Received: num_examples=2.0"),
        ({"num_examples": 2, "image_size": 7}, "Received: image_size=7"),
        ({"num_examples": 2, "image_size": True}, "Received: image_size=True"),
        ({"num_examples": 2, "seed": -3}, "Received: seed=-3"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shapes.generate(**kwargs)


def test_generate_split_rejects_unknown_split():
    with pytest.raises(
        ValueError,
        match=r"expected one of \['test', 'train', 'validation'\]. Received: split='val'",
    ):
        shapes.generate_split("val")


def test_tfds_load_offline(tmp_path):
    ds = tfds.load("kzoo_shapes", split="test", data_dir=str(tmp_path))
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == 1000
    expected = shapes.generate_split("test")
    # TFDS stores examples in a hashed-key order: compare as sets of (caption, pixels).
    got = sorted((ex["caption"].decode(), ex["image"].tobytes(), ex["label"]) for ex in examples)
    want = sorted(
        zip(
            expected["caption"].tolist(),
            [image.tobytes() for image in expected["image"]],
            expected["label"],
            strict=True,
        )
    )
    assert got == want
    builder = tfds.builder("kzoo_shapes", data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == 5000
    assert builder.info.splits["test"].num_examples == 1000
    assert builder.info.splits["validation"].num_examples == 1000
    assert builder.info.features["shape"].names == list(SHAPES)
    assert builder.info.features["position"].names == list(POSITIONS)
    assert builder.info.features["image"].shape == (32, 32, 3)
    assert builder.info.supervised_keys == ("image", "label")


def test_tfds_configs_set_image_size(tmp_path):
    assert isinstance(tfds.builder("kzoo_shapes", data_dir=str(tmp_path)), kzoo.data.ShapesBuilder)
    for size in (16, 64):
        builder = tfds.builder(f"kzoo_shapes/{size}x{size}", data_dir=str(tmp_path))
        assert builder.info.features["image"].shape == (size, size, 3)
