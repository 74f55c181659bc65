"""kzoo: a Keras 3 / TensorFlow model zoo for generative and cross-modal models.

Subpackages load on first use (`kzoo.layers`, `kzoo.models`, `kzoo.data`, ...), so
`import kzoo` stays cheap and the CLI can answer `kzoo recipes` without TensorFlow.
"""

import importlib
import os

# kzoo is written in keras.ops but trains, exports and serves through TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_SUBPACKAGES = (
    "layers",
    "models",
    "data",
    "diffusion",
    "training",
    "export",
    "metrics",
    "testing",
)


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"kzoo.{name}")
    raise AttributeError(f"module 'kzoo' has no attribute {name!r}")
