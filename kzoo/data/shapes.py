"""`kzoo_shapes`: an embedded, procedural dataset of captioned images of shapes.

Every example is one flat-coloured shape on a plain background, described by five
factors (shape kind, colour, size, position on a 3x3 grid, background colour) and a
caption built from them, e.g. "a small red circle at the top left on a blue background".
The data is rendered from a seed by numpy, so it needs no download, is identical on
every machine and can be rendered at any resolution (16, 32 and 64 are the
registered TFDS configs; any size >= 16 renders sensibly).

Splits (two independent random streams, one seed each, see `SPLIT_SEEDS`):

| split      | examples | seed |
|------------|----------|------|
| train      | 5,000    | 1234 |
| validation | 1,000    | 4321 |
| test       | 1,000    | 5678 |

Every recipe choice is made on `validation`; `test` is scored once at the end.
`novel_combinations(split)` marks the examples whose attribute combination (shape,
colour, size, position, background) never occurs in train: the held-out set of
compositional generalisation for captions.

The factors are drawn uniformly and independently, except that the shape colour is
never the background colour; the centre moves by up to 4% of the side and the size by
up to 8%. The streams are independent but the image space is finite, so some test
images also occur in train (measured: 44% at 16 px, 8% at 32 px, 2% at 64 px).
Labels are drawn independently of `image_size`, so the same seed gives the same
labels and captions at every resolution, and the first `n` examples of a stream do
not depend on how many are generated.

Two ways in:
- `generate(num_examples, image_size, seed)` / `generate_split(split)`: numpy arrays in
  memory (what `kzoo.data.load("kzoo_shapes")` uses).
- `tfds.load("kzoo_shapes", split="train")` (or "kzoo_shapes/64x64") after
  `import kzoo.data`, through the `ShapesBuilder` registered here.
"""

import dataclasses
import math

import numpy as np
import tensorflow_datasets as tfds

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
SIZES = ("small", "medium", "large")
POSITIONS = (
    "top left",
    "top center",
    "top right",
    "center left",
    "center",
    "center right",
    "bottom left",
    "bottom center",
    "bottom right",
)
BACKGROUNDS = ("black", "white", "gray", "blue")

# One palette for shapes and backgrounds, so "blue" is the same blue in both roles.
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}

SPLIT_SIZES = {"train": 5000, "validation": 1000, "test": 1000}
SPLIT_SEEDS = {"train": 1234, "validation": 4321, "test": 5678}
IMAGE_SIZES = (16, 32, 64)
LABEL_NAMES = ("shape", "color", "size", "position", "background")

# Geometry in fractions of the image side. The centres of the 3x3 grid move by up to
# +-4% of the side and the half-extents by +-8%, which keeps the size classes apart
# (0.097 < 0.110, 0.130 < 0.143) and every centre inside its third of the image.
_CENTERS = (0.2, 0.5, 0.8)
_HALF_EXTENTS = (0.09, 0.12, 0.155)
_JITTER = 0.04
_SCALE_JITTER = 0.08
# Labels are drawn in blocks with one generator each, so a prefix of a stream does
# not depend on how many examples are asked for (load(num_examples=n) is a prefix).
_BLOCK = 1024
_COLOR_RGB = np.array([RGB[c] for c in COLORS], np.uint8)
_BACKGROUND_RGB = np.array([RGB[c] for c in BACKGROUNDS], np.uint8)
# Index in COLORS of each background's colour, or -1 where no shape has that colour.
_BACKGROUND_IN_COLORS = np.array([COLORS.index(b) if b in COLORS else -1 for b in BACKGROUNDS])


def _circle(u, v, half_px):
    del half_px  # Scale-free.
    return u * u + v * v <= 1.0


def _square(u, v, half_px):
    del half_px  # Scale-free.
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85


def _triangle(u, v, half_px):
    del half_px  # Scale-free.
    # Apex up (image rows grow downwards): v runs from -1 (apex) to 0.8 (base).
    return (v >= -1.0) & (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.6)


def _diamond(u, v, half_px):
    del half_px  # Scale-free.
    return np.abs(u) + np.abs(v) <= 1.1


def _cross(u, v, half_px):
    del half_px  # Scale-free.
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.35) & (av <= 1.0)) | ((av <= 0.35) & (au <= 1.0))


def _ring(u, v, half_px):
    # The hole shrinks on tiny shapes so the band stays about a pixel wide and never
    # misses every pixel centre (a small ring at 16 px would otherwise vanish).
    inner = np.clip(1.0 - 1.0 / half_px, 0.0, 0.55)
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= inner * inner)


_MASKS = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "cross": _cross,
    "ring": _ring,
}


