"""Caption metrics on kzoo_shapes: do a captioner's words name the shape and colour?

A captioner's own losses and token accuracy live with the model
(`kzoo.models.Captioner`); what is specific to the kzoo_shapes caption template
(which word is the shape, which its colour) lives here, beside the other metrics.
"""

import numpy as np
from keras import ops

from kzoo.data.shapes import COLORS, SHAPES


def caption_words(captions):
    """`(shape, colour)` words of each caption: the shape word and the word before it.

    Follows the kzoo_shapes template ("a {size} {colour} {shape} at ..."): the
    first word that names a shape, and the word just before it (the shape's colour;
    the background colour comes later). `None` where a caption names no shape.

    Args:
        captions: an iterable of `str` / `bytes`.

    Returns:
        A list of `(shape_word, colour_word)` pairs.
    """
    pairs = []
    for caption in captions:
        text = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        words = text.split()
        index = next((i for i, word in enumerate(words) if word in SHAPES), None)
        if index is None:
            pairs.append((None, None))
        else:
            pairs.append((words[index], words[index - 1] if index else None))
    return pairs


def word_accuracy(model, images, labels, batch_size=250, subsets=None):
    """Exact-match accuracy of the shape and colour words of greedy captions.

    Args:
        model: a `Captioner` trained on kzoo_shapes.
        images: float32 `(N, H, W, C)` in [-1, 1].
        labels: the label dict of `kzoo.data.load_arrays` (`"shape"` and `"color"`
            indices).
        batch_size: images per `caption` call.
        subsets: None, or `{name: bool array (N,)}`: each named subset of the images
            is scored too, from the same captions (e.g. the test images whose
            attribute combination never occurs in train).

    Returns:
        `{"shape_accuracy", "color_accuracy", "both_accuracy", "caption_exact_match"
        (when labels hold "caption"), "num_examples"}`, and for each subset `name`
        the same keys under `results[name]`; chance is 1/6 for shape and 1/8 for
        colour.

    Example:
    ```python
    images, labels = kzoo.data.load_arrays("kzoo_shapes", split="test", image_size=32)
    word_accuracy(model, images, labels)  # {"shape_accuracy": 0.93, ...}
    ```
    """
    captions = []
    for start in range(0, len(images), batch_size):
        captions.extend(
            ops.convert_to_numpy(model.caption(images[start : start + batch_size])).tolist()
        )
    predicted = caption_words(captions)
    hits = {
        "shape_accuracy": np.array(
            [p[0] == SHAPES[s] for p, s in zip(predicted, labels["shape"], strict=True)], bool
        ),
        "color_accuracy": np.array(
            [p[1] == COLORS[c] for p, c in zip(predicted, labels["color"], strict=True)], bool
        ),
    }
    hits["both_accuracy"] = hits["shape_accuracy"] & hits["color_accuracy"]
    if "caption" in labels:
        truth = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in labels["caption"]]
        got = [c.decode("utf-8") for c in captions]
        hits["caption_exact_match"] = np.array(
            [a == b for a, b in zip(got, truth, strict=True)], bool
        )

    def summary(mask):
        count = int(mask.sum())
        scores = {
            key: round(float(hit[mask].mean()), 4) if count else 0.0 for key, hit in hits.items()
        }
        return {**scores, "num_examples": count}

    results = summary(np.ones(len(captions), bool))
    for name, mask in (subsets or {}).items():
        mask = np.asarray(mask, bool).reshape(-1)
        if mask.shape != (len(captions),):
            raise ValueError(
                f"`subsets[{name!r}]` must be a bool array with one entry per image "
                f"({len(captions)}). Received: shape {mask.shape}"
            )
        results[name] = summary(mask)
    return results
