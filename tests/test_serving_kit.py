"""The serving kit around exports: model cards, presets from `kzoo export`, and the
`signatures.json` / tokenizer files beside every LiteRT file."""

import json
import os
import re
import sys

import keras
import numpy as np
import pytest

from kzoo.cli import main
from kzoo.export import export_all
from kzoo.models import VQVAE
from kzoo.testing import tiny_vqvae
from kzoo.training.checkpoint import save_checkpoint

sys.path.insert(0, os.path.dirname(__file__))
from test_registration import TINY_MODELS  # noqa: E402


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


def test_litert_export_writes_signatures_json_and_a_card_with_parity(workdir, tmp_path):
    _, model = workdir
    results = export_all(model, tmp_path, name="vq", formats=("litert",), quantize=("none",))
    litert = results["litert"]
    with open(os.path.join(litert.path, "signatures.json")) as f:
        guide = json.load(f)
    assert guide["files"] == {"float32": "float32.tflite"}
    encode = guide["signatures"]["encode"]
    assert encode["inputs"]["images"] == {
        "shape": [-1, 8, 8, 3],
        "dtype": "float32",
        "range": "float32 in [-1, 1]",
    }
    indices = guide["signatures"]["decode"]["inputs"]["indices"]
    assert indices["dtype"] == "int32" and indices["range"] == "int32 in [0, 15]"
    assert "tokenizer" not in guide  # an image model has no vocabulary
    with open(os.path.join(tmp_path, "vq_litert", "README.md")) as f:
        card = f.read()
    # The parity table of this export, and the signatures with their inputs.
    assert re.search(r"litert/float32\s+encode\s+indices\s+tie_aware_agreement", card)
    assert "- `decode`: `indices`" in card
    assert "No `evaluation.json`" in card  # exported from Python, no workdir


def test_text_models_ship_their_vocabulary_beside_the_tflite(tmp_path):
    keras.utils.set_random_seed(0)
    model = TINY_MODELS["DualEncoder"]()
    exportable = model.litert_exportable()
    litert = export_all(
        exportable,
        tmp_path,
        name="clip",
        formats=("litert",),
        quantize=("none",),
        check_parity=False,
    )["litert"]
    with open(os.path.join(litert.path, "vocabulary.txt")) as f:
        vocabulary = f.read().splitlines()
    assert vocabulary == [str(t) for t in model.tokenizer.get_vocabulary()]
    with open(os.path.join(litert.path, "signatures.json")) as f:
        guide = json.load(f)
    assert guide["tokenizer"] == {"vocabulary": "vocabulary.txt", "description": "tokenizer.json"}
    token_ids = guide["signatures"]["encode_text"]["inputs"]["token_ids"]
    assert token_ids["range"] == f"int32 in [0, {len(vocabulary) - 1}] (ids of vocabulary.txt)"
    with open(os.path.join(litert.path, "tokenizer.json")) as f:
        assert json.load(f)["special_tokens"] == {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
