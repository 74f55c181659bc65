"""Two worker processes on 127.0.0.1 fit under MultiWorkerMirroredStrategy.

Both workers must end with the same weights as each other and as one process
fitting the same global batches (the EMA VQ codebook included), `kzoo train
--set strategy=multi_worker` must train as one process does, and a worker whose
peer never starts must fail within its `worker_timeout_s` instead of hanging.
"""

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ._tiny import TINY_VQVAE

pytestmark = pytest.mark.slow

WORKER = os.path.join(os.path.dirname(__file__), "_multi_worker_worker.py")
# A hang must fail the test, not CI. TF ignores SIGTERM while it waits for
# peers, so subprocess's SIGKILL on timeout is the one that works.
WORKER_TIMEOUT_S = 240
# The VQ-VAE with an EMA codebook: its encoder and decoder train by gradients,
# its codebook by statistics summed over replicas.
MODELS = ("tiny", "vqvae_ema")
# EMA sums over 64 vs 128 vectors reach |15|: float32 rounding of two half-sums
# against one sum leaves ~1e-6 relative, which the next steps carry on.
RTOL = {"tiny": 0, "vqvae_ema": 1e-5}


def _load_worker_module():
    spec = importlib.util.spec_from_file_location("_multi_worker_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tf_config(addresses, index):
    return json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    )


def _spawn(tf_config, out, *args):
    return _spawn_argv(tf_config, [WORKER, "multi_worker", str(out), *args])


