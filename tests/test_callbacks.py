"""Tests of kzoo.training.callbacks: image grids and metrics written to TensorBoard."""

import glob
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kzoo.data.images import make_grid
from kzoo.metrics import psnr
from kzoo.training.callbacks import ImageGridCallback, MetricsCallback


def _events(log_dir):
    """(tag, step, value) of every summary in the event files under `log_dir`.

    Scalars come back as floats, images as decoded uint8 arrays.
    """
    found = []
    for path in sorted(
        glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)
    ):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    # [width, height, encoded image, ...] strings.
                    decoded = np.asarray(Image.open(io.BytesIO(tensor[2])))
                    found.append((value.tag, event.step, decoded))
                else:
                    found.append((value.tag, event.step, float(tensor)))
    return found


def _tiny_model():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)


def test_image_grid_and_metrics_written_during_fit(tmp_path, data):
    model = _tiny_model()
    fixed = data[:4]
    image_dir, metric_dir = str(tmp_path / "images"), str(tmp_path / "metrics")
    grid_callback = ImageGridCallback(
        image_dir,
        lambda m: [fixed, m.predict(fixed, verbose=0)],
        num_images=3,
        name="reconstructions",
        scale=1,
    )
    metrics = MetricsCallback(
        metric_dir,
        {
            "psnr": lambda m: psnr(fixed, m.predict(fixed, verbose=0)),
            "step": lambda m: int(m.optimizer.iterations),
        },
    )
    history = model.fit(
        data, data, batch_size=8, epochs=3, verbose=0, callbacks=[grid_callback, metrics]
    )

    # Metric values land in History (2 steps per epoch) and in the event file.
    assert history.history["step"] == [2.0, 4.0, 6.0]
    assert len(history.history["psnr"]) == 3
    scalars = _events(metric_dir)
    assert [(step, value) for tag, step, value in scalars if tag == "step"] == [
        (0, 2.0),
        (1, 4.0),
        (2, 6.0),
    ]
    np.testing.assert_allclose(
        [value for tag, _, value in scalars if tag == "psnr"], history.history["psnr"], rtol=1e-6
    )
    # The last psnr is the trained model's, recomputed here.
    assert history.history["psnr"][-1] == pytest.approx(
        psnr(fixed, model.predict(fixed, verbose=0)), rel=1e-5
    )

    images = _events(image_dir)
    assert [(tag, step) for tag, step, _ in images] == [
        ("reconstructions", 0),
        ("reconstructions", 1),
        ("reconstructions", 2),
    ]
    # Two rows (inputs, reconstructions) of 3 images; the PNG is lossless.
    expected = make_grid([fixed[:3], model.predict(fixed, verbose=0)[:3]], scale=1)
    assert images[-1][2].shape == expected.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    np.testing.assert_array_equal(images[-1][2], expected)


def test_every_n_epochs(tmp_path, data):
    model = _tiny_model()
    calls = []
    metrics = MetricsCallback(
        str(tmp_path / "m"), {"calls": lambda m: calls.append(1) or len(calls)}, every_n_epochs=2
    )
    grid = ImageGridCallback(str(tmp_path / "i"), lambda m: data[:2], every_n_epochs=2)
    history = model.fit(data, data, batch_size=8, epochs=5, verbose=0, callbacks=[metrics, grid])
    assert len(calls) == 2
    assert history.history["calls"] == [1.0, 2.0]
    assert len(history.history["loss"]) == 5
    assert [(tag, step) for tag, step, _ in _events(str(tmp_path / "m"))] == [
        ("calls", 1),
        ("calls", 3),
    ]
    # A single batch is one row of (at most num_images=8) images.
    (_, _, image), (_, step, _) = _events(str(tmp_path / "i"))
    assert step == 3 and image.shape == (2 + 8 * 2 + 2, 2 + 2 * (8 * 2 + 2), 3)


def test_metric_later_callbacks_see_value(tmp_path, data):
    model = _tiny_model()
    seen = []
    metrics = MetricsCallback(str(tmp_path), {"score": lambda m: np.float32(0.5)})
    spy = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(logs["score"])
    )
    model.fit(data, data, batch_size=8, epochs=2, verbose=0, callbacks=[metrics, spy])
    assert seen == [0.5, 0.5]


def test_bad_input(tmp_path, data):
    with pytest.raises(ValueError, match="every_n_epochs"):
        MetricsCallback(str(tmp_path), {"a": lambda m: 1.0}, every_n_epochs=0)
    with pytest.raises(ValueError, match="metric_fns"):
        MetricsCallback(str(tmp_path), {})
    with pytest.raises(ValueError, match="metric_fns"):
        MetricsCallback(str(tmp_path), {"a": 1.0})
    with pytest.raises(ValueError, match="sample_fn"):
        ImageGridCallback(str(tmp_path), None)
    with pytest.raises(ValueError, match="num_images"):
        ImageGridCallback(str(tmp_path), lambda m: data, num_images=0)
    with pytest.raises(ValueError, match="log_dir"):
        ImageGridCallback(None, lambda m: data)

    model = _tiny_model()
    bad_images = ImageGridCallback(str(tmp_path / "i"), lambda m: data[0])
    with pytest.raises(ValueError, match="sample_fn"):
        model.fit(data, data, epochs=1, verbose=0, callbacks=[bad_images])
    bad_metric = MetricsCallback(str(tmp_path / "m"), {"vector": lambda m: np.ones(3)})
    with pytest.raises(ValueError, match="scalar"):
        model.fit(data, data, epochs=1, verbose=0, callbacks=[bad_metric])
