"""Distribution strategies for `fit`: one device, N devices on one host, N hosts.

`get_strategy("mirrored")` replicates the model over every GPU of the host (or
every logical CPU device when there is no GPU); `get_strategy("multi_worker")`
reads the cluster from `TF_CONFIG` and all-reduces gradients across hosts
(`tf.distribute.MultiWorkerMirroredStrategy`). See docs/distributed.md.

Keras 3.15's TensorFlow trainer cannot run `fit` under
MultiWorkerMirroredStrategy: two calls in
`keras/src/backend/tensorflow/trainer.py` fail (see `DistributedTrainerMixin`).
The fix overrides two private trainer methods, so this module pins the Keras
minor version it was written against and refuses any other at import.
"""

import json
import os
import socket
import time
import types

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")

# The patched trainer internals (`_maybe_symbolic_build`, `_make_function`) are
# private to Keras; re-check both failures before widening this range.
_KERAS_RANGE = ((3, 15), (3, 16))


def _check_keras_version(version=keras.__version__):
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    low, high = _KERAS_RANGE
    if not low <= major_minor < high:
        raise ImportError(
            "kzoo.training.distribute patches private Keras trainer internals written "
            f"for keras>={low[0]}.{low[1]},<{high[0]}.{high[1]}; re-check the patch in "
            "kzoo/training/distribute.py against the new keras/src/backend/tensorflow/"
            f"trainer.py before widening the pin. Received: keras=={version}"
        )


_check_keras_version()


