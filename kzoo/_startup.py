"""A quiet TensorFlow start-up for `import kzoo` and the `kzoo` command.

Loading TensorFlow prints C++ log lines that ask nothing of a kzoo user: CUDA probing
on a machine without a GPU ("Could not find cuda drivers", and at the first op
"failed call to cuInit: UNKNOWN ERROR (303)", logged as an ERROR), CPU-feature and
oneDNN notes; LiteRT adds "Created TensorFlow Lite XNNPACK delegate" at its first run.
`TF_CPP_MIN_LOG_LEVEL=3` hides the cuInit line, but TensorFlow reads it once, when it
loads, and the lines written before absl logging is initialised ignore it
(https://github.com/tensorflow/tensorflow/issues/100442). So, before TensorFlow is
imported, kzoo sets `TF_CPP_MIN_LOG_LEVEL=3` unless the user set it, and drops the
known lines from stderr while TensorFlow loads (and while LiteRT runs); everything
else written to stderr then, Python warnings and errors included, passes through.

`KZOO_DEBUG=1` leaves all of it as TensorFlow prints it.
"""

import contextlib
import os
import sys
import tempfile
import threading

# ERROR too: the cuInit line of every machine without a GPU is logged at ERROR level.
QUIET_TF_CPP_MIN_LOG_LEVEL = "3"
STDERR_FD = 2
# Lines TensorFlow writes to stderr while it loads that need no action from a user.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "oneDNN custom operations are on",
    "Attempting to register factory for plugin",
)
# Printed by the LiteRT interpreter at its first run in a process.
LITERT_NOISE = ("Created TensorFlow Lite XNNPACK delegate for CPU",)

# fd 2 is process-wide: one filtered block at a time, or a nested restore loses it.
_STDERR_LOCK = threading.RLock()


def debug_enabled(environ=None):
    """Whether `KZOO_DEBUG` is set (non-empty): then nothing is hidden."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("KZOO_DEBUG"))


def quiet_tensorflow_logging(environ=None):
    """Sets `TF_CPP_MIN_LOG_LEVEL=3` unless it is set already or `KZOO_DEBUG` is.

    Returns:
        True when start-up lines are to be hidden (`KZOO_DEBUG` unset).
    """
    environ = os.environ if environ is None else environ
    if debug_enabled(environ):
        return False
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_MIN_LOG_LEVEL)
    return True


def drop_noise(text, noise=STARTUP_NOISE):
    """`text` without the lines that contain any of `noise`."""
    return "".join(
        line for line in text.splitlines(keepends=True) if not any(n in line for n in noise)
    )


@contextlib.contextmanager
def filtered_stderr(noise=STARTUP_NOISE):
    """Drops the lines containing any of `noise` from what the block writes to fd 2.

    Works on the file descriptor, where TensorFlow's C++ code writes (a notebook's
    `sys.stderr` is not fd 2 and is left alone). The other lines are written to fd 2
    when the block ends, also when it raises.
    """
    with _STDERR_LOCK:
        try:
            saved_fd = os.dup(STDERR_FD)
        except OSError:  # fd 2 is closed: nothing to filter
            yield
            return
        _flush_stderr()
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), STDERR_FD)
            try:
                yield
            finally:
                _flush_stderr()
                os.dup2(saved_fd, STDERR_FD)
                os.close(saved_fd)
                captured.seek(0)
                kept = drop_noise(captured.read().decode(errors="replace"), noise)
                if kept:
                    with open(STDERR_FD, "wb", closefd=False) as stderr:
                        stderr.write(kept.encode())


def _flush_stderr():
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()


@contextlib.contextmanager
def quiet_stderr(noise):
    """`filtered_stderr(noise)`, or nothing when `KZOO_DEBUG` is set."""
    if debug_enabled():
        yield
        return
    with filtered_stderr(noise):
        yield


@contextlib.contextmanager
def quiet_tensorflow_start():
    """Imports inside this block load TensorFlow without its start-up chatter.

    A no-op when TensorFlow is loaded already (too late to change anything) or when
    `KZOO_DEBUG` is set.
    """
    if "tensorflow" in sys.modules or not quiet_tensorflow_logging():
        yield
        return
    with filtered_stderr(STARTUP_NOISE):
        yield
