"""Presets (`save_to_preset` / `from_preset`, keras-hub's layout) for every kzoo model."""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

from kzoo import presets
from kzoo.models import VQVAE, DualEncoder

sys.path.insert(0, os.path.dirname(__file__))
from test_registration import TINY_MODELS  # noqa: E402  (one tiny instance per model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`{name: (model, preset_dir)}`: every tiny kzoo model written as a preset."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(0)
    result = {}
    for name, make in TINY_MODELS.items():
        model = make()
        result[name] = (model, model.save_to_preset(str(root / name)))
    return result


def test_every_kzoo_model_round_trips_through_a_preset(saved):
    for name, (model, preset_dir) in saved.items():
        for filename in ("config.json", "model.weights.h5", "metadata.json", "README.md"):
            assert os.path.isfile(os.path.join(preset_dir, filename)), (name, filename)
        loaded = type(model).from_preset(preset_dir)
        assert type(loaded) is type(model), name
        assert len(loaded.weights) == len(model.weights) > 0, name
        # Bitwise: the weights file stores float32 values as they are.
        for before, after in zip(model.weights, loaded.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(before), np.asarray(after), err_msg=name)
        with open(os.path.join(preset_dir, "metadata.json")) as f:
            metadata = json.load(f)
        assert metadata["class_name"] == type(model).__name__
        assert metadata["parameter_count"] == model.count_params()
        assert metadata["keras_version"] == keras.__version__


def test_text_models_carry_their_vocabulary_as_assets(saved):
    model, preset_dir = saved["DualEncoder"]
    assets = os.path.join(preset_dir, "assets", "tokenizer")
    with open(os.path.join(assets, "vocabulary.txt")) as f:
        vocabulary = f.read().splitlines()
    assert vocabulary == [str(t) for t in model.tokenizer.get_vocabulary()]
    assert vocabulary[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    with open(os.path.join(assets, "tokenizer.json")) as f:
        description = json.load(f)
    assert description["sequence_length"] == model.tokenizer.sequence_length == 4
    assert description["vocabulary_size"] == len(vocabulary)
    # Image-only models have no tokenizer assets.
    assert not os.path.exists(os.path.join(saved["VQVAE"][1], "assets"))


def test_presets_refuse_the_wrong_class_an_existing_dir_and_edited_assets(saved, tmp_path):
    vqvae_dir = saved["VQVAE"][1]
    with pytest.raises(ValueError, match="holds a kzoo>VQVAE, not a kzoo>DualEncoder"):
        DualEncoder.from_preset(vqvae_dir)
    # `load_preset` needs no class; a subclass's preset loads through its base class.
    assert type(presets.load_preset(vqvae_dir)).__name__ == "VQVAE"
    assert type(VQVAE.from_preset(saved["VQGAN"][1])).__name__ == "VQGAN"
    with pytest.raises(ValueError, match="must not exist yet"):
        saved["VQVAE"][0].save_to_preset(vqvae_dir)
    with pytest.raises(ValueError, match="missing config.json, model.weights.h5"):
        presets.load_preset(str(tmp_path))
    copy = tmp_path / "captioner"
    shutil.copytree(saved["Captioner"][1], copy)
    vocabulary = copy / "assets" / "tokenizer" / "vocabulary.txt"
    vocabulary.write_text(vocabulary.read_text().replace("circle", "ring"))
    with pytest.raises(ValueError, match="differs from the vocabulary in its config.json"):
        presets.load_preset(str(copy))
    # Nothing half-written is left beside the presets.
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
