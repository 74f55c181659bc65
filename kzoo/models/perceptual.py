"""LPIPS-style perceptual distance over a feature network, with a small default net for shapes.

Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric" (https://arxiv.org/abs/1801.03924), Eq. 1: features of each
layer are unit-normalised along channels, their squared difference is averaged
over space and the layers are summed. LPIPS also learns a per-channel weight
`w_l` on ImageNet-trained VGG/AlexNet features; kzoo has no download here, so the
weights are all one and the default feature network, `ShapesPerceptual`, is a
small conv net that kzoo trains itself on the embedded `kzoo_shapes` labels
(shape and colour), offline and in seconds. Any Keras model mapping images to a
list of feature maps (e.g. a VGG with your own weights) plugs in instead.
"""

import os
import tempfile

import keras
import numpy as np
from keras import ops

from kzoo.presets import PresetMixin

# Bump when the architecture or the training recipe of the default network changes:
# cached weights of another version are then ignored (and retrained).
PERCEPTUAL_VERSION = "v1"
DEFAULT_PERCEPTUAL_STEPS = 300
CACHE_ENV = "KZOO_CACHE_DIR"
_EPSILON = 1e-10


def perceptual_distance(features_a, features_b):
    """LPIPS-style distance between two lists of feature maps: `(B,)` float32.

    Each `(B, H, W, C)` map is unit-normalised along channels; the squared
    difference is summed over channels, averaged over space and summed over the
    layers (Zhang et al. 2018, Eq. 1, with unit weights).

    Args:
        features_a: list of `(B, H_l, W_l, C_l)` feature maps.
        features_b: list of feature maps of the same shapes.

    Returns:
        A `(B,)` float32 tensor, 0 for identical features.

    Example:
    ```python
    distance = perceptual_distance(net(images), net(reconstructions))  # (B,)
    ```
    """
    features_a = _as_list(features_a)
    features_b = _as_list(features_b)
    if len(features_a) != len(features_b):
        raise ValueError(
            "Both images must give the same number of feature maps. "
            f"Received: len(features_a)={len(features_a)}, len(features_b)={len(features_b)}"
        )
    total = 0.0
    for a, b in zip(features_a, features_b, strict=True):
        a = _unit_normalize(ops.cast(a, "float32"))
        b = _unit_normalize(ops.cast(b, "float32"))
        squared = ops.sum(ops.square(a - b), axis=-1)  # (B, H, W)
        spatial_axes = tuple(range(1, len(squared.shape)))
        total = total + (ops.mean(squared, axis=spatial_axes) if spatial_axes else squared)
    return total


def _as_list(features):
    return list(features) if isinstance(features, list | tuple) else [features]


def _unit_normalize(x):
    return x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + _EPSILON)


@keras.saving.register_keras_serializable(package="kzoo")
class ShapesPerceptual(PresetMixin, keras.Model):
    """Small conv feature network for an LPIPS-style distance on `kzoo_shapes`-like images.

    Blocks of two 3x3 conv + ReLU layers with 2x2 average pooling between them;
    `model(images)` returns the list of the blocks' outputs (the LPIPS layers) and
    `distance(a, b)` the `(B,)` perceptual distance. Untrained, the features are
    random (still a useful distance, but weaker); `load_or_train_shapes_perceptual`
    trains it on the shape and colour labels and caches the weights. Every layer
    is float32 whatever the global policy, so the distance does not depend on it.

    Args:
        image_size: side of the square RGB images, an int that `2 ** (len(filters) - 1)`
            divides.
        filters: channels of each block, e.g. `(32, 64, 96)`.
        **kwargs: base `keras.Model` arguments.

    Example:
    ```python
    net = kzoo.models.load_or_train_shapes_perceptual(image_size=32)
    distance = net.distance(images, reconstructions)  # (B,)
    ```
    """

    def __init__(self, image_size=32, filters=(32, 64, 96), **kwargs):
        kwargs.setdefault("name", "shapes_perceptual")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        filters = tuple(filters) if isinstance(filters, list | tuple) else filters
        if not filters or not all(
            isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters
        ):
            raise ValueError(
                "`filters` must be a non-empty sequence of positive integers. "
                f"Received: filters={filters!r}"
            )
        factor = 2 ** (len(filters) - 1)
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, int)
            or image_size < factor
            or image_size % factor
        ):
            raise ValueError(
                f"`image_size` must be a positive multiple of {factor} "
                f"(2 ** (len(filters) - 1)). Received: image_size={image_size!r}"
            )
        self.image_size = image_size
        self.filters = filters

        # === Functional Model ===
        images = keras.Input((image_size, image_size, 3), name="images")
        x, outputs = images, []
        for level, width in enumerate(filters):
            if level:
                x = keras.layers.AveragePooling2D(2, dtype="float32", name=f"pool{level}")(x)
            for conv in range(2):
                x = keras.layers.Conv2D(
                    width,
                    3,
                    padding="same",
                    activation="relu",
                    dtype="float32",
                    name=f"block{level}_conv{conv}",
                )(x)
            outputs.append(x)
        self.network = keras.Model(images, outputs, name="features")
        self.built = True

    def call(self, images):
        return self.network(ops.cast(images, "float32"))

    def distance(self, images_a, images_b):
        """Perceptual distance `(B,)` between two image batches in [-1, 1]."""
        return perceptual_distance(self(images_a), self(images_b))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": self.image_size,
            "filters": self.filters,
        }