# === Strategies ===
def get_strategy(name="default", *, worker_timeout_s=60):
    """Create the `tf.distribute` strategy that `fit` runs under.

    Build and compile the model inside `strategy.scope()`. Under
    `"multi_worker"`, also call `enable_multi_worker_fit(model)` (or give the
    model class `DistributedTrainerMixin`), batch the dataset by the global
    batch size, and keep `steps_per_execution=1`.

    Args:
        name: `"default"` (the strategy in scope: the no-op default outside any
            scope), `"mirrored"` (every GPU of this host, or every logical CPU
            device when there is none) or `"multi_worker"` (the cluster
            described by the `TF_CONFIG` environment variable).
        worker_timeout_s: `"multi_worker"` only: seconds to wait for the other
            tasks of `TF_CONFIG` to come up before raising `RuntimeError`.

    Returns:
        A `tf.distribute.Strategy`.

    Example:
    ```python
    strategy = kzoo.training.distribute.get_strategy("multi_worker")
    with strategy.scope():
        model = kzoo.models.VQVAE(image_shape=(32, 32, 3), codebook_size=512)
        model.compile(optimizer=keras.optimizers.AdamW(2e-4))
    kzoo.training.distribute.enable_multi_worker_fit(model)
    model.fit(dataset_of_global_batches, epochs=1)
    ```
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown distribution strategy. Expected one of {list(STRATEGIES)}. "
            f"Received: strategy={name!r}"
        )
    if (
        isinstance(worker_timeout_s, bool)
        or not isinstance(worker_timeout_s, int | float)
        or not worker_timeout_s > 0
    ):
        raise ValueError(
            "`worker_timeout_s` must be a positive number of seconds. "
            f"Received: worker_timeout_s={worker_timeout_s!r}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    return _multi_worker_strategy(worker_timeout_s)


def parse_tf_config(raw=None):
    """Validate a `TF_CONFIG` value; return `(cluster, task_type, task_index)`.

    Args:
        raw: the JSON string; `None` reads the `TF_CONFIG` environment variable.

    Returns:
        `cluster` (a dict of job name to a list of `"host:port"`), the task's
        job name and its index in that job.

    Example:
    ```python
    cluster, task_type, index = parse_tf_config(
        '{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},'
        ' "task": {"type": "worker", "index": 1}}'
    )
    ```
    """
    if raw is None:
        raw = os.environ.get("TF_CONFIG")
    expected = (
        'Expected JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
        '"task": {"type": "worker", "index": 0}}.'
    )
    if not raw:
        raise ValueError(
            "The `multi_worker` strategy reads the cluster from the `TF_CONFIG` "
            f"environment variable, which is not set. {expected} Received: TF_CONFIG={raw!r}"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"`TF_CONFIG` is not valid JSON ({error}). {expected} Received: TF_CONFIG={raw!r}"
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not (
        isinstance(workers, list)
        and workers
        and all(_is_address(address) for jobs in cluster.values() for address in jobs)
    ):
        raise ValueError(
            '`TF_CONFIG` must have "cluster" with a non-empty "worker" list of '
            f'"host:port" addresses. {expected} Received: TF_CONFIG={raw!r}'
        )
    task = config.get("task")
    task_type = task.get("type") if isinstance(task, dict) else None
    index = task.get("index") if isinstance(task, dict) else None
    if (
        task_type not in cluster
        or isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < len(cluster[task_type])
    ):
        raise ValueError(
            '`TF_CONFIG` must have "task" with a "type" named in "cluster" and an '
            f'"index" into that job\'s list. {expected} Received: TF_CONFIG={raw!r}'
        )
    return cluster, task_type, index


def _is_address(address):
    if not isinstance(address, str):
        return False
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


def _coordination_leader(cluster):
    """The task that hosts the coordination service: the chief, else worker 0."""
    job = "chief" if cluster.get("chief") else "worker"
    return job, cluster[job][0]


def wait_for_address(address, timeout_s, label="Worker"):
    """Retry a TCP connection to `"host:port"` until it succeeds or `timeout_s` passes.

    Args:
        address: `"host:port"` of a peer's gRPC server.
        timeout_s: seconds before giving up.
        label: how the error message names the peer.

    Returns:
        None once a connection was accepted.

    Example:
    ```python
    wait_for_address("10.0.0.1:2222", timeout_s=60)
    ```
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(remaining, 5))):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{label} {address} did not come up within {timeout_s:g} s "
                    f"(last TCP connect: {error}). Start every task listed in TF_CONFIG "
                    "(same cluster, its own task index), check that the address is "
                    "reachable from this host, or raise `worker_timeout_s`."
                ) from None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _multi_worker_strategy(worker_timeout_s):
    cluster, task_type, index = parse_tf_config()
    leader_job, leader_address = _coordination_leader(cluster)
    is_leader = (task_type, index) == (leader_job, 0)
    # A worker whose leader never starts would otherwise block forever inside
    # TF's C++ start-up (it ignores SIGTERM there); fail with the address instead.
    if not is_leader:
        wait_for_address(leader_address, worker_timeout_s, label=leader_job.capitalize())
    _configure_coordination_service(cluster, leader_job, worker_timeout_s)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.DeadlineExceededError as error:
        tasks = ", ".join(
            f"{job} {i} ({a})" for job, jobs in cluster.items() for i, a in enumerate(jobs)
        )
        raise RuntimeError(
            f"Not every task of TF_CONFIG registered within {worker_timeout_s:g} s "
            f"(cluster: {tasks}). Start every task with its own task index, or raise "
            f"`worker_timeout_s`. TensorFlow said: {error.message.splitlines()[0]}"
        ) from None


