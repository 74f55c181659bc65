"""A run stopped at N steps and continued to 2N ends where an uninterrupted 2N run ends.

What the checkpoint must carry for that, beyond weights and optimizer slots: the
state of every `keras.random.SeedGenerator` (diffusion noise, timesteps and label
dropout; CLIP word dropout and hard negatives) and, with `ema=true`, the raw
weights rather than the moving averages that `fit` swaps in at its end.

Each pair of runs executes the same ops on the same values in one process, so
the weights are compared bitwise.
"""

import json
import os

import numpy as np
import pytest
from integration._tiny import TINY_CLIP, TINY_DIT, overrides

from kzoo.cli import main
from kzoo.training import checkpoint as ckpt
from kzoo.training.checkpoint import load_checkpoint, load_trained_model, seed_generator_states

pytestmark = pytest.mark.slow

# A checkpoint per step: the EMA oracle needs every raw step (the later --set wins).
TINY_DIT_PER_STEP = [*TINY_DIT, *overrides("steps_per_epoch=1")]

EMA_MOMENTUM = 0.99  # Keras' default `ema_momentum`; the recipes keep it


def _train(recipe, tiny, workdir, steps, capsys):
    capsys.readouterr()
    assert main(["train", recipe, "--workdir", workdir, "--steps", str(steps), *tiny]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"Trained {recipe};")


def _arrays(variables):
    return [np.array(v) for v in variables]


def _assert_bitwise_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def _stop_and_continue(recipe, tiny, tmp_path, capsys, steps=4):
    """Workdirs of an uninterrupted run and of one stopped at `steps // 2` and continued."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    _train(recipe, tiny, straight, steps, capsys)
    _train(recipe, tiny, resumed, steps // 2, capsys)
    _train(recipe, tiny, resumed, steps, capsys)  # the same --set values: accepted
    with open(os.path.join(resumed, "state.json")) as f:
        assert json.load(f)["step"] == steps
    return straight, resumed


def test_diffusion_with_ema_stopped_and_continued_equals_an_uninterrupted_run(
    tmp_path, capsys, monkeypatch
):
    raw_steps = {}  # workdir -> the raw trainable weights after each step
    save = ckpt.CheckpointCallback.on_epoch_end

    def recording(self, epoch, logs=None):
        raw_steps.setdefault(self.workdir, []).append(_arrays(self.model.trainable_weights))
        save(self, epoch, logs)

    monkeypatch.setattr(ckpt.CheckpointCallback, "on_epoch_end", recording)
    straight, resumed = _stop_and_continue("dit_shapes", TINY_DIT_PER_STEP, tmp_path, capsys)

    # Resume: raw weights, optimizer (moments and averages) and seed states all match.
    (straight_raw, _), (resumed_raw, _) = load_checkpoint(straight), load_checkpoint(resumed)
    assert int(resumed_raw.optimizer.iterations) == 4
    _assert_bitwise_equal(_arrays(resumed_raw.weights), _arrays(straight_raw.weights))
    _assert_bitwise_equal(
        _arrays(resumed_raw.optimizer.variables), _arrays(straight_raw.optimizer.variables)
    )
    # DiffusionModel's generator: 4 steps drew timesteps, noise and label dropout.
    [state] = _arrays(seed_generator_states(resumed_raw))
    np.testing.assert_array_equal(state, _arrays(seed_generator_states(straight_raw))[0])
    assert state[1] == 4 * 3

    # The checkpoint holds the raw weights of the last step...
    _assert_bitwise_equal(_arrays(straight_raw.trainable_weights), raw_steps[straight][-1])
    # ...and what is served is their EMA over the 4 steps (the first step seeds it).
    ema = raw_steps[straight][0]
    for weights in raw_steps[straight][1:]:
        ema = [EMA_MOMENTUM * e + (1 - EMA_MOMENTUM) * w for e, w in zip(ema, weights, strict=True)]
    served = _arrays(load_trained_model(straight).trainable_weights)
    for s, e in zip(served, ema, strict=True):
        np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-7)
    last = raw_steps[straight][-1]
    assert max(np.abs(s - r).max() for s, r in zip(served, last, strict=True)) > 1e-4
    _assert_bitwise_equal(_arrays(load_trained_model(resumed).trainable_weights), served)


def test_clip_stopped_and_continued_equals_an_uninterrupted_run(tmp_path, capsys):
    straight, resumed = _stop_and_continue("clip_shapes", TINY_CLIP, tmp_path, capsys)
    (straight_model, _), (resumed_model, _) = load_checkpoint(straight), load_checkpoint(resumed)
    _assert_bitwise_equal(_arrays(resumed_model.weights), _arrays(straight_model.weights))
    _assert_bitwise_equal(
        _arrays(resumed_model.optimizer.variables), _arrays(straight_model.optimizer.variables)
    )
    [state] = _arrays(seed_generator_states(resumed_model))
    np.testing.assert_array_equal(state, _arrays(seed_generator_states(straight_model))[0])
    assert state[1] > 0  # word dropout and hard negatives drew from it
