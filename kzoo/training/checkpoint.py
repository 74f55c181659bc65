"""Atomic checkpoints of a whole training run (weights, optimizer, RNG, step) in a workdir.

Each checkpoint is one `.keras` file written under a temporary name and renamed;
`state.json` (also replaced atomically) names the current file and the epoch it
ends. A run killed at any instant leaves either the old or the new checkpoint,
never a half-written one.

A checkpoint is what resuming needs, so it holds the *raw* weights: with an EMA
optimizer (`use_ema=True`) the moving averages travel as optimizer variables, and
`load_trained_model` swaps them in for serving, as `fit` does at its end.

Keras 3.15's `.keras` format leaves out the state of every
`keras.random.SeedGenerator` (`Layer.save_own_variables` stores the layer's
weights only; `Layer.variables` lists the seed states beside them), so a resumed
run would draw its diffusion noise, word dropout or codebook restarts afresh.
`save_checkpoint` adds those states to the archive as one JSON member, which
`keras.saving.load_model` ignores and `load_checkpoint` restores.
"""

import json
import os
import warnings
import zipfile

import keras
import numpy as np

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
# The archive member with the seed generators' states (the model's order).
SEED_STATES_MEMBER = "kzoo/seed_generator_states.json"


def write_json_atomic(path, data):
    """Write `data` as JSON to `path` through a temporary file and a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def as_json(data):
    """`data` as `config.json` holds it once read back (tuples become lists, say)."""
    return json.loads(json.dumps(data, default=_jsonable))


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON. Received: {value!r}")


def save_checkpoint(model, workdir, epoch, step):
    """Save `model` (optimizer and seed generator states too) as the workdir's checkpoint."""
    filename = f"checkpoint-{step:08d}.keras"
    path = os.path.join(workdir, filename)
    tmp = os.path.join(workdir, f".tmp-{filename}")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            states = [
                {"path": v.path, "state": np.asarray(v).tolist()}
                for v in seed_generator_states(model)
            ]
            archive.writestr(SEED_STATES_MEMBER, json.dumps(states))
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
        epoch, step = state["epoch"], state["step"]
        state["checkpoint"]  # noqa: B018 (a required key)
        # Every checkpoint ends an epoch of `step / epoch` steps.
        if not (
            isinstance(epoch, int)
            and isinstance(step, int)
            and 1 <= epoch <= step
            and step % epoch == 0
        ):
            raise ValueError(f"epoch={epoch!r}, step={step!r}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"The checkpoint state file is corrupt ({error}). Received: workdir={workdir!r}"
        ) from None
    return state


def load_checkpoint(workdir):
    """`(model, state)` from the workdir's current checkpoint, or `(None, None)`.

    The model is the one to resume: raw weights, optimizer state and seed
    generator states as the checkpoint saved them (`load_trained_model` gives
    the one to serve).

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
        with zipfile.ZipFile(path) as archive:
            saved = (
                json.loads(archive.read(SEED_STATES_MEMBER))
                if SEED_STATES_MEMBER in archive.namelist()
                else None
            )
    except Exception as error:  # zip, h5 and config errors all mean "unreadable"
        raise ValueError(
            f"The checkpoint {state['checkpoint']} cannot be loaded "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Received: workdir={workdir!r}"
        ) from None
    _restore_seed_states(model, saved, state["checkpoint"], workdir)
    return model, state


def seed_generator_states(model):
    """The state variables of every `keras.random.SeedGenerator` that `model` tracks.

    `model.variables` lists them beside the weights (`model.weights` does not), in
    an order fixed by the model's structure, not by the generators' auto-made names.
    """
    weights = {id(w) for w in model.weights}
    states, seen = [], set()
    for variable in model.variables:
        if id(variable) not in weights and id(variable) not in seen:
            seen.add(id(variable))
            states.append(variable)
    return states


def _restore_seed_states(model, saved, checkpoint, workdir):
    variables = seed_generator_states(model)
    if saved is None:
        if variables:
            warnings.warn(
                f"The checkpoint {checkpoint} holds no seed generator states (written "
                "before kzoo saved them); a resumed run draws its random numbers afresh. "
                f"Received: workdir={workdir!r}",
                UserWarning,
                stacklevel=3,
            )
        return
    if len(saved) != len(variables):
        raise ValueError(
            f"The checkpoint {checkpoint} holds {len(saved)} seed generator states but its "
            f"model has {len(variables)}. Received: workdir={workdir!r}"
        )
    for variable, entry in zip(variables, saved, strict=True):
        variable.assign(np.asarray(entry["state"], dtype=variable.dtype))


def _remove_stale_temporaries(workdir):
    """Delete `.tmp-*` files a killed run left behind (never the current checkpoint)."""
    for name in os.listdir(workdir):
        if name.startswith(".tmp-"):
            try:
                os.remove(os.path.join(workdir, name))
            except OSError:
                pass


def load_trained_model(workdir):
    """The workdir's latest trained model, to serve; a clear error if there is none.

    With an EMA optimizer the weights are the moving averages, swapped in as `fit`
    does at its end (`use_ema_weights`); `load_checkpoint` gives the raw ones.
    """
    model, _ = load_checkpoint(workdir)
    if model is None:
        raise ValueError(
            "The workdir holds no trained model (no checkpoint yet: run `kzoo train` first). "
            f"Received: workdir={workdir!r}"
        )
    use_ema_weights(model)
    return model


def use_ema_weights(model):
    """Swap an EMA optimizer's moving averages into `model`'s weights, as `fit` does.

    The same call `fit` makes after its last epoch (`finalize_variable_values` on
    `model.trainable_weights`, which a `LossScaleOptimizer` passes on); nothing
    happens without `use_ema`, or before the first step (the averages are zeros).
    """
    optimizer = getattr(model, "optimizer", None)
    if (
        isinstance(optimizer, keras.optimizers.Optimizer)
        and optimizer.built
        and int(optimizer.iterations) > 0
    ):
        optimizer.finalize_variable_values(model.trainable_weights)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves an atomic checkpoint at the end of every epoch whose loss is finite.

    With an EMA optimizer (`use_ema=True`) Keras swaps the averaged weights into
    the model only after the last `on_epoch_end`, so every checkpoint holds the
    raw weights a resumed run continues from, and the averages as optimizer
    variables (`load_trained_model` serves those).
    """

    def __init__(self, workdir, steps_per_epoch):
        super().__init__()
        self.workdir = workdir
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _isfinite(loss):
            return  # TerminateOnNaN stops the run; keep the last good checkpoint.
        save_checkpoint(self.model, self.workdir, epoch + 1, (epoch + 1) * self.steps_per_epoch)


def _isfinite(value):
    value = float(value)
    return value == value and value not in (float("inf"), float("-inf"))
