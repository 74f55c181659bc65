"""tf.data input pipelines of images (and labels, captions) scaled to [-1, 1].

`load` serves `kzoo_shapes` from memory (rendered by numpy at the requested size,
no disk), your own images (`folder:PATH`, `captions:FILE`, see `kzoo.data.folders`)
and any other image dataset through `tfds.load`. The order of stages
follows the tf.data performance guide
(https://www.tensorflow.org/guide/data_performance): per-example work (feature
selection, crop and resize) is mapped in parallel and cached as uint8, then the
cached examples are shuffled and repeated, random crops and flips (own data) run
per served example, then examples are batched, and the [-1, 1] scaling runs once
per batch, vectorised, before `prefetch`.
"""

import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kzoo.data import folders, shapes

KZOO_SHAPES = "kzoo_shapes"
# Shuffle buffer for TFDS datasets (in-memory kzoo_shapes shuffles fully). 10k
# examples mixes well across shuffled files while bounding memory on large images.
_SHUFFLE_BUFFER = 10_000
_LOAD_ARRAYS_BATCH = 256


def _split_names(split):
    """Names of the splits in a TFDS split expression ("train[:10%]+test" -> both)."""
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


class _Source:
    """A dataset of example dicts plus what `load` needs to know about them."""

    def __init__(
        self,
        make_dataset,
        features,
        image_shape,
        image_dtype,
        num_examples,
        in_memory,
        augment=None,
        resized=False,
    ):
        # make_dataset(keys) -> tf.data.Dataset of dicts holding at least `keys`
        self.make_dataset = make_dataset
        self.features = features  # name -> (shape, tf.DType) of each top-level feature
        self.image_shape = image_shape  # (H, W, C), None where it varies
        self.image_dtype = image_dtype
        self.num_examples = num_examples  # None where unknown
        self.in_memory = in_memory
        # augment(image, index) -> image: random ops of the index-th served example.
        self.augment = augment
        self.resized = resized  # images come at `image_shape` (after `augment`) already


def _shapes_source(split, image_size, num_examples):
    size = image_size if image_size is not None else 32
    arrays = shapes.generate_split(split, num_examples=num_examples, image_size=size)
    features = {
        key: (value.shape[1:], tf.string if key == "caption" else tf.as_dtype(value.dtype))
        for key, value in arrays.items()
    }

    def make_dataset(keys):
        return tf.data.Dataset.from_tensor_slices({key: arrays[key] for key in keys})

    return _Source(make_dataset, features, (size, size, 3), tf.uint8, len(arrays["image"]), True)


def _tfds_source(name, split, data_dir, shuffle, seed, num_examples):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r}: expected 'kzoo_shapes' or a TFDS dataset name "
            f"(see tfds.list_builders()). Received: name={name!r}"
        ) from None
    except ValueError as error:  # a malformed name or an unknown config
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"Cannot open dataset {name!r} ({reason}); expected 'kzoo_shapes' or a TFDS "
            f"dataset name. Received: name={name!r}"
        ) from error
    info = builder.info
    if "image" not in info.features.keys():
        raise ValueError(
            f"Dataset {name!r} has no 'image' feature (features: "
            f"{sorted(info.features.keys())}). Received: name={name!r}"
        )
    # Split names are only known once a dataset is prepared (or its metadata is
    # shipped); otherwise tfds.load itself reports a bad split.
    known_splits = sorted(info.splits.keys())
    if known_splits:
        for split_name in _split_names(split):
            if split_name not in known_splits:
                raise ValueError(
                    f"Unknown split {split_name!r} of dataset {name!r}; expected one of "
                    f"{known_splits}. Received: split={split!r}"
                )
    dataset = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        shuffle_files=shuffle,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    if num_examples is not None:
        dataset = dataset.take(num_examples)
    features = {}
    for key, feature in info.features.items():
        if isinstance(feature.shape, tuple):  # nested FeaturesDicts have dict shapes
            features[key] = (feature.shape, feature.tf_dtype)
    image = info.features["image"]
    total = None
    if known_splits and split in info.splits:
        total = info.splits[split].num_examples
        if num_examples is not None:
            total = min(total, num_examples)
    return _Source(lambda keys: dataset, features, tuple(image.shape), image.tf_dtype, total, False)


