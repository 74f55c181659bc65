"""A quiet start: no TensorFlow C++ start-up chatter from `kzoo`, all of it with KZOO_DEBUG=1."""

import os
import subprocess
import sys

import pytest

from kzoo import _startup

# What TensorFlow prints on a machine without a GPU when nothing hides it.
NOISE_MARKERS = (
    "E0000",
    "cuInit",
    "oneDNN",
    "cudart_stub",
    "cpu_feature_guard",
    "absl::InitializeLog",
    "XNNPACK",
)
TF_STARTUP_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796601784.227502    4801 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
    "I0000 00:00:1796601784.369234    4801 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.\n"
    "E0000 00:00:1796601794.110201    4801 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)


def _tiny_tflite(directory):
    """A `.tflite` file whose `serving_default` signature maps `x` `(None, 3)` to `2 * x`."""
    import tensorflow as tf

    module = tf.Module()
    module.double = tf.function(
        lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")]
    )
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.double})
    path = directory / "double.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(directory)).convert())
    return str(path)


def test_cli_process_prints_no_tensorflow_startup_lines(tmp_path):
    tflite = _tiny_tflite(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KZOO_DEBUG")}
    # `python -m kzoo recipes` after one op (TensorFlow probes CUDA at the first op)
    # and one LiteRT run (the interpreter announces its CPU delegate at the first).
    code = (
        "import runpy, sys\n"
        "import kzoo, keras, numpy as np\n"
        "keras.ops.add(1, 1)\n"
        "from kzoo.export import run_litert\n"
        f"y = run_litert({tflite!r}, 'serving_default', {{'x': np.ones((1, 3), 'float32')}})\n"
        "assert y['y'].tolist() == [[2.0, 2.0, 2.0]], y\n"
        "sys.argv = ['kzoo', 'recipes']\n"
        "runpy.run_module('kzoo', run_name='__main__', alter_sys=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "vqvae_shapes" in result.stdout
    assert [m for m in NOISE_MARKERS if m in result.stderr] == [], result.stderr


def test_quiet_logging_sets_the_level_only_where_the_user_did_not():
    environ = {}
    assert _startup.quiet_tensorflow_logging(environ)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "3"}
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert _startup.quiet_tensorflow_logging(environ)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0"}


@pytest.mark.parametrize("value", ["1", "true"])
def test_kzoo_debug_leaves_the_environment_alone(value):
    environ = {"KZOO_DEBUG": value}
    assert not _startup.quiet_tensorflow_logging(environ)
    assert environ == {"KZOO_DEBUG": value}


def test_startup_lines_are_dropped_and_other_stderr_output_kept(capfd):
    kept = "Traceback (most recent call last):\nValueError: a real error\n"
    with pytest.raises(RuntimeError, match="raised inside"):
        with _startup.filtered_stderr():
            os.write(2, (TF_STARTUP_LINES + kept).encode())
            raise RuntimeError("raised inside")
    assert capfd.readouterr().err == kept
    assert _startup.drop_noise(TF_STARTUP_LINES) == ""


def test_kzoo_debug_shows_the_litert_line(capfd, monkeypatch):
    line = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    with _startup.quiet_stderr(_startup.LITERT_NOISE):
        os.write(2, line.encode())
    assert capfd.readouterr().err == ""
    monkeypatch.setenv("KZOO_DEBUG", "1")
    with _startup.quiet_stderr(_startup.LITERT_NOISE):
        os.write(2, line.encode())
    assert capfd.readouterr().err == line
