import json
import os
import zipfile

import keras
import numpy as np
import pytest

from kzoo.training.checkpoint import (
    SEED_STATES_MEMBER,
    CheckpointCallback,
    load_checkpoint,
    load_trained_model,
    read_state,
    save_checkpoint,
    seed_generator_states,
    write_json_atomic,
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
    # A checkpoint ends an epoch of step / epoch steps: epoch 0 or a remainder is corrupt.
    for epoch, step in ((0, 4), (3, 4)):
        (tmp_path / "state.json").write_text(
            json.dumps({"epoch": epoch, "step": step, "checkpoint": "c.keras"})
        )
        with pytest.raises(ValueError, match=f"corrupt \\(epoch={epoch}, step={step}\\)"):
            read_state(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist. Received: workdir="):
        load_checkpoint(str(tmp_path / "missing"))


def test_checkpoint_keeps_the_raw_weights_and_serves_the_ema_ones(tmp_path):
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
    assert np.abs(ema[0] - raw["weights"][0]).max() > 0.01
    # To resume: the raw weights of the last step, the averages in the optimizer.
    restored, state = load_checkpoint(str(tmp_path))
    assert state["step"] == 8 and int(restored.optimizer.iterations) == 8
    for a, b in zip(restored.get_weights(), raw["weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    # To serve: the averages, as `fit` leaves the model.
    for a, b in zip(load_trained_model(str(tmp_path)).get_weights(), ema, strict=True):
        np.testing.assert_array_equal(a, b)


def _dropout_model():
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dropout(0.5, seed=1)(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_seed_generator_states_are_saved_and_restored(tmp_path):
    model = _dropout_model()
    [state] = seed_generator_states(model)
    x, y = np.ones((4, 64), "float32"), np.ones((4, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=3, verbose=0)  # 6 draws of the dropout mask
    np.testing.assert_array_equal(np.asarray(state), [1, 6])
    save_checkpoint(model, str(tmp_path), epoch=1, step=6)
    restored, _ = load_checkpoint(str(tmp_path))
    [restored_state] = seed_generator_states(restored)
    np.testing.assert_array_equal(np.asarray(restored_state), [1, 6])
    # So the next dropout masks are the ones the saved model would draw.
    dropout = model.layers[1]
    restored_dropout = restored.layers[1]
    np.testing.assert_array_equal(
        np.asarray(restored_dropout(x, training=True)), np.asarray(dropout(x, training=True))
    )
    # keras.saving.load_model alone restarts the generator (Keras 3.15 saves no seed state).
    [fresh] = seed_generator_states(keras.saving.load_model(tmp_path / "checkpoint-00000006.keras"))
    np.testing.assert_array_equal(np.asarray(fresh), [1, 0])


def test_a_checkpoint_without_seed_states_warns_and_a_mismatch_fails(tmp_path):
    model = _dropout_model()
    model.save(tmp_path / "checkpoint-00000002.keras")  # as kzoo wrote checkpoints before
    write_json_atomic(
        str(tmp_path / "state.json"),
        {"epoch": 1, "step": 2, "checkpoint": "checkpoint-00000002.keras"},
    )
    with pytest.warns(UserWarning, match="holds no seed generator states"):
        load_checkpoint(str(tmp_path))
    # A checkpoint with one generator's state, of a model that (now) has none.
    path = save_checkpoint(_model(), str(tmp_path), epoch=1, step=4)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[SEED_STATES_MEMBER] = json.dumps([{"path": "seed_generator", "state": [1, 2]}])
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="holds 1 seed generator states but its model has 0"):
        load_checkpoint(str(tmp_path))
