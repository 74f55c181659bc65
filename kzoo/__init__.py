"""kzoo: a Keras 3 / TensorFlow model zoo for generative and cross-modal models.

`import kzoo` registers every kzoo class with Keras (layers, models, diffusion, the
tokenizer, the metric networks), so `keras.saving.load_model("model.keras")` works
after it in a fresh process. `kzoo.training`, `kzoo.export` and `kzoo.testing` load
on first use.

TensorFlow's C++ start-up lines (CUDA probing on a machine without a GPU, CPU-feature
notes) are hidden unless `KZOO_DEBUG=1` is set; see `kzoo/_startup.py`.
"""

import importlib
import os

# kzoo is written in keras.ops but trains, exports and serves through TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

from kzoo import _startup  # noqa: E402

with _startup.quiet_tensorflow_start():
    # The modules holding every `register_keras_serializable(package="kzoo")` class.
    from kzoo import data, diffusion, layers, metrics, models  # noqa: E402, F401
    from kzoo.data import tokenizer as _tokenizer  # noqa: E402, F401

_LAZY_SUBPACKAGES = ("training", "export", "testing")


def __getattr__(name):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"kzoo.{name}")
    raise AttributeError(f"module 'kzoo' has no attribute {name!r}")
