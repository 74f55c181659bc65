"""kzoo.training.trainer: settings that train, but needlessly slowly, warn."""

import warnings

import keras
import pytest

import recipes
from kzoo.training import trainer


def _config(**overrides):
    return {**recipes.get_recipe("ddpm_unet_shapes"), **overrides}


def test_xla_with_bfloat16_on_cpu_warns_with_the_values():
    with pytest.warns(UserWarning, match="set jit_compile=false") as record:
        trainer.warn_slow_settings(_config(jit_compile=True, precision="mixed_bfloat16"))
    assert "Received: jit_compile=True, precision='mixed_bfloat16'" in str(record[0].message)


@pytest.mark.parametrize(
    "overrides",
    [
        {"jit_compile": False, "precision": "mixed_bfloat16"},
        {"jit_compile": True, "precision": "float32"},
        {"jit_compile": True, "precision": "mixed_float16"},
    ],
)
def test_other_settings_do_not_warn(overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.warn_slow_settings(_config(**overrides))


def test_train_warns_before_building_anything(monkeypatch, tmp_path):
    class Stop(Exception):
        pass

    def stop(policy):
        raise Stop(policy)

    # The policy is set right after the check: stop there, before any model is built.
    monkeypatch.setattr(keras.mixed_precision, "set_global_policy", stop)
    config = _config(jit_compile=True, precision="mixed_bfloat16")
    with pytest.warns(UserWarning, match="jit_compile=True with precision='mixed_bfloat16'"):
        with pytest.raises(Stop):
            trainer.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_resumed_config_may_change_only_steps(tmp_path):
    saved = trainer.ckpt.as_json(_config())  # tuples read back as lists
    requested = _config(steps=8000)  # tuples as the recipe has them
    trainer.check_unchanged_config(saved, requested, "w")
    requested["model"] = {**requested["model"], "snr_gamma": 1.0}
    requested["batch_size"], requested["new_key"] = 64, 1
    with pytest.raises(ValueError) as error:
        trainer.check_unchanged_config(saved, requested, "w")
    assert str(error.value).endswith(
        "Received: batch_size=64 (saved: 32), model.snr_gamma=1.0 (saved: 5.0), "
        "new_key=1 (saved: '<missing>') for workdir='w'"
    )


def test_plan_of_a_resumed_run_keeps_its_epoch_length(tmp_path):
    config = _config(steps=10, steps_per_epoch=200)
    plan = trainer.plan_run(config, str(tmp_path / "new"))
    assert plan == trainer.RunPlan(plan.config, 0, 10, 0, 1) and not plan.finished
    # A first run of 10 steps made 10-step epochs; continuing to 35 keeps them.
    trainer.ckpt.write_json_atomic(str(tmp_path / "config.json"), {**config, "steps": 10})
    trainer.ckpt.write_json_atomic(
        str(tmp_path / "state.json"), {"epoch": 1, "step": 10, "checkpoint": "c.keras"}
    )
    plan = trainer.plan_run(config, str(tmp_path), steps=35)
    assert plan.config["steps"] == 35
    assert (plan.step, plan.steps_per_epoch, plan.initial_epoch, plan.epochs) == (10, 10, 1, 4)
    assert trainer.plan_run(config, str(tmp_path)).finished  # steps=10
