"""Encoded-image twins of export endpoints: PNG/JPEG bytes in, PNG bytes out (SavedModel only).

A model names the twins it wants with `export_png_endpoints() -> {twin: endpoint}`,
e.g. `{"reconstruct_png": "serving_default", "encode_png": "encode"}`. Each twin runs
its endpoint's function with
- every image input (`images`, float32 `(None, H, W, C)` in [-1, 1]) replaced by
  `image_bytes`, `tf.string` `(None,)`: PNG, JPEG, GIF or BMP of any size, decoded
  to `C` channels, resized to `H x W` (bilinear with antialiasing; an image of the
  right size is not resampled) and scaled to [-1, 1], all in the graph;
- every image output (`images`, `reconstruction`, float32 in [-1, 1]) replaced by
  `png_bytes`, `tf.string` `(None,)`: clipped to [-1, 1], quantized to uint8 by
  `round((x + 1) * 127.5)` and PNG-encoded.
Other inputs and outputs pass through unchanged, and the endpoint's limits apply to
the twin (its batch limit to `image_bytes`).

LiteRT has no image-codec ops (`DecodeImage`, `EncodePng` are not builtins), so the
twins exist in SavedModels only; `.tflite` files keep the float signatures. REST
clients send the bytes base64-encoded as `{"b64": "..."}` (`kzoo.serving.rest_payload`).

See https://www.tensorflow.org/api_docs/python/tf/io/decode_image and
https://www.tensorflow.org/tfx/serving/api_rest#encoding_binary_values.
"""

import numpy as np
import tensorflow as tf

from kzoo.export import _core

IMAGE_INPUT = "images"
BYTES_INPUT = "image_bytes"
IMAGE_OUTPUTS = ("images", "reconstruction")
# TF Serving's REST API returns a string output base64-encoded (`{"b64": ...}`) only
# when its name ends in `_bytes` (`kBytesTensorNameSuffix`, json_tensor.cc); other
# strings go out as UTF-8 text, which PNG bytes are not.
PNG_OUTPUT = "png_bytes"


def png_endpoints(model, endpoints):
    """`{twin: Endpoint}` of the encoded-image twins `model.export_png_endpoints()` names.

    Args:
        model: the exported model; a model without `export_png_endpoints` has none.
        endpoints: the model's validated endpoints (`_core.get_endpoints`).

    Returns:
        `{twin_name: _core.Endpoint}`, empty when the model declares none.

    Raises:
        ValueError: a twin names an unknown endpoint, an existing name, or an endpoint
            with no image input or output.
    """
    declare = getattr(model, "export_png_endpoints", None)
    if not callable(declare):
        return {}
    twins = {}
    for name, base_name in declare().items():
        base = endpoints.get(base_name)
        if base is None or name in endpoints:
            raise ValueError(
                f"`export_png_endpoints` must map new signature names to endpoints of "
                f"{list(endpoints)}. Received: {name!r}: {base_name!r}"
            )
        twins[name] = _twin(name, base)
    return twins


def decode_images(image_bytes, image_shape):
    """float32 `(B, H, W, C)` in [-1, 1] of `tf.string` `(B,)` encoded images of any size.

    Args:
        image_bytes: `tf.string` `(B,)`, each PNG, JPEG, GIF (first frame) or BMP.
        image_shape: `(H, W, C)`: the size and channels the model takes.

    Returns:
        float32 `(B, H, W, C)`: `uint8 / 127.5 - 1`, resized when the size differs.
    """
    height, width, channels = (int(d) for d in image_shape)

    def one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = tf.cast(image, tf.float32)  # (h, w, C) in [0, 255]
        same = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
        image = tf.cond(
            same,
            lambda: image,
            lambda: tf.image.resize(image, (height, width), antialias=True),
        )
        image = tf.ensure_shape(image, (height, width, channels))
        return image / 127.5 - 1.0

    return tf.map_fn(
        one, image_bytes, fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32)
    )


def to_uint8(images):
    """uint8 of float images in [-1, 1]: `round((clip(x) + 1) * 127.5)`."""
    images = tf.clip_by_value(tf.cast(images, tf.float32), -1.0, 1.0)
    return tf.cast(tf.round((images + 1.0) * 127.5), tf.uint8)


def encode_png(images):
    """`tf.string` `(B,)` PNG bytes of float32 `(B, H, W, C)` images in [-1, 1]."""
    return tf.map_fn(
        tf.io.encode_png, to_uint8(images), fn_output_signature=tf.TensorSpec((), tf.string)
    )


def _twin(name, base):
    image_inputs = [
        i
        for i, spec in enumerate(base.tensor_specs)
        if spec.name == IMAGE_INPUT and spec.shape.rank == 4
    ]
    specs = list(base.tensor_specs)
    for i in image_inputs:
        specs[i] = tf.TensorSpec((None,), tf.string, name=BYTES_INPUT)
    limits = {k: v for k, v in base.limits.items() if k != IMAGE_INPUT}

    def fn(*args):
        args = list(args)
        for i in image_inputs:
            args[i] = decode_images(args[i], base.tensor_specs[i].shape[1:])
        outputs = base.fn(*args)
        images = [key for key in outputs if key in IMAGE_OUTPUTS]
        if len(images) > 1 or PNG_OUTPUT in outputs or not (images or image_inputs):
            raise ValueError(
                f"A png endpoint needs an `{IMAGE_INPUT}` input or one image output "
                f"({' or '.join(IMAGE_OUTPUTS)}) of endpoint {base.name!r}. Received: png "
                f"endpoint {name!r} over outputs {sorted(outputs)}"
            )
        return {
            (PNG_OUTPUT if key in images else key): (encode_png(v) if key in images else v)
            for key, v in outputs.items()
        }

    twin = _core.Endpoint(name, fn, specs, limits)
    twin.base_name = base.name
    return twin


def encoded_inputs(base, inputs):
    """A twin's inputs for `base`'s float inputs: images PNG-encoded (object array of bytes).

    Args:
        base: the endpoint the twin wraps.
        inputs: `{input: array}` of `base`, images float in [-1, 1].

    Returns:
        `{input: array}` of the twin: `image_bytes` in place of `images`.
    """
    encoded = {}
    for name, value in inputs.items():
        if name == IMAGE_INPUT and np.ndim(value) == 4:
            pngs = encode_png(tf.convert_to_tensor(value)).numpy()
            encoded[BYTES_INPUT] = np.array(list(pngs) + [None], dtype=object)[:-1]
        else:
            encoded[name] = value
    return encoded
