"""Atomic checkpoints of a whole model (weights, optimizer state, step) in a workdir.

Each checkpoint is one `.keras` file written under a temporary name and renamed;
`state.json` (also replaced atomically) names the current file and the epoch it
ends. A run killed at any instant leaves either the old or the new checkpoint,
never a half-written one.
"""

import json
import os

import keras

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"


def write_json_atomic(path, data):
    """Write `data` as JSON to `path` through a temporary file and a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON. Received: {value!r}")


def save_checkpoint(model, workdir, epoch, step):
    """Save `model` (with optimizer state) as the workdir's current checkpoint."""
    filename = f"checkpoint-{step:08d}.keras"
    path = os.path.join(workdir, filename)
    tmp = os.path.join(workdir, f".tmp-{filename}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    previous = read_state(workdir)
    write_json_atomic(
        os.path.join(workdir, STATE_FILE), {"epoch": epoch, "step": step, "checkpoint": filename}
    )
    if previous and previous["checkpoint"] != filename:
        old = os.path.join(workdir, previous["checkpoint"])
        if os.path.exists(old):
            os.remove(old)
    return path


def read_state(workdir):
    """The workdir's checkpoint state dict, or None if it has no checkpoint."""
    path = os.path.join(workdir, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        state["epoch"], state["step"], state["checkpoint"]  # noqa: B018 (required keys)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"The checkpoint state file is corrupt ({error}). Received: workdir={workdir!r}"
        ) from None
    return state


def load_checkpoint(workdir):
    """`(model, state)` from the workdir's current checkpoint, or `(None, None)`.

    Raises:
        ValueError: the workdir does not exist, or its checkpoint cannot be read.
    """
    if not os.path.isdir(workdir):
        raise ValueError(f"The workdir does not exist. Received: workdir={workdir!r}")
    state = read_state(workdir)
    _remove_stale_temporaries(workdir)
    if state is None:
        return None, None
    path = os.path.join(workdir, state["checkpoint"])
    try:
        import kzoo.diffusion  # noqa: F401  (register kzoo classes for deserialization)
        import kzoo.layers  # noqa: F401
        import kzoo.models  # noqa: F401

        model = keras.saving.load_model(path)
    except Exception as error:  # zip, h5 and config errors all mean "unreadable"
        raise ValueError(
            f"The checkpoint {state['checkpoint']} cannot be loaded "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Received: workdir={workdir!r}"
        ) from None
    return model, state


def _remove_stale_temporaries(workdir):
    """Delete `.tmp-*` files a killed run left behind (never the current checkpoint)."""
    for name in os.listdir(workdir):
        if name.startswith(".tmp-"):
            try:
                os.remove(os.path.join(workdir, name))
            except OSError:
                pass


def load_trained_model(workdir):
    """The workdir's latest trained model; a clear error if there is none."""
    model, _ = load_checkpoint(workdir)
    if model is None:
        raise ValueError(
            "The workdir holds no trained model (no checkpoint yet: run `kzoo train` first). "
            f"Received: workdir={workdir!r}"
        )
    return model


class CheckpointCallback(keras.callbacks.Callback):
    """Saves an atomic checkpoint at the end of every epoch whose loss is finite.

    With an EMA optimizer (`use_ema=True`) Keras swaps the averaged weights into
    the model after the last `on_epoch_end`, so the last checkpoint is written
    again at `on_train_end`: the workdir's final model is the EMA model.
    """

    def __init__(self, workdir, steps_per_epoch):
        super().__init__()
        self.workdir = workdir
        self.steps_per_epoch = steps_per_epoch
        self._last_saved = None  # (epoch, step) when the latest epoch was saved

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _isfinite(loss):
            # TerminateOnNaN stops the run; keep the last good checkpoint.
            self._last_saved = None
            return
        self._last_saved = (epoch + 1, (epoch + 1) * self.steps_per_epoch)
        save_checkpoint(self.model, self.workdir, *self._last_saved)

    def on_train_end(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
        if self._last_saved is not None and getattr(optimizer, "use_ema", False):
            save_checkpoint(self.model, self.workdir, *self._last_saved)


def _isfinite(value):
    value = float(value)
    return value == value and value not in (float("inf"), float("-inf"))
