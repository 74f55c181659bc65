"""Fit tiny models for a few steps under one strategy; save their weights as .npz.

Run as a subprocess by tests/test_distribute.py and
tests/integration/test_multi_worker.py, because a strategy changes process-wide
TF state (logical devices, a gRPC server). The tests also import `fit_model`
from this file to compute the single-process reference in their own process.

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:PORT0", "127.0.0.1:PORT1"]},
                "task": {"type": "worker", "index": 0}}' \
        python tests/integration/_multi_worker_worker.py multi_worker out.npz --models tiny

`out.npz` holds `<model>_w<i>` for every model variable (`<model>_init_w<i>`
before `fit`), `<model>_log_<name>` for the last epoch's logs, for the VQ-VAEs
`<model>_<name>` and `<model>_init_<name>` for each codebook variable in
`CODEBOOK_VARIABLES` the quantizer has, `tiny_eval_loss`, `num_replicas` and,
under `multi_worker`, `steps_per_execution_error` (the message of the expected error).
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 8
NUM_EXAMPLES = 32  # 4 steps of the global batch
MODELS = ("tiny", "vqvae", "vqvae_ema")
CODEBOOK_VARIABLES = ("codebook", "ema_cluster_size", "ema_embed_sum")


def tiny_model_class():
    import keras
    from keras import ops

    class TinyRegressor(keras.Model):
        """Two dense layers whose `compute_loss` adds a penalty and a metric."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(8, activation="tanh")
            self.head = keras.layers.Dense(2)
            # Keras loss objects divide by the replica count under tf.distribute;
            # a bare ops.mean here would double the all-reduced gradient.
            self.huber = keras.losses.Huber()
            self.penalty = keras.losses.MeanSquaredError()
            self.abs_error = keras.metrics.MeanAbsoluteError(name="abs_error")

        def call(self, inputs):
            return self.head(self.hidden(inputs))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            self.abs_error.update_state(y, y_pred)
            return self.huber(y, y_pred) + 0.1 * self.penalty(ops.zeros_like(y_pred), y_pred)

    return TinyRegressor


def make_data(model_name, seed=0):
    """A fixed `(x, y)` of NUM_EXAMPLES examples for `model_name`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if model_name == "tiny":
        x = rng.normal(size=(NUM_EXAMPLES, 4)).astype("float32")
        y = np.stack([x.sum(-1), x[:, 0] * x[:, 1]], axis=-1).astype("float32")
        return x, y
    images = rng.uniform(-1, 1, size=(NUM_EXAMPLES, 16, 16, 3)).astype("float32")
    return images, images


def build_model(model_name, steps_per_execution=1):
    """The compiled model `model_name`, with fixed initial weights."""
    import keras

    keras.utils.set_random_seed(0)
    if model_name == "tiny":
        model = tiny_model_class()()
        # SGD, not Adam: a gradient scaled by the replica count would show.
        model.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=steps_per_execution)
        return model
    import kzoo.models

    model = kzoo.models.VQVAE(
        image_shape=(16, 16, 3),
        codebook_size=16,
        embedding_dim=8,
        channels=(8, 16),
        norm_groups=4,
        decay=0.9 if model_name == "vqvae_ema" else None,
        attention=False,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    return model


def fit_model(model_name, strategy, epochs=1):
    """Fit `model_name` under `strategy` on the global batches; return its arrays."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kzoo.training import distribute

    with strategy.scope():
        model = build_model(model_name)
    distribute.enable_multi_worker_fit(model)
    arrays = {}

    def codebook_arrays(prefix):
        quantizer = getattr(model, "quantizer", None)
        return {
            f"{prefix}{name}": np.asarray(getattr(quantizer, name))
            for name in CODEBOOK_VARIABLES
            if hasattr(quantizer, name)
        }

    def record_initial_weights(logs=None):
        # The tiny subclass is built by `fit` itself (from the local replica's batch).
        for i, w in enumerate(model.get_weights()):
            arrays[f"{model_name}_init_w{i}"] = np.asarray(w)
        arrays.update(codebook_arrays(f"{model_name}_init_"))

    dataset = tf.data.Dataset.from_tensor_slices(make_data(model_name)).batch(GLOBAL_BATCH)
    history = model.fit(
        dataset,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[keras.callbacks.LambdaCallback(on_train_begin=record_initial_weights)],
    )
    arrays.update({f"{model_name}_w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
    arrays.update(codebook_arrays(f"{model_name}_"))
    arrays.update({f"{model_name}_log_{k}": np.float64(v[-1]) for k, v in history.history.items()})
    if model_name == "tiny":
        logs = model.evaluate(dataset, verbose=0, return_dict=True)
        arrays["tiny_eval_loss"] = np.float64(logs["loss"])
    return arrays


def steps_per_execution_error(strategy):
    """The error `fit` raises for `steps_per_execution=2` (empty if none)."""
    import tensorflow as tf

    from kzoo.training import distribute

    with strategy.scope():
        model = build_model("tiny", steps_per_execution=2)
    distribute.enable_multi_worker_fit(model)
    dataset = tf.data.Dataset.from_tensor_slices(make_data("tiny")).batch(GLOBAL_BATCH)
    try:
        model.fit(dataset, epochs=1, verbose=0)
    except ValueError as error:
        return str(error)
    return ""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy", choices=["default", "mirrored", "multi_worker"])
    parser.add_argument("out")
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--worker-timeout-s", type=float, default=60)
    args = parser.parse_args()
    models = args.models.split(",")
    if not set(models) <= set(MODELS):
        parser.error(f"--models must name some of {MODELS}")

    import tensorflow as tf

    if args.strategy == "mirrored":
        # Two replicas on one CPU; must run before TF initialises its devices.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )

    import numpy as np

    from kzoo.training import distribute

    strategy = distribute.get_strategy(args.strategy, worker_timeout_s=args.worker_timeout_s)
    arrays = {"num_replicas": np.int64(strategy.num_replicas_in_sync)}
    for name in models:
        arrays.update(fit_model(name, strategy))
    if args.strategy == "multi_worker":
        arrays["steps_per_execution_error"] = np.str_(steps_per_execution_error(strategy))
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