def _spawn_argv(tf_config, argv, cwd=None):
    env = dict(os.environ, TF_CONFIG=tf_config, KERAS_BACKEND="tensorflow")
    return subprocess.Popen(
        [sys.executable, *argv],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(processes, timeout_s):
    """Wait for all processes; kill them all if any fails or the time runs out."""
    deadline = time.monotonic() + timeout_s
    errors = [None] * len(processes)
    try:
        for i, process in enumerate(processes):
            _, errors[i] = process.communicate(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-worker processes did not finish within {timeout_s} s (hang?)")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, error) for process, error in zip(processes, errors, strict=True)]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multi_worker")
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    outs = [directory / f"worker{i}.npz" for i in range(2)]
    processes = [
        _spawn(_tf_config(addresses, i), outs[i], "--models", ",".join(MODELS)) for i in range(2)
    ]
    # The single-process reference runs here while the workers start up. One
    # device under a strategy, so `fit` builds the model before `on_train_begin`
    # and the initial weights are recorded as in the workers.
    import tensorflow as tf

    worker = _load_worker_module()
    reference = {}
    for name in MODELS:
        reference.update(worker.fit_model(name, tf.distribute.OneDeviceStrategy("/cpu:0")))
    for i, (returncode, stderr) in enumerate(_wait(processes, WORKER_TIMEOUT_S)):
        assert returncode == 0, f"worker {i} failed:\n{stderr[-4000:]}"
    return [dict(np.load(out)) for out in outs], reference


def _weights(arrays, model_name, prefix="w"):
    start = f"{model_name}_{prefix}"
    keys = sorted(
        (k for k in arrays if k.startswith(start) and k[len(start) :].isdigit()),
        key=lambda k: int(k[len(start) :]),
    )
    assert keys, f"no weights saved for {model_name}"
    return [arrays[k] for k in keys]


@pytest.mark.parametrize("model_name", MODELS)
def test_workers_end_with_identical_weights(worker_results, model_name):
    (worker0, worker1), _ = worker_results
    assert int(worker0["num_replicas"]) == int(worker1["num_replicas"]) == 2
    for w0, w1 in zip(_weights(worker0, model_name), _weights(worker1, model_name), strict=True):
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    # Same initial weights on both workers (seeded), so equality above is earned.
    for w0, w1 in zip(
        _weights(worker0, model_name, "init_w"),
        _weights(worker1, model_name, "init_w"),
        strict=True,
    ):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.parametrize("model_name", MODELS)
def test_workers_match_a_single_process_run(worker_results, model_name):
    (worker0, _), reference = worker_results
    weights = _weights(worker0, model_name)
    expected = _weights(reference, model_name)
    assert len(weights) == len(expected)
    # SGD steps: a loss or gradient scaled by the replica count would move
    # these by ~1e-2, and an unsynchronised step would differ entirely.
    initial = _weights(reference, model_name, prefix="init_w")
    moved = max(np.abs(w - w_init).max() for w, w_init in zip(expected, initial, strict=True))
    assert moved > 1e-3, "the reference run did not train"
    for actual, want in zip(weights, expected, strict=True):
        np.testing.assert_allclose(actual, want, rtol=RTOL[model_name], atol=1e-6)


def test_ema_codebook_matches_a_single_process_run(worker_results):
    # The codebook follows EMA statistics, not gradients: counts and sums of this
    # replica's vectors, summed over replicas. Unsummed, each worker would average
    # its own half of the batch and the codebooks would drift apart.
    (worker0, worker1), reference = worker_results
    worker = _load_worker_module()
    for name in worker.CODEBOOK_VARIABLES:
        expected = reference[f"vqvae_ema_{name}"]
        moved = np.abs(expected - reference[f"vqvae_ema_init_{name}"]).max()
        assert moved > 1e-2, f"the EMA did not move {name}"
        for arrays in (worker0, worker1):
            # Float32 sums of two halves vs one sum: rounding, ~1e-7 relative.
            np.testing.assert_allclose(arrays[f"vqvae_ema_{name}"], expected, rtol=1e-6, atol=1e-6)


def test_logs_are_global_means(worker_results):
    (worker0, worker1), reference = worker_results
    for key in ("tiny_log_loss", "tiny_log_abs_error", "tiny_eval_loss", "vqvae_ema_log_loss"):
        assert float(worker0[key]) == float(worker1[key])
        np.testing.assert_allclose(float(worker0[key]), float(reference[key]), rtol=1e-5)


def test_steps_per_execution_above_one_is_refused(worker_results):
    (worker0, worker1), _ = worker_results
    for worker in (worker0, worker1):
        message = str(worker["steps_per_execution_error"])
        assert "steps_per_execution" in message and "Received: steps_per_execution=2" in message


def test_leader_fails_within_its_timeout_when_a_worker_never_starts(tmp_path):
    listening, never_started = _free_ports(2)
    addresses = [f"127.0.0.1:{listening}", f"127.0.0.1:{never_started}"]
    process = _spawn(_tf_config(addresses, 0), tmp_path / "out.npz", "--worker-timeout-s", "3")
    ((returncode, stderr),) = _wait([process], 120)
    assert returncode != 0
    assert "RuntimeError" in stderr and "registered within 3 s" in stderr
    assert f"worker 1 (127.0.0.1:{never_started})" in stderr
    assert not (tmp_path / "out.npz").exists()


# === `kzoo train --set strategy=multi_worker` ===
# k-means init and dead-code restarts run on each replica's shard and average the
# replicas' results, so two replicas agree with each other but not with one
# process; without them the recipe's EMA VQ-VAE trains as one process does.
CLI_ARGS = [
    "train",
    "vqvae_shapes",
    "--steps",
    "2",
    *TINY_VQVAE,
    "--set",
    "model.quantizer_options.kmeans_init=false",
    "--set",
    "model.quantizer_options.dead_code_threshold=0",
]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Workdirs of `kzoo train` on two workers (`multi_worker/0`, `/1`) and of one
    process under `strategy=mirrored` (one replica: one CPU device here).

    Not the default strategy: under any tf.distribute strategy, Keras' `fit` opens
    an iterator of the dataset for its symbolic build before the training one, so
    the seeded reshuffle (`reshuffle_each_iteration`) hands training the next
    permutation, other batches than a default-strategy run trains on.
    """
    root = tmp_path_factory.mktemp("cli")
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    workdirs = [root / "multi_worker" / str(i) for i in range(2)]
    processes = [
        _spawn_argv(
            _tf_config(addresses, i),
            [
                "-m",
                "kzoo",
                *CLI_ARGS,
                "--workdir",
                str(workdirs[i]),
                "--set",
                "strategy=multi_worker",
            ],
            cwd=root,
        )
        for i in range(2)
    ]
    from kzoo.cli import main

    one_process = root / "mirrored"
    assert main([*CLI_ARGS, "--workdir", str(one_process), "--set", "strategy=mirrored"]) == 0
    for i, (returncode, stderr) in enumerate(_wait(processes, WORKER_TIMEOUT_S)):
        assert returncode == 0, f"kzoo train worker {i} failed:\n{stderr[-4000:]}"
    return workdirs, one_process


def _assert_same_run(workdir, reference):
    from kzoo.training import load_trained_model

    trained = load_trained_model(str(workdir))
    expected = load_trained_model(str(reference))
    for actual, want in zip(trained.weights, expected.weights, strict=True):
        # Two AdamW steps of lr 1e-3 move a weight by up to 2e-3; a wrong shard or
        # gradient scale moves it by about that. Summation order alone leaves
        # ~1e-6: Adam normalises the rounding noise of near-zero gradients (the
        # attention's query bias) to steps of that size.
        np.testing.assert_allclose(actual, want, rtol=1e-5, atol=1e-5, err_msg=actual.path)
    losses = []
    for directory in (workdir, reference):
        with open(directory / "log.csv") as f:
            losses.append([float(row["loss"]) for row in csv.DictReader(f)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_cli_multi_worker_trains_as_one_process_under_a_strategy(cli_runs):
    (chief, other), one_process = cli_runs
    with open(chief / "config.json") as f:
        assert json.load(f)["strategy"] == "multi_worker"
    with open(chief / "state.json") as f:
        assert json.load(f)["step"] == 2
    # Only the chief writes: every worker holds the same weights.
    assert os.listdir(other) == []
    _assert_same_run(chief, one_process)