def check_int(name, value, minimum, allow_none=False):
    """Raises ValueError unless `value` is an int >= `minimum` (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def make_caption(shape, color, size, position, background):
    """Builds the caption of one example from its label indices.

    Args:
        shape: index into `SHAPES`.
        color: index into `COLORS`.
        size: index into `SIZES`.
        position: index into `POSITIONS`.
        background: index into `BACKGROUNDS`.

    Returns:
        The caption string.

    Example:
    >>> make_caption(0, 0, 0, 0, 3)
    'a small red circle at the top left on a blue background'
    """
    return (
        f"a {SIZES[size]} {COLORS[color]} {SHAPES[shape]} at the {POSITIONS[position]}"
        f" on a {BACKGROUNDS[background]} background"
    )


def _draw_labels(num_examples, seed):
    """Draws the factors and jitter of `num_examples` examples, block by block."""
    blocks = []
    for block in range(math.ceil(num_examples / _BLOCK)):
        rng = np.random.default_rng((seed, block))
        background = rng.integers(len(BACKGROUNDS), size=_BLOCK)
        color = rng.integers(len(COLORS), size=_BLOCK)
        # A colour equal to the background moves to one of the other colours,
        # uniformly, which keeps the colour uniform over the allowed ones.
        clash = color == _BACKGROUND_IN_COLORS[background]
        shift = rng.integers(1, len(COLORS), size=_BLOCK)
        color = np.where(clash, (color + shift) % len(COLORS), color)
        blocks.append(
            {
                "shape": rng.integers(len(SHAPES), size=_BLOCK),
                "color": color,
                "size": rng.integers(len(SIZES), size=_BLOCK),
                "position": rng.integers(len(POSITIONS), size=_BLOCK),
                "background": background,
                "jitter": rng.uniform(-_JITTER, _JITTER, size=(_BLOCK, 2)),
                "scale": rng.uniform(1.0 - _SCALE_JITTER, 1.0 + _SCALE_JITTER, size=_BLOCK),
            }
        )
    if not blocks:
        return {k: np.zeros((0,), np.int64) for k in LABEL_NAMES} | {
            "jitter": np.zeros((0, 2)),
            "scale": np.zeros((0,)),
        }
    return {k: np.concatenate([b[k] for b in blocks])[:num_examples] for k in blocks[0]}


def _render(labels, image_size):
    """Renders images (N, S, S, 3) uint8 from drawn labels."""
    n = len(labels["shape"])
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    images[:] = _BACKGROUND_RGB[labels["background"]][:, None, None, :]
    # Work in pixels. Centres snap to pixel centres so every shape is symmetric about
    # its centre; off-grid centres make small shapes lopsided at 16 px.
    pixels = np.arange(image_size, dtype=np.float32)[None, :] + 0.5  # pixel centres
    row, col = np.divmod(labels["position"], 3)
    centers = np.asarray(_CENTERS, np.float32)
    cx = np.floor((centers[col] + labels["jitter"][:, 0]) * image_size) + 0.5  # (N,)
    cy = np.floor((centers[row] + labels["jitter"][:, 1]) * image_size) + 0.5
    half = np.asarray(_HALF_EXTENTS, np.float32)[labels["size"]] * labels["scale"]
    half_px = (half * image_size).astype(np.float32)  # (N,)
    # Keep squares (the only kind reaching 0.85 of the half-extent on both axes at
    # once) off the corner pixels, so the four corners always show the background.
    low = np.floor(0.85 * half_px) + 1.5
    cx = np.clip(cx, low, image_size - low)
    cy = np.clip(cy, low, image_size - low)
    u = (pixels - cx[:, None].astype(np.float32)) / half_px[:, None]  # (N, W) columns
    v = (pixels - cy[:, None].astype(np.float32)) / half_px[:, None]  # (N, H) rows
    for index, kind in enumerate(SHAPES):
        members = np.flatnonzero(labels["shape"] == index)
        if members.size == 0:
            continue
        size_px = half_px[members, None, None]
        mask = _MASKS[kind](u[members, None, :], v[members, :, None], size_px)  # (M, H, W)
        rgb = _COLOR_RGB[labels["color"][members]][:, None, None, :]
        images[members] = np.where(mask[..., None], rgb, images[members])
    return images


def generate(num_examples, image_size=32, seed=0):
    """Renders `num_examples` captioned shape images from a seed, in numpy.

    Args:
        num_examples: number of examples, an int >= 0.
        image_size: side of the square images in pixels, an int >= 8 (16 or more
            renders every shape recognisably).
        seed: non-negative int; equal seeds give identical examples.

    Returns:
        A dict of numpy arrays with `num_examples` rows: `image` uint8
        (N, image_size, image_size, 3), `caption` str, and int64 `shape`, `color`,
        `size`, `position`, `background` (indices into the vocabulary constants) and
        `label` (= `shape`).

    Example:
    >>> data = generate(8, image_size=16, seed=3)
    >>> data["image"].shape, str(data["caption"][0])
    ((8, 16, 16, 3), 'a small green triangle at the bottom center on a blue background')
    """
    check_int("num_examples", num_examples, 0)
    check_int("image_size", image_size, 8)
    check_int("seed", seed, 0)
    labels = _draw_labels(int(num_examples), int(seed))
    images = _render(labels, int(image_size))
    out = {"image": images}
    out["caption"] = np.array(
        [make_caption(*factors) for factors in zip(*(labels[k] for k in LABEL_NAMES), strict=True)],
        dtype=np.str_,
    ).reshape(-1)
    for key in LABEL_NAMES:
        out[key] = labels[key].astype(np.int64)
    out["label"] = out["shape"].copy()
    return out


def _split_size(split, num_examples):
    """`num_examples`, or the whole split's size; a clear error for an unknown split."""
    if split not in SPLIT_SIZES:
        raise ValueError(
            f"Unknown split for kzoo_shapes; expected one of {sorted(SPLIT_SIZES)}. "
            f"Received: split={split!r}"
        )
    return SPLIT_SIZES[split] if num_examples is None else num_examples


