"""SIGKILL a `kzoo train` process mid-run; the same command then finishes where an
uninterrupted run finishes (weights, optimizer state and data position restored)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kzoo.cli import main
from kzoo.training import load_trained_model

from ._tiny import TINY_VQVAE

pytestmark = pytest.mark.slow

ARGS = ["train", "vqvae_shapes", "--steps", "12", *TINY_VQVAE]


def _epoch(workdir):
    try:
        with open(os.path.join(workdir, "state.json")) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError):
        return 0


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    killed = str(tmp_path / "killed")
    command = [sys.executable, "-m", "kzoo", *ARGS, "--workdir", killed]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _epoch(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    epoch_at_kill = _epoch(killed)
    assert 2 <= epoch_at_kill < 6

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with open(os.path.join(killed, "state.json")) as f:
        assert json.load(f)["step"] == 12
    with open(os.path.join(killed, "log.csv")) as f:
        epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert epochs[-1] == "5" and len(epochs) >= 6  # the rerun started after the last checkpoint

    straight = str(tmp_path / "straight")
    assert main([*ARGS, "--workdir", straight]) == 0
    resumed_model, straight_model = load_trained_model(killed), load_trained_model(straight)
    assert int(resumed_model.optimizer.iterations) == int(straight_model.optimizer.iterations)
    for a, b in zip(resumed_model.get_weights(), straight_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
