"""Your own images for `kzoo.data.load`: an image folder or a captions file.

Two dataset names, beside "kzoo_shapes" and the TFDS names:

- `folder:PATH`: every image file under PATH, recursively (`IMAGE_EXTENSIONS`:
  PNG, JPEG, WebP, BMP, GIF, decoded by `tf.io.decode_image`). When every image
  lies in a subfolder of PATH, the first-level subfolders are the classes: the
  `label` feature is the index of its folder name in `class_names`, the names
  sorted (the order `keras.utils.image_dataset_from_directory` and
  `tfds.ImageFolder` use). Images directly in PATH give an unlabelled folder.
- `captions:FILE`: a JSONL file (one `{"file": ..., "caption": ...}` object a
  line) or a CSV file (rows `file,caption`, an optional `file,caption` header);
  files are relative to FILE's folder. Gives the `image` and `caption` features.

Options follow the path after `?`, joined by `&` (they are part of the name, so a
recipe's `--set dataset=...` carries them and its config.json records them):

| option       | values                | default  | effect                                   |
|--------------|-----------------------|----------|------------------------------------------|
| `crop`       | `center`, `random`    | `center` | `center`: the central square, resized to |
|              |                       |          | `image_size`; `random`: the short side   |
|              |                       |          | resized to `image_size`, then a random   |
|              |                       |          | square window each time it is served     |
| `flip`       | `true`, `false`       | `false`  | random horizontal flips                  |
| `bad_images` | `raise`, `skip`       | `raise`  | what to do with files that do not decode |
| `holdout`    | a number in [0, 0.5)  | `0`      | the share of files in `validation` and,  |
|              |                       |          | as much again, in `test` (see below)     |

e.g. `folder:/data/pets?crop=random&flip=true&bad_images=skip&holdout=0.1`.

Every image is decoded to 3 channels (grayscale is repeated, an alpha channel is
dropped), so folders of mixed channel counts load as RGB. Before any batch is
served, every file is decoded once (in parallel, results remembered per file
path, size and modification time): a file that does not decode (unreadable,
truncated, not an image) raises a `ValueError` naming the files, or, with
`bad_images=skip`, is left out with a warning giving the count. Training then
never stops on a bad file halfway through an epoch.

Splits. Without `holdout` own data has one split: "train", "validation" and
"test" all read every file. With `holdout=F` each file belongs to one split,
chosen by a hash of its path relative to the folder (or to the captions file's
folder): a share F of the files is `validation`, another F is `test`, the rest
`train`. The choice depends on nothing but the path, so it is the same on every
machine and run, and adding files never moves the old ones to another split
(which a shuffled cut would). It is not stratified: in a small folder a class
can miss from a split, and a split left empty is an error.

What TF / Keras / TFDS provide and where this module does not use it:
- Decoding and resizing are `tf.io.decode_image` and `tf.image.resize` in tf.data.
- `keras.utils.image_dataset_from_directory` is not used: with inferred labels it
  ignores images at the top of the folder, its format list has no WebP, it
  resizes (and batches) before any cache so a random crop could only see the
  already-cropped image, and a file that does not decode stops the epoch where
  it is met, without naming it.
- `tfds.ImageFolder` is not used: it needs a `split/label/image` layout, reads
  only one level of subfolders, and has no captions.
Both exist for these cases; this module keeps their class ordering.
"""

import csv
import hashlib
import json
import os
import urllib.parse
import warnings

import tensorflow as tf

FOLDER = "folder:"
CAPTIONS = "captions:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CAPTION_EXTENSIONS = (".jsonl", ".csv")
OPTIONS = {
    "crop": ("center", "random"),
    "flip": ("true", "false"),
    "bad_images": ("raise", "skip"),
    "holdout": None,  # a number in [0, 0.5), checked by `_holdout`
}
DEFAULT_OPTIONS = {"crop": "center", "flip": "false", "bad_images": "raise", "holdout": "0"}
SPLITS = ("train", "validation", "test")

# (path, size, mtime_ns) -> True when the file decodes; filled by `_decodes`.
_DECODE_CHECKS = {}


def is_own_data(name):
    """True for a `folder:` or `captions:` dataset name."""
    return isinstance(name, str) and name.startswith((FOLDER, CAPTIONS))