def train_shapes_perceptual(
    images, labels, image_size=32, filters=(32, 64, 96), steps=DEFAULT_PERCEPTUAL_STEPS, seed=0
):
    """Train a `ShapesPerceptual` on labelled images with one softmax head per label set.

    Args:
        images: float `(N, S, S, 3)` images in [-1, 1].
        labels: list of int `(N,)` arrays (e.g. shape and colour ids).
        image_size: `S`.
        filters: the network's block widths.
        steps: optimizer steps (batch 64, Adam 1e-3).
        seed: seed of the weights and of the batch order.

    Returns:
        The trained, frozen (`trainable=False`) `ShapesPerceptual`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer. Received: steps={steps!r}")
    keras.utils.set_random_seed(seed)
    network = ShapesPerceptual(image_size=image_size, filters=filters)
    inputs = keras.Input((image_size, image_size, 3))
    features = network(inputs)
    pooled = keras.layers.Concatenate(dtype="float32")(
        [keras.layers.GlobalAveragePooling2D(dtype="float32")(f) for f in features]
    )
    heads = [
        keras.layers.Dense(int(np.max(y)) + 1, dtype="float32", name=f"head{i}")(pooled)
        for i, y in enumerate(labels)
    ]
    classifier = keras.Model(inputs, heads)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * len(heads),
    )
    rng = np.random.default_rng(seed)
    batch = 64
    order = np.concatenate(
        [rng.permutation(len(images)) for _ in range(steps * batch // len(images) + 1)]
    )
    order = order[: steps * batch]
    classifier.fit(
        np.asarray(images, "float32")[order],
        [np.asarray(y)[order] for y in labels],
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    network.trainable = False
    return network


def default_cache_dir():
    """`$KZOO_CACHE_DIR`, else `~/.cache/kzoo`."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kzoo")


def load_or_train_shapes_perceptual(
    image_size=32, steps=DEFAULT_PERCEPTUAL_STEPS, seed=0, cache_dir=None
):
    """The default perceptual network: cached weights, or trained on `kzoo_shapes` and cached.

    Trains on 2048 rendered training images (shape and colour labels) the first
    time, then loads `<cache_dir>/shapes_perceptual-<version>-<size>px-<steps>steps-
    seed<seed>.weights.h5`, written under a temporary name and renamed.

    Args:
        image_size: side of the square images.
        steps: training steps (part of the cache key).
        seed: seed of the data, weights and batch order (part of the cache key).
        cache_dir: default `$KZOO_CACHE_DIR` or `~/.cache/kzoo`.

    Returns:
        A frozen `ShapesPerceptual`.

    Example:
    ```python
    net = load_or_train_shapes_perceptual(image_size=32)
    ```
    """
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(
        cache_dir,
        f"shapes_perceptual-{PERCEPTUAL_VERSION}-{image_size}px-{steps}steps-seed{seed}.weights.h5",
    )
    if os.path.exists(path):
        network = ShapesPerceptual(image_size=image_size)
        network.load_weights(path)
        network.trainable = False
        return network
    # The default network is a data-trained asset: the renderer is imported only
    # here, when one must be trained, so importing kzoo.models never loads kzoo.data.
    from kzoo.data import shapes

    data = shapes.generate(2048, image_size=image_size, seed=seed)
    images = data["image"].astype("float32") / 127.5 - 1.0
    network = train_shapes_perceptual(
        images, [data["shape"], data["color"]], image_size=image_size, steps=steps, seed=seed
    )
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".weights.h5", dir=cache_dir)
    os.close(fd)
    try:
        network.save_weights(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return network
