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
