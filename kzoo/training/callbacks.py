"""Keras callbacks that write image grids and extra metrics to TensorBoard.

`keras.callbacks.TensorBoard` logs losses and compiled metrics; these log what
`fit` cannot compute per batch: grids of reconstructions or samples, and metrics
of the whole model (KID, PSNR on a fixed batch, codebook usage), every few epochs.
Both write at step = epoch index (as Keras' `epoch_*` scalars do) and only where
the distribution strategy says summaries should be saved (the chief under
`MultiWorkerMirroredStrategy`).

`tf.summary.scalar` and `tf.summary.image` live in the `tensorboard` package,
which TensorFlow 2.21 does not install (they raise `TBNotInstalledError` without
it), so these callbacks write the same records with core TF's `tf.summary.write`
and the plugin metadata TensorBoard's own summary ops attach. TensorBoard 2.21's
`EventMultiplexer` lists the records under its scalars and images plugins, and
writing needs no `tensorboard` install (`keras.callbacks.TensorBoard` does).
"""

import numbers
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from kzoo.data.images import make_grid


def _metadata(plugin_name, data_class):
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name),
        data_class=data_class,
    )


def write_scalar(name, value, step):
    """Writes a float scalar summary to the default writer (as `tf.summary.scalar`)."""
    metadata = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
    return tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)


def write_image(name, image, step):
    """Writes one uint8 (H, W, C) image to the default writer (as `tf.summary.image`).

    The tensor is `[width, height, png]` strings, the image plugin's layout.
    """
    image = tf.convert_to_tensor(image, tf.uint8)
    height, width = image.shape[0], image.shape[1]
    tensor = tf.stack(
        [tf.constant(str(width)), tf.constant(str(height)), tf.image.encode_png(image)]
    )
    metadata = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
    return tf.summary.write(name, tensor, step=step, metadata=metadata)


def _check_every(every_n_epochs):
    if (
        isinstance(every_n_epochs, bool)
        or not isinstance(every_n_epochs, int)
        or every_n_epochs < 1
    ):
        raise ValueError(
            f"`every_n_epochs` must be an integer >= 1. Received: every_n_epochs={every_n_epochs!r}"
        )


def _check_log_dir(log_dir):
    if not isinstance(log_dir, str | bytes) and not hasattr(log_dir, "__fspath__"):
        raise ValueError(f"`log_dir` must be a directory path. Received: log_dir={log_dir!r}")