def parse(name):
    """`(kind, path, options)` of a `folder:`/`captions:` name; options as strings.

    Raises:
        ValueError: an empty path, an unknown option or an unknown option value.
    """
    kind = FOLDER if name.startswith(FOLDER) else CAPTIONS
    path, _, query = name[len(kind) :].partition("?")
    if not path:
        raise ValueError(
            f"`dataset` must name a path after {kind!r} ({kind}/path/to/...). "
            f"Received: dataset={name!r}"
        )
    options = dict(DEFAULT_OPTIONS)
    for key, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        value = values[-1].strip().lower()
        if key not in OPTIONS:
            raise ValueError(
                f"Unknown option {key!r} of `dataset`; expected some of {sorted(OPTIONS)}. "
                f"Received: dataset={name!r}"
            )
        if key == "holdout":
            _holdout(name, value)
        elif value not in OPTIONS[key]:
            raise ValueError(
                f"Option {key!r} of `dataset` must be one of {list(OPTIONS[key])}. "
                f"Received: dataset={name!r}"
            )
        options[key] = value
    return kind, os.path.expanduser(path), options


def _holdout(name, value):
    """The `holdout` option as a float in [0, 0.5); a clear error otherwise."""
    try:
        share = float(value)
    except ValueError:
        share = None
    if share is None or not 0.0 <= share < 0.5:
        raise ValueError(
            "Option 'holdout' of `dataset` must be a number in [0, 0.5) (the share of "
            f"files in validation, and as much again in test). Received: dataset={name!r}"
        )
    return share


def check_split(split):
    """Raises a ValueError unless `split` is one of `SPLITS`."""
    if split not in SPLITS:
        raise ValueError(
            f"Own data has the splits {list(SPLITS)} (all three read every file "
            f"unless the name sets `holdout`). Received: split={split!r}"
        )


def split_of(relative_path, holdout):
    """The split ("train", "validation" or "test") of a file under `holdout`.

    A SHA-256 of the path (with "/" separators) mapped to [0, 1): below `holdout`
    is validation, below twice `holdout` test, the rest train.
    """
    key = relative_path.replace(os.sep, "/").encode("utf-8")
    position = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    if position < holdout:
        return "validation"
    return "test" if position < 2 * holdout else "train"


class OwnData:
    """The checked index of a `folder:`/`captions:` dataset (what `index` returns).

    Attributes:
        name: the dataset name.
        files: absolute image paths, in a fixed order (sorted relative paths for a
            folder, row order for a captions file), bad files left out.
        labels: int label per file, or None (a captions file, an unlabelled folder).
        class_names: the sorted class folder names (empty when `labels` is None).
        captions: caption per file, or None (a folder).
        options: the parsed options (`crop`, `flip`, `bad_images`, `holdout`).
        root: the folder that `split_of` takes the files' paths relative to.
        skipped: the files left out because they do not decode (`bad_images=skip`).
    """

    def __init__(self, name, files, labels, class_names, captions, options, skipped, root):
        self.name = name
        self.root = root
        self.files = files
        self.labels = labels
        self.class_names = class_names
        self.captions = captions
        self.options = options
        self.skipped = skipped

    def split(self, split):
        """The `OwnData` of one split: every file without `holdout`, else its share.

        Raises:
            ValueError: an unknown split, or a split that `holdout` leaves empty.
        """
        check_split(split)
        holdout = _holdout(self.name, self.options["holdout"])
        if holdout == 0:
            return self
        keep = [split_of(os.path.relpath(f, self.root), holdout) == split for f in self.files]
        if not any(keep):
            raise ValueError(
                f"holdout={holdout} leaves the {split!r} split of `dataset` empty ({len(keep)} "
                f"files in all): raise `holdout` or add files. Received: dataset={self.name!r}"
            )

        def pick(values):
            return None if values is None else [v for v, k in zip(values, keep, strict=True) if k]

        return OwnData(
            self.name,
            pick(self.files),
            pick(self.labels),
            self.class_names,  # every split keeps the whole folder's label mapping
            pick(self.captions),
            self.options,
            self.skipped,
            self.root,
        )

    def features(self):
        """The features this data has: `image`, plus `label` or `caption`."""
        names = ["image"]
        if self.labels is not None:
            names.append("label")
        if self.captions is not None:
            names.append("caption")
        return names

    def describe(self):
        """A JSON-able summary: `num_examples`, `class_names`, `skipped` (file names)."""
        return {
            "num_examples": len(self.files),
            "class_names": list(self.class_names),
            "skipped": list(self.skipped),
        }