def _open(name, split, image_size, data_dir, shuffle, seed, num_examples, evaluation=False):
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a dataset name string. Received: name={name!r}")
    if not isinstance(split, str):
        raise ValueError(f"`split` must be a split name string. Received: split={split!r}")
    if name == KZOO_SHAPES:
        return _shapes_source(split, image_size, num_examples)
    if folders.is_own_data(name):
        return _own_source(name, split, image_size, seed, num_examples, evaluation)
    return _tfds_source(name, split, data_dir, shuffle, seed, num_examples)


def _own_source(name, split, image_size, seed, num_examples, evaluation):
    """A `folder:`/`captions:` dataset (`kzoo.data.folders`): decoded, resized per file.

    `evaluation` (`load_arrays`) serves centre crops without flips whatever the options.
    """
    folders.check_split(split)
    if image_size is None:
        raise ValueError(
            f"`image_size` is needed for {name!r}: own images vary in size. "
            f"Received: image_size=None"
        )
    data = folders.index(name).split(split)
    files, labels, captions = data.files, data.labels, data.captions
    if num_examples is not None:
        files = files[:num_examples]
    columns = {"file": files}
    features = {"image": ((image_size, image_size, 3), tf.uint8)}
    if labels is not None:
        columns["label"] = labels[: len(files)]
        features["label"] = ((), tf.int64)
    if captions is not None:
        columns["caption"] = captions[: len(files)]
        features["caption"] = ((), tf.string)
    crop = "center" if evaluation else data.options["crop"]
    flip = data.options["flip"] == "true" and not evaluation
    resize = folders.resize_fn(image_size, crop)

    def make_dataset(keys):
        wanted = {key: columns[key] for key in keys if key in columns}
        if "image" in keys:
            wanted["file"] = columns["file"]
        dataset = tf.data.Dataset.from_tensor_slices(
            {
                key: tf.constant(value, tf.int64 if key == "label" else tf.string)
                for key, value in wanted.items()
            }
        )

        def decode(example):
            example = dict(example)
            if "file" in example:
                file = example.pop("file")
                example["image"] = resize(folders._decode(tf.io.read_file(file)))
            return example

        return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    augment = folders.augment_fn(image_size, crop, flip, seed)
    return _Source(
        make_dataset,
        features,
        (image_size, image_size, 3),
        tf.uint8,
        len(files),
        False,
        augment=augment,
        resized=True,
    )


