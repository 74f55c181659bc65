"""Datasets and input pipelines: the embedded `kzoo_shapes` and tf.data loaders.

`load` also reads your own images: `folder:PATH` and `captions:FILE` (see
`kzoo.data.folders`).

Importing this package registers the `kzoo_shapes` TFDS builder, so
`tfds.load("kzoo_shapes", ...)` works afterwards.
"""

from kzoo.data.pipelines import load, load_arrays
from kzoo.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLIT_SEEDS,
    SPLIT_SIZES,
    ShapesBuilder,
    generate,
    generate_split,
    make_caption,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLIT_SEEDS",
    "SPLIT_SIZES",
    "ShapesBuilder",
    "generate",
    "generate_split",
    "load",
    "load_arrays",
    "make_caption",
]
