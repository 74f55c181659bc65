"""Export versions: each folder numbers its own, and an existing version is never overwritten."""

import json
import os

import keras
import numpy as np
import pytest

from kzoo.cli import main
from kzoo.export import export_all, export_saved_model


class TinyDense(keras.Model):
    """The smallest model with the export contract (one Dense layer)."""

    def __init__(self, **kwargs):
        super().__init__(name="tiny_dense", **kwargs)
        self.dense = keras.layers.Dense(2, kernel_initializer="ones")

    def call(self, x):
        return self.dense(x)

    def export_endpoints(self):
        spec = keras.InputSpec(shape=(None, 3), dtype="float32", name="x")
        return {"serving_default": (lambda x: {"y": self(x)}, [spec])}


@pytest.fixture(scope="module")
def model():
    model = TinyDense()
    model(np.zeros((1, 3), "float32"))
    return model


def _litert(model, out_dir, **kwargs):
    return export_all(
        model, out_dir, formats="litert", quantize="none", check_parity=False, **kwargs
    )["litert"]


def _versions(directory):
    # Beside the versions: the model card, README.md.
    return sorted(entry for entry in os.listdir(directory) if entry != "README.md")


def test_each_folder_numbers_its_own_versions(model, tmp_path):
    # `make demo`: SavedModel and LiteRT together, one version free in both.
    both = export_all(model, tmp_path, quantize="none", check_parity=False)
    assert both["saved_model"].version == both["litert"].version == 1
    saved_model = export_saved_model(model, tmp_path, check_parity=False)
    litert = _litert(model, tmp_path)
    assert (saved_model.version, litert.version) == (2, 2)
    assert litert.path == os.path.join(tmp_path, "tiny_dense_litert", "2")
    # A version taken in one folder only is free in the other.
    assert _litert(model, tmp_path, version=3).version == 3
    assert export_saved_model(model, tmp_path, check_parity=False).version == 3
    assert _versions(tmp_path / "tiny_dense") == ["1", "2", "3"]
    assert _versions(tmp_path / "tiny_dense_litert") == ["1", "2", "3"]


def test_an_existing_version_is_refused_and_left_untouched(model, tmp_path):
    litert = _litert(model, tmp_path, version=4)
    before = os.path.getmtime(litert.files["float32"])
    with pytest.raises(ValueError, match=r"Version 4 already exists .*Received: version=4"):
        _litert(model, tmp_path, version=4)
    assert _versions(tmp_path / "tiny_dense_litert") == ["4"]
    assert os.path.getmtime(litert.files["float32"]) == before
    # Free in the SavedModel folder, so a SavedModel export may take it.
    assert export_saved_model(model, tmp_path, version=4, check_parity=False).version == 4


@pytest.fixture
def workdir(tmp_path):
    """A workdir with a config but no checkpoint: any model load would fail."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"recipe": "vqvae_shapes"}))
    return str(path)


def test_cli_refuses_an_existing_version_before_loading_the_model(workdir, tmp_path, capsys):
    out = tmp_path / "exported"
    (out / "vqvae_shapes" / "2").mkdir(parents=True)
    argv = ["export", workdir, "--format", "saved_model", "--out", str(out)]
    assert main([*argv, "--version", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kzoo: error: --version 2 already exists") and "\n" not in err, err
    assert "never overwrites" in err and err.endswith("Received: --version=2")
    assert _versions(out / "vqvae_shapes") == ["2"]
    assert main([*argv, "--version", "0"]) == 2
    assert "Received: --version=0" in capsys.readouterr().err
    # The LiteRT folder has no version 2: the version passes and the load is tried.
    litert = ["export", workdir, "--format", "litert", "--out", str(out), "--version", "2"]
    assert main(litert) == 2
    assert "holds no trained model" in capsys.readouterr().err
