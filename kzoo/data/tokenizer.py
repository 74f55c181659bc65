"""A word-level tokenizer that runs inside the TensorFlow graph (tf.data, `fit`, SavedModel).

Raw strings go in, int32 token ids come out, with no Python between: lowercasing
and punctuation stripping are `tf.strings` ops and the word lookup is a Keras
`StringLookup` table, so the tokenizer is saved with the model that holds it and
runs in a TF Serving signature taking a `tf.string` batch. `detokenize` turns ids
back into strings, in the graph too (for a captioner's `caption` endpoint).

Token ids (fixed, whatever the vocabulary):

| id | token   | use                                                   |
|----|---------|-------------------------------------------------------|
| 0  | `[PAD]` | padding; encoders mask it out                         |
| 1  | `[UNK]` | any word not in the vocabulary                        |
| 2  | `[BOS]` | start of sequence (a captioner's first decoder input) |
| 3  | `[EOS]` | end of sequence (a captioner's stop token)            |
| 4+ | words   | the vocabulary, in the order given                    |

Standardization: Unicode lowercasing, then every ASCII punctuation character
becomes a space (so "circle,square" is two words and "[bos]" typed by a user is
the word "bos", never the special token), then a split on whitespace.

Length: every output row has exactly `sequence_length` ids. Captions with more
words are truncated, keeping the first words (and the `[BOS]`/`[EOS]` requested,
which always fit: words are cut to make room for them); shorter ones are padded
with `[PAD]` on the right. An empty (or all-punctuation) string gives a row of
padding only (plus `[BOS]`/`[EOS]` if requested); `TextEncoder` pools such a row
to the zero vector (see `kzoo.models.TextEncoder`).
"""

import keras
import tensorflow as tf

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
# RE2 class of the 32 ASCII punctuation characters, replaced by spaces.
_PUNCTUATION = r"[[:punct:]]"


def standardize(strings):
    """Lowercases (Unicode) and turns ASCII punctuation into spaces, in the graph.

    Args:
        strings: a `tf.string` tensor of any shape.

    Returns:
        A `tf.string` tensor of the same shape.

    Example:
    >>> standardize(tf.constant(["A Red, circle!"])).numpy()
    array([b'a red  circle '], dtype=object)
    """
    return tf.strings.regex_replace(tf.strings.lower(strings, encoding="utf-8"), _PUNCTUATION, " ")


def build_vocabulary(captions, max_words=None, min_count=1):
    """Builds a word list from captions with the tokenizer's own standardization.

    Words are ordered by decreasing count, ties alphabetically, so the result is
    deterministic.

    Args:
        captions: an iterable of strings (or a `tf.string` tensor / dataset batch).
        max_words: keep at most this many words (the most frequent); None keeps all.
        min_count: drop words seen fewer times.

    Returns:
        A list of words (special tokens excluded).

    Example:
    >>> build_vocabulary(["a red circle", "A blue circle."])
    ['a', 'circle', 'blue', 'red']
    """
    if max_words is not None and (
        isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1
    ):
        raise ValueError(
            f"`max_words` must be None or a positive integer. Received: max_words={max_words!r}"
        )
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(
            f"`min_count` must be a positive integer. Received: min_count={min_count!r}"
        )
    strings = tf.reshape(tf.convert_to_tensor(_as_string_list(captions), tf.string), [-1])
    words = tf.strings.split(standardize(strings)).flat_values
    unique, _, counts = tf.unique_with_counts(words)
    pairs = [
        (word.decode("utf-8"), int(count))
        for word, count in zip(unique.numpy(), counts.numpy(), strict=True)
        if count >= min_count
    ]
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    vocabulary = [word for word, _ in pairs]
    return vocabulary if max_words is None else vocabulary[:max_words]


def shapes_vocabulary():
    """Every word a `kzoo_shapes` caption can contain, in a fixed order.

    Built from `kzoo.data.shapes.make_caption` over every value of every factor,
    so it follows the caption template.

    Returns:
        A list of words (29 for the current template).
    """
    from kzoo.data import shapes

    sizes = {
        "shape": len(shapes.SHAPES),
        "color": len(shapes.COLORS),
        "size": len(shapes.SIZES),
        "position": len(shapes.POSITIONS),
        "background": len(shapes.BACKGROUNDS),
    }
    captions = []
    for factor, count in sizes.items():
        for index in range(count):
            factors = dict.fromkeys(sizes, 0)
            factors[factor] = index
            captions.append(shapes.make_caption(**factors))
    # Order by first appearance, which is stable under changes of frequency.
    words = tf.strings.split(standardize(tf.constant(captions))).flat_values.numpy()
    return list(dict.fromkeys(word.decode("utf-8") for word in words))


