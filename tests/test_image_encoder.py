import keras
import numpy as np
import pytest
from keras import ops

from kzoo.models import ImageEncoder
from kzoo.testing import assert_config_roundtrip, dtype_policy, gradients

SHAPE = (16, 16, 3)
TINY_VIT = {"kind": "vit", "patch_size": 4, "hidden_dim": 16, "num_layers": 1, "num_heads": 2}
TINY_VIT_CONV_STEM = {**TINY_VIT, "stem": "conv"}
TINY_CONV = {"kind": "conv", "hidden_dim": 16, "channels": (8, 16), "norm_groups": 4}


def _images(n=2, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "args, tokens",
    [(TINY_VIT, 16), (TINY_VIT_CONV_STEM, 16), (TINY_CONV, 64)],
    ids=["vit", "vit_conv_stem", "conv"],
)
def test_output_shapes(args, tokens):
    encoder = ImageEncoder(SHAPE, **args)
    outputs = encoder(_images(3))
    assert set(outputs) == {"sequence", "pooled"}
    assert tuple(outputs["sequence"].shape) == (3, tokens, 16)
    assert tuple(outputs["pooled"].shape) == (3, 16)
    assert np.all(np.isfinite(_np(outputs["pooled"])))


def test_pooling_modes():
    mean = ImageEncoder(SHAPE, pooling="mean", **TINY_VIT)
    outputs = mean(_images())
    np.testing.assert_allclose(
        _np(outputs["pooled"]), _np(outputs["sequence"]).mean(axis=1), atol=1e-5
    )
    cls = ImageEncoder(SHAPE, **TINY_VIT)
    assert cls.pooling == "cls"
    assert "class_token" in [layer.name for layer in cls.layers]
    conv = ImageEncoder(SHAPE, **TINY_CONV)
    outputs = conv(_images())
    np.testing.assert_allclose(
        _np(outputs["pooled"]), _np(outputs["sequence"]).mean(axis=1), atol=1e-5
    )


def test_images_are_told_apart():
    encoder = ImageEncoder(SHAPE, **TINY_VIT)
    pooled = _np(encoder(_images(2))["pooled"])
    assert np.abs(pooled[0] - pooled[1]).max() > 1e-3


@pytest.mark.parametrize(
    "args", [TINY_VIT, TINY_VIT_CONV_STEM, TINY_CONV], ids=["vit", "vit_conv_stem", "conv"]
)
def test_gradients_reach_every_weight(args):
    encoder = ImageEncoder(SHAPE, **args)
    images = _images()
    grads = gradients(
        lambda: ops.sum(ops.square(encoder(images)["pooled"])), encoder.trainable_weights
    )
    for grad, weight in zip(grads, encoder.trainable_weights, strict=True):
        assert grad is not None and np.all(np.isfinite(_np(grad))), weight.path


def test_mixed_precision():
    with dtype_policy("mixed_float16"):
        encoder = ImageEncoder(SHAPE, **TINY_VIT)
        pooled = encoder(_images())["pooled"]
    assert pooled.dtype == "float16"
    assert np.all(np.isfinite(_np(pooled)))


@pytest.mark.parametrize(
    "args", [TINY_VIT, TINY_VIT_CONV_STEM, TINY_CONV], ids=["vit", "vit_conv_stem", "conv"]
)
def test_config_and_keras_round_trip(args, tmp_path):
    encoder = ImageEncoder(SHAPE, **args)
    clone = assert_config_roundtrip(encoder)
    assert clone.count_params() == encoder.count_params()
    encoder.save(tmp_path / "image.keras")
    reloaded = keras.saving.load_model(tmp_path / "image.keras")
    images = _images()
    np.testing.assert_allclose(
        _np(reloaded(images)["pooled"]), _np(encoder(images)["pooled"]), atol=0
    )


@pytest.mark.parametrize(
    "shape", [(2, 32, 32, 3), (2, 16, 16, 1), (2, 16, 16, 4)], ids=["size", "gray", "rgba"]
)
def test_wrong_image_shape_is_rejected(shape):
    encoder = ImageEncoder(SHAPE, **TINY_VIT)
    with pytest.raises(ValueError, match="incompatible"):
        encoder(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_shape": (16, 16)}, "image_shape"),
        ({"kind": "resnet"}, "kind"),
        ({"patch_size": 5}, "patch_size"),
        ({"hidden_dim": 10, "num_heads": 4}, "must divide"),
        ({"kind": "conv", "pooling": "cls"}, "pooling"),
        ({"kind": "conv", "channels": (6, 8), "norm_groups": 4}, "norm_groups"),
        ({"kind": "conv", "channels": ()}, "channels"),
        ({"kind": "conv", "channels": (8,) * 6}, "divisible"),
        ({"stem": "resnet"}, "stem"),
        ({"image_shape": (12, 12, 3), "patch_size": 6, "stem": "conv"}, "power of 2"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"image_shape": SHAPE, **TINY_VIT, "norm_groups": 4, **kwargs}
    if args["kind"] == "conv":
        args.pop("patch_size")
    with pytest.raises(ValueError, match=match):
        ImageEncoder(**args)
