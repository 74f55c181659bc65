"""Shared test helpers (keras-hub style): round trips, precision policies, gradients."""

import contextlib
import json
import os

import keras
import numpy as np


@contextlib.contextmanager
def dtype_policy(name):
    """Temporarily set the global Keras dtype policy (e.g. "mixed_float16")."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def assert_config_roundtrip(layer):
    """`from_config(get_config())` rebuilds a layer with an identical config."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, (clone.get_config(), config)
    return clone


def assert_keras_roundtrip(model, inputs, directory, atol=0.0):
    """Save `model` as `.keras`, reload it, and check identical outputs on `inputs`."""
    path = os.path.join(directory, f"{model.name}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    actual = keras.ops.convert_to_numpy(reloaded(inputs, training=False))
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=0)
    return reloaded


def tiny_vqvae(image_shape=(8, 8, 3), **kwargs):
    """An untrained VQ-VAE (16 codes of 4 dims, one 2x downsampling) that builds in milliseconds.

    8x8 images (a 4x4 code grid) by default; `kwargs` go to `VQVAE` (`name`, ...).
    """
    from kzoo.models import VQVAE

    return VQVAE(
        image_shape=image_shape,
        codebook_size=16,
        embedding_dim=4,
        channels=(8, 8),
        num_res_blocks=1,
        norm_groups=4,
        attention=False,
        **kwargs,
    )


def tiny_unet(image_size=8, **overrides):
    """An untrained two-level U-Net (8 channels, no attention) that builds in milliseconds.

    `overrides` go to `UNet` (`num_classes`, `context_dim`, ...).
    """
    from kzoo.models import UNet

    args = dict(
        image_shape=(image_size, image_size, 3),
        channels=(8, 8),
        num_res_blocks=1,
        attention_resolutions=(),
        norm_groups=4,
        time_embedding_dim=16,
        mid_attention=False,
    )
    return UNet(**{**args, **overrides})


def write_workdir(path, model, config):
    """Makes `path` a `kzoo train`-like workdir: `config.json` and a checkpoint of `model`.

    `config` needs what the command under test reads (`recipe`, `dataset`, ...).
    """
    from kzoo.training.checkpoint import save_checkpoint

    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    save_checkpoint(model, path, epoch=1, step=1)
    return path


def gradients(fn, variables):
    """Gradients of the scalar `fn()` with respect to `variables` (TF backend)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = fn()
    return tape.gradient(value, variables)
