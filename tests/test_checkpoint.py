import json
import os

import keras
import numpy as np
import pytest

from kzoo.training.checkpoint import (
    CheckpointCallback,
    load_checkpoint,
    load_trained_model,
    read_state,
    save_checkpoint,
)


def _model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse")
    return model


def test_save_replaces_the_previous_checkpoint_atomically(tmp_path):
    model = _model()
    save_checkpoint(model, str(tmp_path), epoch=1, step=10)
    save_checkpoint(model, str(tmp_path), epoch=2, step=20)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000020.keras", "state.json"]
    assert read_state(str(tmp_path)) == {
        "epoch": 2,
        "step": 20,
        "checkpoint": "checkpoint-00000020.keras",
    }
    reloaded, state = load_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(reloaded.get_weights()[0], model.get_weights()[0])


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    save_checkpoint(_model(), str(tmp_path), epoch=1, step=10)
    (tmp_path / ".tmp-checkpoint-00000020.keras").write_bytes(b"half written")
    model, state = load_checkpoint(str(tmp_path))
    assert state["step"] == 10 and model is not None
    assert not (tmp_path / ".tmp-checkpoint-00000020.keras").exists()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = _model()
    x = np.ones((8, 3), "float32")
    x[4] = np.nan  # the first batch of the second epoch (batch size 2, 2 steps/epoch)
    y = np.ones((8, 1), "float32")
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    history = model.fit(
        dataset,
        steps_per_epoch=2,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), CheckpointCallback(str(tmp_path), 2)],
    )
    assert len(history.history["loss"]) == 2 and np.isnan(history.history["loss"][-1])
    with open(tmp_path / "state.json") as f:
        assert json.load(f)["epoch"] == 1
    restored = load_trained_model(str(tmp_path))
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_corrupt_state_and_missing_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no trained model.*Received: workdir="):
        load_trained_model(str(tmp_path))
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state file is corrupt.*Received: workdir="):
        load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist. Received: workdir="):
        load_checkpoint(str(tmp_path / "missing"))


def test_ema_weights_swapped_in_at_the_end_of_fit_reach_the_checkpoint(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.9), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    raw = {}
    model.fit(
        x,
        y,
        batch_size=2,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: raw.update(weights=model.get_weights())
            ),
            CheckpointCallback(str(tmp_path), 4),
        ],
    )
    ema = model.get_weights()  # fit swapped the moving averages in after the last epoch
    assert not np.allclose(ema[0], raw["weights"][0])
    restored, state = load_checkpoint(str(tmp_path))
    assert state["step"] == 8
    np.testing.assert_array_equal(restored.get_weights()[0], ema[0])