def generate_split(split, num_examples=None, image_size=32):
    """Renders a named split (its own seed) of `kzoo_shapes`.

    Args:
        split: "train", "validation" or "test".
        num_examples: how many examples of the split to render (a prefix of it);
            None renders the whole split (`SPLIT_SIZES`). May exceed the split size,
            continuing the same stream.
        image_size: image side in pixels, an int >= 8.

    Returns:
        The dict of numpy arrays of `generate`.

    Example:
    >>> generate_split("test", num_examples=4)["image"].shape
    (4, 32, 32, 3)
    """
    num_examples = _split_size(split, num_examples)
    return generate(num_examples, image_size=image_size, seed=SPLIT_SEEDS[split])


def novel_combinations(split, num_examples=None):
    """Which examples of `split` have an attribute combination absent from train.

    Args:
        split: "validation" or "test" (any split name of `SPLIT_SIZES`).
        num_examples: a prefix of the split, as in `generate_split`.

    Returns:
        bool numpy array (N,): True where the example's (shape, colour, size,
        position, background) occurs in no example of the whole train split.

    Example:
    >>> novel = novel_combinations("test")
    >>> 0.3 < novel.mean() < 0.5
    True
    """
    num_examples = _split_size(split, num_examples)
    check_int("num_examples", num_examples, 0)
    train = _draw_labels(SPLIT_SIZES["train"], SPLIT_SEEDS["train"])
    seen = set(zip(*(train[k].tolist() for k in LABEL_NAMES), strict=True))
    labels = _draw_labels(int(num_examples), SPLIT_SEEDS[split])
    combos = zip(*(labels[k].tolist() for k in LABEL_NAMES), strict=True)
    return np.array([combo not in seen for combo in combos], dtype=bool)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """BuilderConfig of `kzoo_shapes` for one image size.

    Args:
        image_size: side of the square images in pixels.
    """

    image_size: int = 32


def _config(image_size):
    return ShapesConfig(
        name=f"{image_size}x{image_size}",
        description=f"{image_size}x{image_size} RGB images.",
        image_size=image_size,
    )


class ShapesBuilder(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of `kzoo_shapes`, rendered locally (no download).

    Configs "32x32" (default), "16x16" and "64x64" set the image size; the splits are
    "train" (5,000 examples), "validation" (1,000) and "test" (1,000). Preparing
    writes PNG-encoded TFRecords under `data_dir`, which takes a few seconds.

    Example:
    >>> import kzoo.data  # registers the builder
    >>> ds = tfds.load("kzoo_shapes", split="train", data_dir="/tmp/tfds")
    >>> ds_64 = tfds.load("kzoo_shapes/64x64", split="test", data_dir="/tmp/tfds")
    """

    name = "kzoo_shapes"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "A validation split (seed 4321)."}
    BUILDER_CONFIGS = [_config(32), _config(16), _config(64)]
    DEFAULT_CONFIG_NAME = "32x32"
    # TFDS derives `code_path` through `importlib_resources`, which TFDS 4.9.10 does
    # not install (ModuleNotFoundError on prepare); this module is the code.
    code_path = tfds.core.Path(__file__)

    def _info(self):
        size = self.builder_config.image_size
        features = {
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "caption": tfds.features.Text(),
            "shape": tfds.features.ClassLabel(names=SHAPES),
            "color": tfds.features.ClassLabel(names=COLORS),
            "size": tfds.features.ClassLabel(names=SIZES),
            "position": tfds.features.ClassLabel(names=POSITIONS),
            "background": tfds.features.ClassLabel(names=BACKGROUNDS),
            "label": tfds.features.ClassLabel(names=SHAPES),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Rendered locally: nothing to download.
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split):
        data = generate_split(split, image_size=self.builder_config.image_size)
        for index in range(len(data["image"])):
            yield index, {key: data[key][index] for key in data}