@keras.saving.register_keras_serializable(package="kzoo")
class Tokenizer(keras.layers.Layer):
    """In-graph word tokenizer: `tf.string` `(B,)` -> int32 ids `(B, sequence_length)`.

    See the module docstring for the id layout, standardization, truncation and
    empty strings. The vocabulary is part of `get_config`, so a model holding a
    tokenizer saves and reloads it (`.keras`), and an exported signature embeds
    the lookup table.

    Args:
        vocabulary: a list of words (special tokens are added in front and must
            not appear in it), or `"kzoo_shapes"` for `shapes_vocabulary()`.
        sequence_length: ids per row, an int >= 1 (>= 3 when both `add_bos` and
            `add_eos`).
        add_bos: `call` starts each row with `[BOS]`.
        add_eos: `call` ends each row's words with `[EOS]`.
        **kwargs: base layer arguments.

    `call(strings)` takes a `tf.string` tensor `(B,)` (or a list of Python
    strings) and returns int32 `(B, sequence_length)`.

    Example:
    ```python
    tokenizer = Tokenizer.from_shapes_vocabulary(sequence_length=16)  # kzoo.data.tokenizer
    ids = tokenizer(tf.constant(["a small red circle at the top left on a blue background"]))
    tokenizer.detokenize(ids)  # [b"a small red circle at the top left on a blue background"]
    dataset = dataset.map(lambda images, captions: (images, tokenizer(captions)))
    ```
    """

    def __init__(self, vocabulary, sequence_length=16, add_bos=False, add_eos=False, **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        if isinstance(vocabulary, str):
            if vocabulary != "kzoo_shapes":
                raise ValueError(
                    "`vocabulary` must be a list of words or the name 'kzoo_shapes'. "
                    f"Received: vocabulary={vocabulary!r}"
                )
            vocabulary = shapes_vocabulary()
        vocabulary = _check_vocabulary(vocabulary)
        minimum = 1 + bool(add_bos) + bool(add_eos)
        if (
            isinstance(sequence_length, bool)
            or not isinstance(sequence_length, int)
            or (sequence_length < minimum)
        ):
            raise ValueError(
                f"`sequence_length` must be an integer >= {minimum} (room for one word and "
                f"the requested [BOS]/[EOS]). Received: sequence_length={sequence_length!r}"
            )
        self.vocabulary = vocabulary
        self.sequence_length = sequence_length
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        # Strings cannot be XLA-compiled; this also makes `fit` fall back to
        # jit_compile=False for any model holding a tokenizer.
        self.supports_jit = False
        self.lookup = keras.layers.StringLookup(
            vocabulary=[BOS, EOS, *vocabulary],
            mask_token=PAD,
            oov_token=UNK,
            output_mode="int",
            name="lookup",
        )
        self.lookup.build((None,))
        self.built = True

    # === Construction helpers ===
    @classmethod
    def from_captions(cls, captions, sequence_length=16, max_words=None, min_count=1, **kwargs):
        """A tokenizer whose vocabulary is `build_vocabulary(captions, ...)`."""
        vocabulary = build_vocabulary(captions, max_words=max_words, min_count=min_count)
        return cls(vocabulary, sequence_length=sequence_length, **kwargs)

    @classmethod
    def from_shapes_vocabulary(cls, sequence_length=16, **kwargs):
        """A tokenizer covering every `kzoo_shapes` caption (no `[UNK]` on that data)."""
        return cls(shapes_vocabulary(), sequence_length=sequence_length, **kwargs)

    # === Properties ===
    @property
    def vocabulary_size(self):
        """Number of ids, special tokens included (the `TextEncoder` embedding rows)."""
        return len(SPECIAL_TOKENS) + len(self.vocabulary)

    def check_encoder(self, text_encoder):
        """Raises unless `text_encoder` can read this tokenizer's ids.

        A text encoder that declares `vocabulary_size` must embed every id this
        tokenizer emits, and one that declares `sequence_length` must take as many
        tokens as it emits. Encoders that declare neither are taken as they are.
        """
        vocabulary_size = getattr(text_encoder, "vocabulary_size", None)
        if vocabulary_size is not None and vocabulary_size < self.vocabulary_size:
            raise ValueError(
                f"The text encoder has {vocabulary_size} token embeddings but the tokenizer "
                f"emits {self.vocabulary_size} ids. Received: "
                f"text_encoder.vocabulary_size={vocabulary_size}"
            )
        length = getattr(text_encoder, "sequence_length", None)
        if length is not None and length != self.sequence_length:
            raise ValueError(
                f"The text encoder takes {length} tokens but the tokenizer emits "
                f"{self.sequence_length}. Received: text_encoder.sequence_length={length}"
            )

    def get_vocabulary(self):
        """All tokens in id order, special tokens first."""
        return [*SPECIAL_TOKENS, *self.vocabulary]

    # === Forward ===
    def __call__(self, strings, *args, **kwargs):
        # Keras only takes tensors positionally; accept lists of Python strings too.
        if not isinstance(strings, keras.KerasTensor):
            strings = _check_strings(strings)
        return super().__call__(strings, *args, **kwargs)

    def call(self, strings):
        return self.tokenize(strings)

    def tokenize(self, strings, add_bos=None, add_eos=None):
        """Token ids of a batch of strings (graph-safe; see the module docstring).

        Args:
            strings: `tf.string` `(B,)`, or a list of Python strings.
            add_bos: override the constructor's `add_bos` for this call.
            add_eos: override the constructor's `add_eos` for this call.

        Returns:
            int32 `(B, sequence_length)`.
        """
        add_bos = self.add_bos if add_bos is None else bool(add_bos)
        add_eos = self.add_eos if add_eos is None else bool(add_eos)
        strings = _check_strings(strings)
        words = tf.strings.split(standardize(strings))  # ragged (B, None)
        ids = tf.cast(self.lookup(words), tf.int32)
        room = self.sequence_length - add_bos - add_eos
        ids = ids[:, :room]
        batch = tf.shape(strings)[0]
        if add_bos:
            ids = tf.concat([tf.fill([batch, 1], BOS_ID), ids], axis=1)
        if add_eos:
            ids = tf.concat([ids, tf.fill([batch, 1], EOS_ID)], axis=1)
        return ids.to_tensor(default_value=PAD_ID, shape=[None, self.sequence_length])

    def detokenize(self, ids):
        """Strings from token ids, in the graph: words joined by single spaces.

        `[PAD]` and `[BOS]` are dropped, everything from the first `[EOS]` on is
        dropped, and ids outside the vocabulary become `[UNK]`.

        Args:
            ids: integer `(B, T)` token ids.

        Returns:
            `tf.string` `(B,)`.

        Example:
        ```python
        tokenizer.detokenize([[2, 4, 5, 3, 0]])  # [b"a small"] with the shapes vocabulary
        ```
        """
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise ValueError(
                f"`ids` must be integer token ids. Received: ids.dtype={ids.dtype.name}"
            )
        if ids.shape.rank is not None and ids.shape.rank != 2:
            raise ValueError(
                f"`ids` must have shape (batch, length). Received: ids.shape={ids.shape}"
            )
        ids = tf.cast(ids, tf.int32)
        in_range = (ids >= 0) & (ids < self.vocabulary_size)
        ids = tf.where(in_range, ids, UNK_ID)
        tokens = tf.gather(tf.constant(self.get_vocabulary()), ids)
        before_eos = tf.cumsum(tf.cast(ids == EOS_ID, tf.int32), axis=1) == 0
        keep = before_eos & (ids != PAD_ID) & (ids != BOS_ID)
        return tf.strings.reduce_join(tf.ragged.boolean_mask(tokens, keep), axis=-1, separator=" ")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.sequence_length)

    def compute_output_spec(self, strings):
        return keras.KerasTensor((strings.shape[0], self.sequence_length), dtype="int32")

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary": list(self.vocabulary),
                "sequence_length": self.sequence_length,
                "add_bos": self.add_bos,
                "add_eos": self.add_eos,
            }
        )
        return config


