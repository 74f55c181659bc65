"""The serving kit around exports: `kzoo evaluate` figures in model cards, presets from
`kzoo export`. (`signatures.json` and the tokenizer files beside LiteRT files are
checked on exports other tests already make: tests/test_export.py,
tests/test_dual_encoder_export.py.)"""

import json
import os
import sys

import keras
import numpy as np
import pytest

from kzoo.cli import main
from kzoo.models import VQVAE
from kzoo.testing import tiny_vqvae
from kzoo.training.checkpoint import save_checkpoint

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A `kzoo train`-like workdir holding an untrained tiny VQ-VAE, evaluated."""
    path = str(tmp_path_factory.mktemp("run"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"recipe": "vqvae_shapes", "dataset": "kzoo_shapes"}, f)
    keras.utils.set_random_seed(0)
    model = tiny_vqvae()
    model(np.zeros((1, 8, 8, 3), "float32"))
    save_checkpoint(model, path, epoch=1, step=1)
    assert main(["evaluate", path, "--num-examples", "8"]) == 0
    return path, model


def test_evaluate_keeps_its_figures_for_the_model_card(workdir, capsys):
    path, _ = workdir
    with open(os.path.join(path, "evaluation.json")) as f:
        figures = json.load(f)
    assert "psnr" in json.dumps(figures).lower()


def test_cli_exports_a_preset_with_a_model_card(workdir, tmp_path, capsys):
    path, model = workdir
    out = str(tmp_path / "exported")
    assert main(["export", path, "--format", "preset", "--out", out]) == 0
    assert "Exported to" in capsys.readouterr().out
    preset = os.path.join(out, "vqvae_shapes_preset", "1")
    for filename in ("config.json", "model.weights.h5", "metadata.json", "README.md"):
        assert os.path.isfile(os.path.join(preset, filename)), filename
    loaded = VQVAE.from_preset(preset)
    for before, after in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    # The card, next to the versions and inside the preset: what, how, how well.
    with open(os.path.join(out, "vqvae_shapes_preset", "README.md")) as f:
        card = f.read()
    with open(os.path.join(path, "evaluation.json")) as f:
        figures = json.load(f)
    assert card.startswith("# vqvae_shapes\n")
    assert f"kzoo train vqvae_shapes --workdir {path}" in card
    assert f"kzoo export {path} --format preset" in card
    assert json.dumps(figures, indent=2, sort_keys=True) in card
    for section in ("## Model", "## Intended use", "## Limits", "## Export parity"):
        assert section in card
    with open(os.path.join(preset, "README.md")) as f:
        assert f.read() == card
    assert main(["export", path, "--format", "preset", "--quantize", "float16"]) == 2
    assert "--quantize applies to LiteRT only" in capsys.readouterr().err
