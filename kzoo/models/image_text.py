"""Image-caption pair plumbing shared by `DualEncoder` and `Captioner`.

Both take `(images, captions)` pairs in `fit` and `__call__`, accept captions as
Python or NumPy strings, build their image tower from an `ImageEncoder` or a dict
of its arguments, and check image shapes at run time in their export signatures.
"""

import keras
import numpy as np

from kzoo.layers._trainable import apply_trainable_flag
from kzoo.models.image_encoder import ImageEncoder


class ImageCaptionPairsMixin:
    """`fit`/`evaluate`/steps of a model whose inputs are `(images, captions)` pairs.

    Keras' default unpacking reads a 2-tuple batch as `(x, y)`; both are inputs here,
    and NumPy `str` caption arrays become object arrays Keras can slice.
    """

    def _pack(self, data):
        # fit's default unpacking reads `(images, captions)` as `(x, y)`; both are inputs.
        if isinstance(data, dict) or (isinstance(data, tuple | list) and len(data) == 1):
            return data
        if isinstance(data, tuple | list) and len(data) == 2:
            return ((data[0], data[1]),)
        raise ValueError(
            f"{type(self).__name__} trains on `(images, captions)` pairs. "
            f"Received: a batch of {type(data).__name__} with {len(data)} elements"
        )

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; captions may also be a NumPy array of `str`."""
        return super().fit(object_strings(x), object_strings(y), *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        return super().evaluate(object_strings(x), object_strings(y), *args, **kwargs)

    def train_step(self, data):
        return super().train_step(self._pack(data))

    def test_step(self, data):
        return super().test_step(self._pack(data))

    def predict_step(self, data):
        return super().predict_step(self._pack(data))


def unpack_pair(inputs, owner, alone):
    """`(images, captions)` from a pair or a `{"images", "captions"}` dict.

    Args:
        inputs: what the model was called with.
        owner: the model's class name, for the error.
        alone: what to use for one modality instead, for the error.
    """
    if isinstance(inputs, dict):
        missing = [k for k in ("images", "captions") if k not in inputs]
        if missing:
            raise ValueError(
                f"{owner} takes {{'images': ..., 'captions': ...}}. "
                f"Received: a dict with keys {sorted(inputs)}"
            )
        return inputs["images"], inputs["captions"]
    if isinstance(inputs, tuple | list) and len(inputs) == 2:
        return inputs[0], inputs[1]
    raise ValueError(
        f"{owner} takes an `(images, captions)` pair; use {alone}. "
        f"Received: inputs of type {type(inputs).__name__}"
    )


def is_host_strings(captions):
    """Python strings or a NumPy array of them (which Keras cannot take positionally)."""
    if isinstance(captions, list | tuple | str | bytes):
        return True
    return isinstance(captions, np.ndarray) and captions.dtype.kind in "OUS"


def object_strings(value):
    # Keras' array adapter rejects NumPy unicode/bytes arrays ("Invalid dtype: str..."),
    # but slices object arrays of strings into tf.string batches.
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return value.astype(object)
    if isinstance(value, tuple | list) and any(
        isinstance(v, np.ndarray) and v.dtype.kind in "US" for v in value
    ):
        return type(value)(object_strings(v) for v in value)
    return value


def require_shape(tensor, expected):
    """`tensor` checked at run time to have the `expected` shape (None = any size).

    A SavedModel signature checks the dtype of its inputs but not their shape, so
    a wrong-sized image would otherwise fail deep inside the network with an
    unrelated reshape error. `tf.ensure_shape` fails first, with
    "Shape of tensor images [1,32,32,3] is not compatible with expected shape
    [?,16,16,3]". Export-time only (signatures are TensorFlow graphs), hence the
    local import.
    """
    import tensorflow as tf

    return tf.ensure_shape(tensor, expected)


def build_image_encoder(image_encoder):
    if isinstance(image_encoder, dict):
        image_encoder = ImageEncoder(**image_encoder)
    if not isinstance(image_encoder, keras.Model) or not hasattr(image_encoder, "image_shape"):
        raise ValueError(
            "`image_encoder` must be an ImageEncoder (a keras.Model with `image_shape`) or "
            f"a dict of its arguments. Received: image_encoder={image_encoder!r}"
        )
    return apply_trainable_flag(image_encoder)