class _SummaryCallback(keras.callbacks.Callback):
    """Shared plumbing: lazy file writer, epoch schedule, chief-only writing."""

    def __init__(self, log_dir, every_n_epochs):
        super().__init__()
        _check_log_dir(log_dir)
        _check_every(every_n_epochs)
        self.log_dir = os.fsdecode(os.fspath(log_dir))
        self.every_n_epochs = every_n_epochs
        self._writer = None

    def _due(self, epoch):
        return (epoch + 1) % self.every_n_epochs == 0

    def _should_write(self):
        # Public StrategyExtended property: False on non-chief multi-worker workers,
        # whose summaries would clash with the chief's files.
        strategy = self.model.distribute_strategy
        return bool(getattr(strategy.extended, "should_save_summary", True))

    def _file_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ImageGridCallback(_SummaryCallback):
    """Writes a grid of `sample_fn(model)` images to TensorBoard during `fit`.

    Args:
        log_dir: directory of the event files (e.g. `workdir/logs/images`).
        sample_fn: callable `model -> images` in [-1, 1]: one batch
            `(N, H, W, C)` (drawn as one row) or a list of batches drawn as rows
            (e.g. `[inputs, model.predict(inputs)]` for reconstructions, or a
            diffusion model's samples).
        every_n_epochs: write after every `every_n_epochs`-th epoch, an int >= 1.
        num_images: images per row (the first of each batch), an int >= 1.
        name: the summary tag.
        scale: pixel repetition of each image in the grid, an int >= 1.

    Example:
    ```python
    fixed, _ = kzoo.data.load_arrays("kzoo_shapes", num_examples=8)
    grid = ImageGridCallback(
        "workdir/logs/images", lambda model: [fixed, model.predict(fixed, verbose=0)]
    )
    model.fit(dataset, epochs=10, callbacks=[grid, keras.callbacks.TensorBoard("workdir/logs")])
    ```
    """

    def __init__(self, log_dir, sample_fn, every_n_epochs=1, num_images=8, name="samples", scale=2):
        super().__init__(log_dir, every_n_epochs)
        if not callable(sample_fn):
            raise ValueError(f"`sample_fn` must be callable. Received: sample_fn={sample_fn!r}")
        for arg, value in (("num_images", num_images), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be an integer >= 1. Received: {arg}={value!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
        self.sample_fn = sample_fn
        self.num_images = num_images
        self.name = name
        self.scale = scale

    def make_grid(self):
        """The uint8 `(H, W, C)` grid of the current model's samples."""
        samples = self.sample_fn(self.model)
        rows = list(samples) if isinstance(samples, list | tuple) else [samples]
        checked = []
        for index, row in enumerate(rows):
            row = np.asarray(keras.ops.convert_to_numpy(row), dtype=np.float32)
            if row.ndim != 4 or len(row) == 0 or row.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"`sample_fn` must return images (N, H, W, C) with N >= 1 and C in "
                    f"(1, 3, 4), or a list of such batches. Received: row {index} of shape "
                    f"{row.shape}"
                )
            if checked and row.shape[1:] != checked[0].shape[1:]:
                raise ValueError(
                    f"Every batch `sample_fn` returns must have the same image shape. "
                    f"Received: {checked[0].shape[1:]} and {row.shape[1:]}"
                )
            checked.append(row[: self.num_images])
        return make_grid(checked, scale=self.scale)

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        # Every worker samples: a distributed `predict` inside `sample_fn` needs all.
        grid = self.make_grid()
        if not self._should_write():
            return
        with self._file_writer().as_default():
            write_image(self.name, grid, step=epoch)
        self._file_writer().flush()


class MetricsCallback(_SummaryCallback):
    """Computes metrics of the whole model every few epochs; logs them to TensorBoard.

    Each value is also put into the epoch's `logs`, so it shows in the progress
    bar, in `History` (only for the epochs it was computed) and for callbacks
    listed after this one (`ModelCheckpoint(monitor="kid")`, `CSVLogger`).

    Args:
        log_dir: directory of the event files.
        metric_fns: dict name -> callable `model -> float` (e.g.
            `lambda model: compute_kid(real, sample(model))[0]`).
        every_n_epochs: compute after every `every_n_epochs`-th epoch, an int >= 1.

    Example:
    ```python
    fixed, _ = kzoo.data.load_arrays("kzoo_shapes", num_examples=64)
    metrics = MetricsCallback(
        "workdir/logs/metrics",
        {"psnr": lambda model: kzoo.metrics.psnr(fixed, model.predict(fixed, verbose=0))},
    )
    history = model.fit(dataset, epochs=10, callbacks=[metrics])
    history.history["psnr"]
    ```
    """

    def __init__(self, log_dir, metric_fns, every_n_epochs=1):
        super().__init__(log_dir, every_n_epochs)
        if not isinstance(metric_fns, dict) or not metric_fns:
            raise ValueError(
                f"`metric_fns` must be a non-empty dict name -> callable(model) -> float. "
                f"Received: metric_fns={metric_fns!r}"
            )
        for name, fn in metric_fns.items():
            if not isinstance(name, str) or not name or not callable(fn):
                raise ValueError(
                    f"`metric_fns` must map non-empty names to callables. "
                    f"Received: metric_fns[{name!r}]={fn!r}"
                )
        self.metric_fns = dict(metric_fns)

    def compute(self):
        """dict name -> float of every metric of the current model."""
        values = {}
        for name, fn in self.metric_fns.items():
            value = fn(self.model)
            value = keras.ops.convert_to_numpy(value) if not isinstance(value, float) else value
            if not isinstance(value, numbers.Real) and np.ndim(value) != 0:
                raise ValueError(
                    f"Metric {name!r} must return a scalar. Received: a value of shape "
                    f"{np.shape(value)}"
                )
            values[name] = float(value)
        return values

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        # Every worker computes: a distributed `predict` inside a metric needs all.
        values = self.compute()
        if logs is not None:
            logs.update(values)
        if not self._should_write():
            return
        with self._file_writer().as_default():
            for name, value in values.items():
                write_scalar(name, value, step=epoch)
        self._file_writer().flush()
