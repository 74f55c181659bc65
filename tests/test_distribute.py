"""kzoo.training.distribute: strategy names and errors, TF_CONFIG checks, the
bounded wait for peers, the `fit` fix being inert off multi-worker, and
MirroredStrategy on two logical CPUs (in a subprocess: devices are per process)."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo.training import distribute

WORKER = os.path.join(os.path.dirname(__file__), "integration", "_multi_worker_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tf_config(addresses, index=0, task_type="worker"):
    return json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": task_type, "index": index}}
    )


# === get_strategy ===
def test_default_strategy_is_the_one_in_scope():
    assert distribute.get_strategy() is tf.distribute.get_strategy()
    assert distribute.get_strategy("default").num_replicas_in_sync == 1


@pytest.mark.parametrize("name", ["foo", "Mirrored", "", None])
def test_unknown_strategy_name(name):
    with pytest.raises(ValueError, match=rf"default.*mirrored.*multi_worker.*strategy={name!r}"):
        distribute.get_strategy(name)


@pytest.mark.parametrize("timeout", [0, -1, True, "60", None])
def test_bad_worker_timeout(timeout):
    with pytest.raises(ValueError, match=rf"Received: worker_timeout_s={timeout!r}"):
        distribute.get_strategy("multi_worker", worker_timeout_s=timeout)


# === TF_CONFIG ===
def test_parse_tf_config_returns_cluster_and_task():
    raw = json.dumps(
        {
            "cluster": {"chief": ["h0:1"], "worker": ["h1:2", "h2:3"]},
            "task": {"type": "worker", "index": 1},
        }
    )
    cluster, task_type, index = distribute.parse_tf_config(raw)
    assert cluster == {"chief": ["h0:1"], "worker": ["h1:2", "h2:3"]}
    assert (task_type, index) == ("worker", 1)


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", 'non-empty "worker" list'),
        ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', '"worker" list'),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "host"),
        ('{"cluster": {"worker": ["h:1"]}}', '"task"'),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}', '"task"'),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}', '"index"'),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}', '"index"'),
    ],
)
def test_bad_tf_config(raw, message):
    with pytest.raises(ValueError, match="TF_CONFIG") as info:
        distribute.parse_tf_config(raw)
    assert message in str(info.value)
    assert str(info.value).endswith(f"Received: TF_CONFIG={raw!r}")


def test_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="`TF_CONFIG` environment variable, which is not set"):
        distribute.get_strategy("multi_worker")


def test_worker_whose_leader_never_starts_fails_after_the_timeout(monkeypatch):
    # Task 1 waits for worker 0 (the coordination leader) before starting
    # anything in TF; nobody listens on worker 0's port.
    dead = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv("TF_CONFIG", _tf_config([dead, f"127.0.0.1:{_free_port()}"], index=1))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"Worker {dead} did not come up within 0.5 s"):
        distribute.get_strategy("multi_worker", worker_timeout_s=0.5)
    # It retried until the deadline instead of giving up on the first refusal.
    assert time.monotonic() - start >= 0.5


def test_wait_for_address_returns_once_the_peer_listens():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        distribute.wait_for_address(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=5)


# === The Keras version pin ===
@pytest.mark.parametrize("version", ["3.14.2", "3.16.0", "4.0.0"])
def test_other_keras_versions_are_refused(version):
    with pytest.raises(ImportError, match=rf"keras>=3.15,<3.16.*Received: keras=={version}"):
        distribute._check_keras_version(version)


def test_pinned_keras_version_is_accepted():
    distribute._check_keras_version("3.15.1")
    distribute._check_keras_version(keras.__version__)


# === The fit fix is inert off multi-worker ===
class PlainModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


class MixedModel(distribute.DistributedTrainerMixin, PlainModel):
    pass


def _fit(model):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    return model.get_weights(), history.history["loss"]


def _fit_seeded(model_factory):
    keras.utils.set_random_seed(0)
    return _fit(model_factory())


def test_mixin_and_instance_patch_change_nothing_on_one_device():
    weights, losses = _fit_seeded(PlainModel)
    for factory in (MixedModel, lambda: distribute.enable_multi_worker_fit(PlainModel())):
        other_weights, other_losses = _fit_seeded(factory)
        assert other_losses == losses
        for a, b in zip(other_weights, weights, strict=True):
            np.testing.assert_array_equal(a, b)


def test_enable_multi_worker_fit_keeps_the_class_config_and_saving(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    config = model.get_config()
    assert distribute.enable_multi_worker_fit(model) is model
    assert distribute.enable_multi_worker_fit(model) is model  # idempotent
    assert type(model) is keras.Sequential
    assert model.get_config() == config
    _fit(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    x = np.ones((2, 4), "float32")
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0), model(x))


def test_enable_multi_worker_fit_rejects_non_models():
    with pytest.raises(TypeError, match="keras.Model"):
        distribute.enable_multi_worker_fit(keras.layers.Dense(3))


# === MirroredStrategy, two logical CPU devices ===
@pytest.mark.slow
def test_mirrored_fit_on_two_cpu_devices_matches_one_device(tmp_path):
    out = tmp_path / "mirrored.npz"
    process = subprocess.Popen(
        [sys.executable, WORKER, "mirrored", str(out), "--models", "tiny"],
        env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    spec = importlib.util.spec_from_file_location("_multi_worker_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    reference = worker.fit_model("tiny", tf.distribute.get_strategy())
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-4000:]
    mirrored = dict(np.load(out))
    assert int(mirrored["num_replicas"]) == 2
    keys = [k for k in reference if k.startswith("tiny_w")]
    assert keys
    for key in keys:
        np.testing.assert_allclose(mirrored[key], reference[key], rtol=0, atol=1e-6)
    np.testing.assert_allclose(mirrored["tiny_log_loss"], reference["tiny_log_loss"], rtol=1e-5)