def index(name):
    """Lists, checks and decodes once every file of `name`; returns an `OwnData`.

    Raises:
        ValueError: a missing path, an empty folder, a bad captions file (its line
            named), a caption row whose image is missing, or files that do not
            decode (unless `bad_images=skip`). Every message names the `dataset`.
    """
    kind, path, options = parse(name)
    if kind == FOLDER:
        files, labels, class_names, captions = _index_folder(name, path)
    else:
        files, captions = _index_captions(name, path)
        labels, class_names = None, []
    ok = _decodes(files)
    bad = [file for file, good in zip(files, ok, strict=True) if not good]
    if bad:
        shown = ", ".join(repr(file) for file in bad[:3]) + (", ..." if len(bad) > 3 else "")
        if options["bad_images"] == "raise":
            raise ValueError(
                f"{len(bad)} of {len(files)} image files of `dataset` do not decode "
                f"(unreadable, truncated or not an image): {shown}. Fix or remove them, or "
                f"add `?bad_images=skip` to the name to leave them out. Received: "
                f"dataset={name!r}"
            )
        warnings.warn(
            f"Skipped {len(bad)} of {len(files)} image files of dataset {name!r} that do "
            f"not decode: {shown}",
            UserWarning,
            stacklevel=2,
        )
        files = [f for f, k in zip(files, ok, strict=True) if k]
        labels = None if labels is None else [v for v, k in zip(labels, ok, strict=True) if k]
        captions = None if captions is None else [c for c, k in zip(captions, ok, strict=True) if k]
        if not files:
            raise ValueError(
                f"No image file of `dataset` decodes ({len(bad)} skipped). Received: "
                f"dataset={name!r}"
            )
    root = os.path.abspath(path) if kind == FOLDER else os.path.dirname(os.path.abspath(path))
    return OwnData(name, files, labels, class_names, captions, options, bad, root)


def _is_image(filename):
    return filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith(".")


def _index_folder(name, path):
    if not os.path.isdir(path):
        raise ValueError(
            f"`dataset` must name an existing folder after 'folder:'; {path!r} is "
            f"{'a file' if os.path.exists(path) else 'missing'}. Received: dataset={name!r}"
        )
    relative = []
    for root, dirs, filenames in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for filename in filenames:
            if _is_image(filename):
                relative.append(os.path.relpath(os.path.join(root, filename), path))
    relative.sort()
    if not relative:
        raise ValueError(
            f"`dataset` folder {path!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, "
            f"searched recursively). Received: dataset={name!r}"
        )
    files = [os.path.join(os.path.abspath(path), r) for r in relative]
    if any(os.sep not in r for r in relative):
        return files, None, [], None  # images at the top: no classes
    folders = [r.split(os.sep, 1)[0] for r in relative]
    class_names = sorted(set(folders))
    ids = {folder: i for i, folder in enumerate(class_names)}
    return files, [ids[folder] for folder in folders], class_names, None