def _as_string_list(captions):
    if isinstance(captions, str | bytes):
        return [captions]
    if isinstance(captions, tf.Tensor):
        return captions
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions]


def _check_vocabulary(vocabulary):
    if not isinstance(vocabulary, list | tuple) or not vocabulary:
        raise ValueError(
            f"`vocabulary` must be a non-empty list of words. Received: vocabulary={vocabulary!r}"
        )
    words = [w.decode("utf-8") if isinstance(w, bytes) else w for w in vocabulary]
    bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip() or " " in w]
    if bad:
        raise ValueError(
            "`vocabulary` entries must be non-empty strings without whitespace. "
            f"Received: vocabulary entries {bad[:5]!r}"
        )
    special = [w for w in words if w in SPECIAL_TOKENS]
    if special:
        raise ValueError(
            f"`vocabulary` must not contain the special tokens {SPECIAL_TOKENS} (they are "
            f"added in front). Received: vocabulary with {special!r}"
        )
    if len(set(words)) != len(words):
        duplicates = sorted({w for w in words if words.count(w) > 1})
        raise ValueError(
            f"`vocabulary` entries must be unique. Received: duplicates {duplicates[:5]!r}"
        )
    return words


def _check_strings(strings):
    if isinstance(strings, str | bytes):
        raise ValueError(
            "`strings` must be a batch of strings, shape (batch,); wrap one string in a "
            f"list. Received: strings={strings!r}"
        )
    if not isinstance(strings, tf.Tensor | tf.RaggedTensor):
        strings = tf.convert_to_tensor(strings if len(strings) else tf.zeros([0], tf.string))
    if strings.dtype != tf.string:
        raise ValueError(
            f"`strings` must be a tf.string tensor. Received: strings.dtype={strings.dtype.name}"
        )
    if strings.shape.rank is not None and strings.shape.rank != 1:
        raise ValueError(
            f"`strings` must have shape (batch,). Received: strings.shape={strings.shape}"
        )
    return strings
