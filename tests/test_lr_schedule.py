"""The recipe learning-rate schedule: constant, or linear warmup then cosine decay."""

import numpy as np
import pytest

from kzoo.training import trainer


def _config(**overrides):
    return {"learning_rate": 1e-3, "steps": 1000, "precision": "float32"} | overrides


def _lr(schedule, step):
    return float(schedule(step)) if callable(schedule) else schedule


def test_constant_is_a_plain_float():
    assert trainer.learning_rate(_config()) == 1e-3


def test_warmup_then_cosine_to_zero():
    schedule = trainer.learning_rate(_config(lr_schedule="cosine", warmup_steps=100))
    assert _lr(schedule, 0) == 0.0
    np.testing.assert_allclose(_lr(schedule, 50), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(_lr(schedule, 100), 1e-3, rtol=1e-5)
    # Half-way through the 900 decay steps the cosine is at half the peak.
    np.testing.assert_allclose(_lr(schedule, 550), 0.5e-3, rtol=1e-4)
    assert _lr(schedule, 1000) < 1e-9


def test_warmup_then_constant():
    schedule = trainer.learning_rate(_config(warmup_steps=10))
    np.testing.assert_allclose(_lr(schedule, 5), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(_lr(schedule, 900), 1e-3, rtol=1e-5)


def test_a_run_shorter_than_its_warmup_stops_on_the_way_up():
    # `kzoo train ddpm_unet_shapes --steps 100` with the recipe's 200 warmup steps.
    config = _config(lr_schedule="cosine", warmup_steps=200, steps=100)
    trainer.validate_config(config | {"batch_size": 8, "steps_per_epoch": 10})
    schedule = trainer.learning_rate(config)
    np.testing.assert_allclose(_lr(schedule, 50), 0.25e-3, rtol=1e-5)
    np.testing.assert_allclose(_lr(schedule, 100), 0.5e-3, rtol=1e-5)


def test_optimizer_gets_the_schedule_and_ema_momentum():
    optimizer = trainer.build_optimizer(
        _config(
            lr_schedule="cosine", warmup_steps=100, weight_decay=0.0, ema=True, ema_momentum=0.999
        )
    )
    assert optimizer.ema_momentum == 0.999
    assert float(optimizer.learning_rate) == 0.0  # step 0 of the warmup


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"lr_schedule": "step"}, "Received: lr_schedule='step'"),
        ({"warmup_steps": -1}, r">= 0. Received: warmup_steps=-1"),
        ({"warmup_steps": 2.5}, "Received: warmup_steps=2.5"),
        ({"ema_momentum": 1.0}, "Received: ema_momentum=1.0"),
    ],
)
def test_bad_schedule_settings_are_named(overrides, match):
    config = _config(batch_size=8, steps_per_epoch=10) | overrides
    with pytest.raises(ValueError, match=match):
        trainer.validate_config(config)