def _configure_coordination_service(cluster, leader_job, worker_timeout_s):
    """Configure TF's coordination service so start-up fails after a deadline.

    MultiWorkerMirroredStrategy configures the same service itself when none is
    set (`collective_all_reduce_strategy.py`), but with no registration deadline:
    the leader then waits forever for a task that never starts.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
        for job in ("chief", "worker")
        if cluster.get(job)
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader_job}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(worker_timeout_s * 1000),
        coordinated_jobs=jobs,
    )
    # The registration deadline is only enforced by the start-up barrier.
    context.context().coordination_service.cluster_register_with_barrier = True


# === The `fit` fix ===
def _in_multi_worker_mode(strategy):
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _local_value(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(model, base_method, iterator=None, data_batch=None):
    strategy = model._distribute_strategy
    if iterator is None or not _in_multi_worker_mode(strategy):
        return base_method(iterator=iterator, data_batch=data_batch)
    # Keras' `_maybe_symbolic_build` (called by `fit`/`evaluate`) learns the
    # batch shapes with `strategy.reduce("MEAN", batch, axis=None)` over the
    # whole (x, y) PerReplica batch; across workers that reduce fails with
    # `ValueError: Attempt to convert a value (PerReplica...)`. Building needs
    # only shapes and dtypes, which the local replica's values have.
    batch = None
    for _, _, distributed_iterator in iterator:
        batch = next(distributed_iterator)
        break
    if batch is None:  # no data: let Keras raise its own error
        return base_method(iterator=iterator, data_batch=data_batch)
    batch = keras.tree.map_structure(lambda value: _local_value(strategy, value), batch)
    with strategy.scope():
        model._symbolic_build(data_batch=batch)


def _rank1_scalars(step_function):
    def step(data):
        outputs = step_function(data)
        return keras.tree.map_structure(
            lambda value: (
                tf.reshape(value, [1])
                if isinstance(value, tf.Tensor | tf.Variable) and value.shape.rank == 0
                else value
            ),
            outputs,
        )

    return step


def _make_function(model, base_method, step_function):
    if not _in_multi_worker_mode(model.distribute_strategy):
        return base_method(step_function)
    if model.steps_per_execution != 1:
        raise ValueError(
            "`steps_per_execution` must be 1 under MultiWorkerMirroredStrategy (its "
            "multi-step loop fails in TensorFlow). "
            f"Received: steps_per_execution={model.steps_per_execution}"
        )
    # Keras' `reduce_per_replica` (applied to the step's logs by `_make_function`)
    # reduces across workers with `strategy.reduce("MEAN", value, axis=0)`, which
    # fails on the scalar logs with `Invalid reduction dimension 0 for input with
    # 0 dimensions`. Shape [1] logs reduce to the same scalar mean.
    return base_method(_rank1_scalars(step_function))


class DistributedTrainerMixin:
    """Lets `fit`/`evaluate` run under MultiWorkerMirroredStrategy in Keras 3.15.

    Put it before `keras.Model` in a model's bases. Under any other strategy it
    does nothing. For an existing model instance use `enable_multi_worker_fit`.

    Keras 3.15 fails in two calls of `keras/src/backend/tensorflow/trainer.py`
    when the strategy spans workers; this mixin replaces each:
    - `_maybe_symbolic_build` reduces the whole `(x, y)` PerReplica batch across
      workers only to learn its shapes (`ValueError: Attempt to convert a value
      (PerReplica...)`): build from the local replica's values instead.
    - `reduce_per_replica` reduces the scalar logs with `axis=0` (`Invalid
      reduction dimension 0 for input with 0 dimensions`): the step function
      returns them with shape `[1]`.

    Example:
    ```python
    class Classifier(DistributedTrainerMixin, keras.Model):
        ...

    with get_strategy("multi_worker").scope():
        model = Classifier()
        model.compile(optimizer="adam", loss="mse")
    model.fit(dataset_of_global_batches, epochs=1)
    ```
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return _maybe_symbolic_build(
            self, super()._maybe_symbolic_build, iterator=iterator, data_batch=data_batch
        )

    def _make_function(self, step_function):
        return _make_function(self, super()._make_function, step_function)


def enable_multi_worker_fit(model):
    """Apply `DistributedTrainerMixin`'s fix to an existing model instance.

    The model's class is unchanged (saving and `get_config` are unaffected);
    only this instance's two trainer methods are wrapped, and they do nothing
    different unless the model was created under a multi-worker strategy.

    Args:
        model: a `keras.Model` built under the strategy's scope.

    Returns:
        `model`, patched in place.

    Example:
    ```python
    with strategy.scope():
        model = kzoo.models.VQVAE(image_shape=(32, 32, 3), codebook_size=512)
        model.compile(optimizer="adam")
    enable_multi_worker_fit(model)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    if isinstance(model, DistributedTrainerMixin) or getattr(
        model, "_kzoo_multi_worker_fit", False
    ):
        return model
    base_build, base_make_function = model._maybe_symbolic_build, model._make_function

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        return _maybe_symbolic_build(self, base_build, iterator=iterator, data_batch=data_batch)

    def make_function(self, step_function):
        return _make_function(self, base_make_function, step_function)

    patches = {"_maybe_symbolic_build": maybe_symbolic_build, "_make_function": make_function}
    # object.__setattr__ skips Keras' attribute tracking: these are methods, not state.
    for name, function in patches.items():
        object.__setattr__(model, name, types.MethodType(function, model))
    object.__setattr__(model, "_kzoo_multi_worker_fit", True)
    # Step functions traced before the patch would keep the failing reduce.
    model.train_function = model.test_function = None
    return model