def _index_captions(name, path):
    if not os.path.isfile(path):
        raise ValueError(
            f"`dataset` must name an existing captions file after 'captions:'; {path!r} is "
            f"{'a folder' if os.path.isdir(path) else 'missing'}. Received: dataset={name!r}"
        )
    if not path.lower().endswith(CAPTION_EXTENSIONS):
        raise ValueError(
            f"`dataset` captions file must end in {' or '.join(CAPTION_EXTENSIONS)} (JSONL "
            f"or CSV of file, caption). Received: dataset={name!r}"
        )
    rows = _read_jsonl(name, path) if path.lower().endswith(".jsonl") else _read_csv(name, path)
    if not rows:
        raise ValueError(
            f"`dataset` captions file {path!r} has no rows. Received: dataset={name!r}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    files, captions, missing = [], [], []
    for line, file, caption in rows:
        full = os.path.normpath(os.path.join(folder, file))
        if not os.path.isfile(full):
            missing.append(f"line {line}: {file!r}")
        files.append(full)
        captions.append(caption)
    if missing:
        shown = "; ".join(missing[:3]) + ("; ..." if len(missing) > 3 else "")
        raise ValueError(
            f"{len(missing)} row(s) of the `dataset` captions file name a missing image "
            f"(paths are relative to the file's folder {folder!r}): {shown}. Received: "
            f"dataset={name!r}"
        )
    return files, captions


def _row_error(name, path, line, what):
    return ValueError(
        f"Line {line} of the `dataset` captions file {path!r} {what}; expected a file and "
        f"a caption. Received: dataset={name!r}"
    )


def _read_jsonl(name, path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                raise _row_error(name, path, line, "is not a JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get("file"), str):
                raise _row_error(name, path, line, 'has no "file" string')
            if not isinstance(row.get("caption"), str):
                raise _row_error(name, path, line, 'has no "caption" string')
            rows.append((line, row["file"], row["caption"]))
    return rows


def _read_csv(name, path):
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if line == 1 and [cell.strip().lower() for cell in row] == ["file", "caption"]:
                continue  # header
            if len(row) != 2 or not row[0].strip():
                raise _row_error(name, path, line, f"has {len(row)} field(s)")
            rows.append((line, row[0].strip(), row[1]))
    return rows


def _stamp(file):
    stat = os.stat(file)
    return (file, stat.st_size, stat.st_mtime_ns)


def _decode(contents):
    return tf.io.decode_image(contents, channels=3, expand_animations=False)


def _decodes(files):
    """Whether each file decodes; a parallel tf.data pass over the files not seen yet."""
    stamps = [_stamp(file) for file in files]
    unseen = sorted({stamp for stamp in stamps if stamp not in _DECODE_CHECKS})
    if unseen:
        paths = [stamp[0] for stamp in unseen]
        dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
        dataset = dataset.map(
            lambda i, path: (i, tf.shape(_decode(tf.io.read_file(path)))),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False,
        )
        # Elements whose decode raised are dropped: the missing indices are the bad files.
        good = {int(i) for i, _ in dataset.ignore_errors().as_numpy_iterator()}
        for position, stamp in enumerate(unseen):
            _DECODE_CHECKS[stamp] = position in good
    return [_DECODE_CHECKS[stamp] for stamp in stamps]


def resize_fn(image_size, crop):
    """uint8 (H, W, 3) -> uint8: centre square at `image_size`, or short side `image_size`."""

    def resize(image):
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        if crop == "center":
            side = tf.minimum(height, width)
            image = tf.image.crop_to_bounding_box(
                image, (height - side) // 2, (width - side) // 2, side, side
            )
            size = tf.constant([image_size, image_size])
        else:
            scale = image_size / tf.cast(tf.minimum(height, width), tf.float64)
            size = tf.stack(
                [
                    tf.maximum(
                        image_size, tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32)
                    ),
                    tf.maximum(
                        image_size, tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32)
                    ),
                ]
            )
        image = tf.image.resize(image, size, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    return resize


def augment_fn(image_size, crop, flip, seed):
    """`augment(image, index)`: the random crop and flip of the `index`-th served example.

    Stateless ops seeded by `(seed, index)`: the same sequence on every run, whatever
    the parallelism, and a resumed run that skips N batches serves what it would have.
    Returns None when there is nothing random to do.
    """
    if crop != "random" and not flip:
        return None

    def augment(image, index):
        index = tf.cast(index, tf.int64)
        if crop == "random":
            channels = tf.shape(image)[2]
            image = tf.image.stateless_random_crop(
                image,
                tf.stack([image_size, image_size, channels]),
                seed=tf.stack([tf.constant(seed, tf.int64), 2 * index]),
            )
            image = tf.ensure_shape(image, (image_size, image_size, None))
        if flip:
            image = tf.image.stateless_random_flip_left_right(
                image, seed=tf.stack([tf.constant(seed, tf.int64), 2 * index + 1])
            )
        return image

    return augment