def _center_square(image):
    """Crops the central square of an (H, W, C) image."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    return tf.image.crop_to_bounding_box(
        image, (height - side) // 2, (width - side) // 2, side, side
    )


def _image_fn(source, image_size, channels):
    """Per-example image transform, or None when there is nothing to do.

    uint8 images stay uint8 (rounded after resizing) so the cache stays small.
    """
    height, width, native_channels = source.image_shape
    resize = (
        image_size is not None
        and not source.resized
        and (height, width) != (image_size, image_size)
    )
    is_uint8 = source.image_dtype == tf.uint8
    convert = (channels == 3 and native_channels == 1) or (channels == 1 and native_channels != 1)
    if not resize and not convert and is_uint8:
        return None, is_uint8

    def transform(image):
        if not is_uint8:
            image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
        if channels == 3 and native_channels == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels == 1 and native_channels != 1:
            image = tf.image.rgb_to_grayscale(image)
        if resize:
            if height is None or width is None or height != width:
                image = _center_square(image)
            image = tf.image.resize(
                image, (image_size, image_size), method="bilinear", antialias=True
            )
            if is_uint8:
                image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return image

    return transform, is_uint8


def load(
    name,
    split="train",
    batch_size=32,
    image_size=None,
    shuffle=True,
    seed=0,
    deterministic=False,
    outputs=("image",),
    repeat=False,
    drop_remainder=False,
    cache=True,
    data_dir=None,
    num_examples=None,
    channels=None,
):
    """Builds a batched tf.data pipeline of images in [-1, 1] and other features.

    Args:
        name: "kzoo_shapes" (rendered in memory, see `kzoo.data.shapes`), your own
            images as "folder:PATH" (class subfolders give `label`) or
            "captions:FILE.jsonl|.csv" (gives `caption`), options after `?`
            (`crop=random`, `flip=true`, `bad_images=skip`; see
            `kzoo.data.folders`), or any TFDS name with an `image` feature
            ("mnist", "cifar10", "celeb_a/...").
        split: split name; for TFDS also slicing expressions ("train[:10%]").
        batch_size: examples per batch, an int >= 1.
        image_size: None keeps the native size; an int >= 8 gives square
            `image_size` images: kzoo_shapes renders at that size, other datasets are
            centre-cropped to a square and resized (bilinear, antialiased). Needed
            for datasets whose images vary in size (own data always).
        shuffle: shuffle examples (and TFDS files), seeded by `seed`. False keeps
            the split order (and implies `deterministic=True`).
        seed: int seed of every shuffle.
        deterministic: True guarantees the identical sequence of elements on every
            run (`tf.data.Options.deterministic`); False lets parallel stages
            reorder for speed.
        outputs: names of the features in each element, a tuple (or one name).
            ("image",) yields image batches; ("image", "label") yields
            `(images, labels)` tuples, ready for `model.fit(dataset)`; any
            top-level feature of the dataset may be named (kzoo_shapes: image,
            caption, label, shape, color, size, position, background).
        repeat: repeat forever (shuffling anew each epoch).
        drop_remainder: drop the last, smaller batch.
        cache: cache decoded, resized examples in memory (TFDS datasets; the
            in-memory kzoo_shapes needs no cache).
        data_dir: TFDS data directory (ignored for kzoo_shapes).
        num_examples: use only the first `num_examples` examples of the split
            (kzoo_shapes: render that many, which may exceed the split size).
        channels: None keeps the native channel count; 3 turns grayscale into RGB;
            1 turns RGB into grayscale.

    Returns:
        A `tf.data.Dataset` whose elements are a batch of the single output, or a
        tuple of batches in the order of `outputs`. Images are float32
        (B, H, W, C) in [-1, 1] (uint8 images map 0..255 linearly; float images
        are taken to lie in [0, 1]); other features keep their dtype (int64
        labels, tf.string captions).

    Example:
    >>> ds = load("kzoo_shapes", batch_size=64, outputs=("image", "label"))
    >>> images, labels = next(iter(ds))  # (64, 32, 32, 3) float32, (64,) int64
    >>> model.fit(ds, epochs=1)
    """
    shapes.check_int("batch_size", batch_size, 1)
    shapes.check_int("seed", seed, 0)
    _check_common(image_size, num_examples, channels)
    if isinstance(outputs, str):
        outputs = (outputs,)
    outputs = tuple(outputs)
    if not outputs or not all(isinstance(key, str) for key in outputs):
        raise ValueError(
            f"`outputs` must be a non-empty tuple of feature names. Received: outputs={outputs!r}"
        )

    source = _open(name, split, image_size, data_dir, shuffle, seed, num_examples)
    return _build(
        source,
        name=name,
        outputs=outputs,
        batch_size=batch_size,
        image_size=image_size,
        channels=channels,
        shuffle=shuffle,
        seed=seed,
        deterministic=deterministic,
        repeat=repeat,
        drop_remainder=drop_remainder,
        cache=cache,
    )


def _check_common(image_size, num_examples, channels):
    shapes.check_int("image_size", image_size, 8, allow_none=True)
    shapes.check_int("num_examples", num_examples, 1, allow_none=True)
    if channels not in (None, 1, 3):
        raise ValueError(f"`channels` must be None, 1 or 3. Received: channels={channels!r}")


def _build(
    source,
    *,
    name,
    outputs,
    batch_size,
    image_size,
    channels,
    shuffle,
    seed,
    deterministic,
    repeat,
    drop_remainder,
    cache,
):
    """Turns a `_Source` into the batched, scaled pipeline that `load` documents."""
    unknown = [key for key in outputs if key not in source.features]
    if unknown:
        raise ValueError(
            f"Unknown output feature(s) {unknown} of dataset {name!r}; available: "
            f"{sorted(source.features)}. Received: outputs={outputs!r}"
        )
    if "image" in outputs and image_size is None and None in source.image_shape[:2]:
        raise ValueError(
            f"Dataset {name!r} has images of varying size {source.image_shape}; pass "
            f"`image_size` to resize them. Received: image_size={image_size!r}"
        )

    transform, is_uint8 = _image_fn(source, image_size, channels)

    def select(example):
        selected = {key: example[key] for key in outputs}
        if "image" in selected and transform is not None:
            selected["image"] = transform(selected["image"])
        return selected

    dataset = source.make_dataset(outputs)
    if transform is not None or not source.in_memory:
        dataset = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    if cache and not source.in_memory:
        dataset = dataset.cache()
    if shuffle:
        buffer = source.num_examples if source.in_memory else _SHUFFLE_BUFFER
        if source.num_examples is not None:
            buffer = min(buffer, source.num_examples)
        dataset = dataset.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if source.augment is not None and "image" in outputs:
        # After shuffle and repeat: the counter numbers the served examples, so each
        # epoch sees new crops and flips, and the same ones on every run.
        def augment(index, example):
            example = dict(example)
            example["image"] = source.augment(example["image"], index)
            return example

        dataset = dataset.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def finish(batch):
        if "image" in batch:
            images = tf.cast(batch["image"], tf.float32)
            batch["image"] = images / 127.5 - 1.0 if is_uint8 else images * 2.0 - 1.0
        values = tuple(batch[key] for key in outputs)
        return values[0] if len(values) == 1 else values

    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Unordered parallel maps may emit batches out of order, which an unshuffled
    # (evaluation) pipeline must not do.
    options.deterministic = bool(deterministic) or not shuffle
    return dataset.with_options(options)


def load_arrays(
    name=KZOO_SHAPES,
    split="test",
    num_examples=None,
    image_size=None,
    channels=None,
    data_dir=None,
):
    """Loads a split into numpy: images in [-1, 1] and the other scalar features.

    Args:
        name: dataset name, as for `load` (own data: centre crops, no flips,
            whatever its options).
        split: split name, as for `load`.
        num_examples: the first `num_examples` examples; None loads the whole split.
        image_size: as for `load`.
        channels: as for `load`.
        data_dir: TFDS data directory (ignored for kzoo_shapes).

    Returns:
        `(images, labels)`: float32 (N, H, W, C) images in [-1, 1], in split order,
        and a dict of numpy arrays of every other scalar feature (strings decoded
        to `str`; kzoo_shapes: caption, label, shape, color, size, position,
        background).

    Example:
    >>> images, labels = load_arrays("kzoo_shapes", split="test", num_examples=500)
    >>> images.shape, labels["label"].shape
    ((500, 32, 32, 3), (500,))
    """
    _check_common(image_size, num_examples, channels)
    source = _open(name, split, image_size, data_dir, False, 0, num_examples, evaluation=True)
    label_keys = sorted(
        key for key, (shape, _) in source.features.items() if key != "image" and shape == ()
    )
    dataset = _build(
        source,
        name=name,
        outputs=("image", *label_keys),
        batch_size=_LOAD_ARRAYS_BATCH,
        image_size=image_size,
        channels=channels,
        shuffle=False,
        seed=0,
        deterministic=True,
        repeat=False,
        drop_remainder=False,
        cache=False,
    )
    batches = list(dataset.as_numpy_iterator())
    if not label_keys:  # a single output comes unwrapped (an unlabelled image folder)
        batches = [(batch,) for batch in batches]
    images = np.concatenate([batch[0] for batch in batches])
    labels = {}
    for index, key in enumerate(label_keys, start=1):
        values = np.concatenate([batch[index] for batch in batches])
        if values.dtype == object:
            values = np.array([value.decode("utf-8") for value in values], dtype=np.str_)
        labels[key] = values
    return images, labels
