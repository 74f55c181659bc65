"""`import kzoo` registers every kzoo Keras class, so saved models load in a fresh process."""

import importlib
import json
import pkgutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import kzoo
from kzoo.diffusion import DiffusionModel
from kzoo.metrics import ShapesClassifier
from kzoo.models import (
    VQGAN,
    Captioner,
    CodePrior,
    Discriminator,
    DiT,
    DualEncoder,
    Generator,
    ImageEncoder,
    ShapesPerceptual,
    TextEncoder,
)
from kzoo.testing import tiny_unet, tiny_vqvae

# Not modules to import: `python -m kzoo` runs the CLI.
SKIPPED_MODULES = ("kzoo.__main__",)
PACKAGE_PREFIX = "kzoo>"


def _fresh_process(code, timeout=300):
    """Runs `code` in a new interpreter; returns its stdout (stderr shown on failure)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _kzoo_registered():
    """`{registered name: object}` of everything registered under package "kzoo"."""
    return {
        name: obj
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith(PACKAGE_PREFIX)
    }


def _all_kzoo_registered():
    """Imports every kzoo module, then returns what is registered under "kzoo"."""
    for module in pkgutil.walk_packages(kzoo.__path__, "kzoo."):
        if module.name not in SKIPPED_MODULES:
            importlib.import_module(module.name)
    return _kzoo_registered()


def test_import_kzoo_registers_every_kzoo_class():
    expected = sorted(_all_kzoo_registered())
    # The walk found the classes of every room (a broken walk would pass vacuously).
    for name in ("VQVAE", "DiffusionModel", "NoiseSchedule", "Tokenizer", "ShapesClassifier"):
        assert PACKAGE_PREFIX + name in expected
    registered = json.loads(
        _fresh_process(
            "import json, kzoo, keras\n"
            "print(json.dumps(sorted(keras.saving.get_custom_objects())))\n"
        )
    )
    assert [name for name in expected if name not in registered] == []


def _unet():
    return tiny_unet()


def _code_prior():
    # Grid and codebook of `tiny_vqvae()`, so a Generator can pair the two.
    return CodePrior(codebook_size=16, grid_shape=(4, 4), hidden_dim=16, num_layers=1, num_heads=2)


_VIT = {"image_shape": (8, 8, 3), "patch_size": 4, "hidden_dim": 8, "num_layers": 1, "num_heads": 2}

# One tiny instance of every kzoo keras.Model, by class name.
TINY_MODELS = {
    "VQVAE": tiny_vqvae,
    "VQGAN": lambda: VQGAN(
        image_shape=(8, 8, 3),
        codebook_size=16,
        embedding_dim=4,
        channels=(8, 8),
        norm_groups=4,
        attention=False,
        disc_channels=(8, 8),
        perceptual_model=ShapesPerceptual(image_size=8, filters=(8,)),
    ),
    "Discriminator": lambda: Discriminator(image_shape=(8, 8, 3), channels=(8, 8), norm_groups=4),
    "ShapesPerceptual": lambda: ShapesPerceptual(image_size=8, filters=(8,)),
    "ShapesClassifier": lambda: ShapesClassifier(image_size=8, filters=(8,), feature_dim=8),
    "UNet": _unet,
    "DiT": lambda: DiT(
        input_shape=(8, 8, 3), patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=3
    ),
    "TextEncoder": lambda: TextEncoder(
        vocabulary_size=20, sequence_length=4, hidden_dim=8, num_layers=1, num_heads=2
    ),
    "ImageEncoder": lambda: ImageEncoder(**_VIT),
    "DualEncoder": lambda: DualEncoder(
        text_encoder={"hidden_dim": 8, "num_layers": 1, "num_heads": 2},
        image_encoder=_VIT,
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": 4},
        embedding_dim=8,
    ),
    "Captioner": lambda: Captioner(
        image_encoder=_VIT,
        vocabulary="kzoo_shapes",
        max_length=4,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
    ),
    "CodePrior": _code_prior,
    "Generator": lambda: Generator(_code_prior(), tiny_vqvae()),
    "DiffusionModel": lambda: DiffusionModel(_unet(), seed=0),
}


def _weights_fingerprint(model):
    return [len(model.weights), float(sum(np.abs(np.asarray(w)).sum() for w in model.weights))]


def test_every_kzoo_model_has_a_tiny_instance_here():
    models = sorted(
        name.removeprefix(PACKAGE_PREFIX)
        for name, obj in _all_kzoo_registered().items()
        if isinstance(obj, type) and issubclass(obj, keras.Model)
    )
    assert models == sorted(TINY_MODELS)


@pytest.mark.slow  # 14 models saved here and loaded in a fresh process (~1 min on 2 cores)
def test_saved_models_load_after_import_kzoo_in_a_fresh_process(tmp_path):
    expected, paths = {}, {}
    for name, make in TINY_MODELS.items():
        model = make()
        paths[name] = str(tmp_path / f"{name}.keras")
        model.save(paths[name])
        expected[name] = [type(model).__name__, *_weights_fingerprint(model)]
    loaded = json.loads(
        _fresh_process(
            "import json\n"
            "import keras, kzoo\n"
            "import numpy as np\n"
            "loaded = {}\n"
            f"for name, path in {paths!r}.items():\n"
            "    model = keras.saving.load_model(path)\n"
            "    weights = [np.abs(np.asarray(w)).sum() for w in model.weights]\n"
            "    loaded[name] = [type(model).__name__, len(weights), float(sum(weights))]\n"
            "print(json.dumps(loaded))\n"
        )
    )
    assert loaded.keys() == expected.keys()
    for name, (cls, count, total) in expected.items():
        assert loaded[name][:2] == [cls, count], name
        np.testing.assert_allclose(loaded[name][2], total, rtol=1e-6, err_msg=name)
