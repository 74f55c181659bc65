"""CLIP dual encoder: contrastive image-text embeddings trained with `fit` on raw captions.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", https://arxiv.org/abs/2103.00020, Sec. 2.3 and Fig. 3: each tower's
pooled output goes through a linear projection (no bias) and is l2-normalised;
`logits = exp(t) * I @ T^T` with a learnable temperature `t` initialised at
`log(1 / 0.07)` and clipped so the scale never exceeds 100 (`t <= log(100)`);
the loss is the mean of the image->text and text->image cross-entropies.

Two differences from the paper, both for small captioned datasets, and both
inactive (exactly CLIP's loss) with distinct captions and `word_dropout=0`:
captions identical after tokenization are all positives of each other (soft
targets spread evenly over them), and the optional word dropout shortens captions
during training, a shortened caption counting as a positive of every image whose
caption contains its words in order (see `caption_positives`).

The tokenizer (`kzoo.data.tokenizer.Tokenizer`) is part of the model, so `fit`,
`encode_text` and the exported `encode_text` signature take raw strings. It
needs the TensorFlow backend (strings); everything else is `keras.ops`.
"""

import math

import keras
import numpy as np
from keras import ops

from kzoo.layers._trainable import apply_trainable_flag
from kzoo.models.image_text import (
    ImageCaptionPairsMixin,
    build_image_encoder,
    is_host_strings,
    require_shape,
    unpack_pair,
)
from kzoo.models.text_encoder import TextEncoder
from kzoo.task import Task

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)
RECALL_AT = (1, 5)
_NORM_EPSILON = 1e-12
_ZERO_SHOT_BATCH = 256


def _tokenizer_module():
    # Imported on use: the tokenizer needs TensorFlow (tf.strings), which `kzoo.models`
    # does not import at module load.
    from kzoo.data import tokenizer

    return tokenizer


def l2_normalize(x, axis=-1):
    """`x / max(||x||, 1e-6)` in float32: a zero vector stays zero instead of NaN."""
    x = ops.cast(x, "float32")
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, _NORM_EPSILON))


def recall_at_k(logits, positives, k):
    """Fraction of rows whose best positive is among the `k` highest logits of the row.

    Ties count in the row's favour; rows are queries (images for image->text).

    Args:
        logits: `(Q, N)` scores.
        positives: `(Q, N)` bool, True where column `j` is a correct match of row `i`.
        k: the cut-off.

    Returns:
        A float32 scalar in [0, 1].
    """
    logits = ops.cast(logits, "float32")
    best_positive = ops.max(ops.where(positives, logits, -np.inf), axis=1, keepdims=True)
    better_negatives = ops.logical_and(logits > best_positive, ops.logical_not(positives))
    rank = ops.sum(ops.cast(better_negatives, "int32"), axis=1)  # negatives ranked above
    return ops.mean(ops.cast(rank < k, "float32"))


def contrastive_loss(
    logits, positives, negative_logits=None, negative_positives=None, image_targets=None
):
    """Symmetric InfoNCE (CLIP Fig. 3), with every positive of a row sharing its target mass.

    Args:
        logits: `(B, B)` scaled image->text similarities (rows: images).
        positives: `(B, B)` bool with a True diagonal.
        negative_logits: optional `(B, N)` similarities of the images with extra
            (hard negative) texts, added to the image->text softmax only.
        negative_positives: `(B, N)` bool, the extra texts that are in fact true of
            an image; required with `negative_logits`.
        image_targets: optional `(B, B)` bool, the texts each image should pick
            (a subset of `positives`; default `positives`). Positives outside it are
            left out of that image's softmax: true of the image, but not its own
            description (a shortened caption of another image, under word dropout).

    Returns:
        A float32 scalar: the mean of the image->text and text->image losses.
    """
    logits = ops.cast(logits, "float32")
    targets = ops.cast(positives, "float32")
    text_targets = ops.transpose(targets)
    text_targets = text_targets / ops.maximum(ops.sum(text_targets, axis=1, keepdims=True), 1.0)
    text_logits = ops.transpose(logits)
    if image_targets is not None:
        ignored = ops.logical_and(positives, ops.logical_not(image_targets))
        logits = ops.where(ignored, -1e9, logits)
        targets = ops.cast(image_targets, "float32")
    if negative_logits is not None:
        logits = ops.concatenate([logits, ops.cast(negative_logits, "float32")], axis=1)
        targets = ops.concatenate([targets, ops.cast(negative_positives, "float32")], axis=1)
    # A row without positives (never in training: the diagonal is True) gets no target.
    image_targets = targets / ops.maximum(ops.sum(targets, axis=1, keepdims=True), 1.0)
    image_loss = keras.losses.categorical_crossentropy(image_targets, logits, from_logits=True)
    text_loss = keras.losses.categorical_crossentropy(text_targets, text_logits, from_logits=True)
    return 0.5 * (ops.mean(image_loss) + ops.mean(text_loss))


@keras.saving.register_keras_serializable(package="kzoo")
class DualEncoder(ImageCaptionPairsMixin, Task):
    """CLIP: a text and an image tower projected into one l2-normalised embedding space.

    Trains with plain `fit` on a dataset of `(images, captions)` pairs, captions as
    raw `tf.string` (tokenized in the graph) or as int32 token ids; the loss is the
    symmetric contrastive loss and the progress bar shows in-batch retrieval
    recall (`i2t_recall@1`, `i2t_recall@5`, `t2i_recall@1`, `t2i_recall@5`) and the
    current `logit_scale` (`exp(t)`).

    `model((images, captions))` returns a dict: `logits` `(B_images, B_captions)`
    (the scaled cosine similarities), `image_embeddings`, `text_embeddings`
    `(B, embedding_dim)`, `caption_ids` `(B_captions, T)` (the tokenized captions)
    and `token_ids` (what the text tower saw: `caption_ids` after word dropout).

    Empty captions tokenize to padding only; their pooled text vector and their
    embedding are zero, so their similarity with every image is 0 (never NaN).
    Captions longer than the tokenizer's `sequence_length` are truncated.

    Args:
        text_encoder: a `TextEncoder` (or any model mapping token ids to a dict with
            `"pooled"`), or a dict of `TextEncoder` arguments whose
            `vocabulary_size` and `sequence_length` default to the tokenizer's.
        image_encoder: an `ImageEncoder` (or a model mapping images to a dict with
            `"pooled"` and an `image_shape`), or a dict of `ImageEncoder` arguments.
        tokenizer: a `kzoo.data.tokenizer.Tokenizer`, or a dict of its arguments
            (`{"vocabulary": "kzoo_shapes", "sequence_length": 16}`).
        embedding_dim: width of the shared embedding space.
        logit_scale_init: initial `t` (CLIP: `log(1 / 0.07)`).
        max_logit_scale: `t` is clipped at this value in the forward pass (CLIP:
            `log(100)`), so the scale never exceeds `exp(max_logit_scale)`.
        word_dropout: training-time caption augmentation: each caption drops each
            word with a rate drawn uniformly in `[0, word_dropout)` (0 disables).
            Captions of a small dataset are all full sentences; dropping words
            teaches the text tower the short prompts zero-shot classification uses.
        keep_full_captions: with `word_dropout > 0`, whether the text tower sees the
            whole captions too: the contrastive loss (and the progress-bar recall)
            then stays on the whole captions, and the shortened ones add a second
            contrastive loss of their own (one more text-tower pass per step).
            Without it the shortened captions replace the whole ones, which teaches
            short prompts but loses the fine-grained whole-caption retrieval.
        hard_negatives: training-time hard negatives: each caption also appears
            with one word swapped for the word at the same position in another
            caption (see `_swap_words`), as an extra negative text for its image.
            Makes the image tower encode every attribute of a caption.
        num_hard_negatives: swapped copies of each caption with `hard_negatives`
            (copy `j` takes its word from the caption `j` places before it in the
            batch, so the copies differ); each costs one text-tower pass per step.
        seed: seed of the word dropout and the word swaps.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    model = kzoo.models.DualEncoder(
        text_encoder={"hidden_dim": 64, "num_layers": 2},
        image_encoder={"image_shape": (32, 32, 3), "kind": "vit", "hidden_dim": 64},
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": 16},
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(kzoo.data.load("kzoo_shapes", batch_size=128, outputs=("image", "caption")))
    class_ids, probabilities = model.zero_shot(images, ["circle", "square", "ring"])
    ```
    """

    capabilities = frozenset({"embed"})

    def __init__(
        self,
        text_encoder,
        image_encoder,
        tokenizer,
        embedding_dim=64,
        logit_scale_init=DEFAULT_LOGIT_SCALE,
        max_logit_scale=MAX_LOGIT_SCALE,
        word_dropout=0.0,
        keep_full_captions=False,
        hard_negatives=False,
        num_hard_negatives=1,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "dual_encoder")
        super().__init__(**kwargs)
        if (
            isinstance(embedding_dim, bool)
            or not isinstance(embedding_dim, int)
            or (embedding_dim < 1)
        ):
            raise ValueError(
                "`embedding_dim` must be a positive integer. "
                f"Received: embedding_dim={embedding_dim!r}"
            )
        for name, value in (
            ("logit_scale_init", logit_scale_init),
            ("max_logit_scale", max_logit_scale),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
        if (
            isinstance(word_dropout, bool)
            or not isinstance(word_dropout, int | float)
            or not (0.0 <= word_dropout < 1.0)
        ):
            raise ValueError(
                f"`word_dropout` must be a float in [0, 1). Received: word_dropout={word_dropout!r}"
            )
        if not isinstance(keep_full_captions, bool):
            raise ValueError(
                "`keep_full_captions` must be a bool. "
                f"Received: keep_full_captions={keep_full_captions!r}"
            )
        if (
            isinstance(num_hard_negatives, bool)
            or not isinstance(num_hard_negatives, int)
            or num_hard_negatives < 1
        ):
            raise ValueError(
                "`num_hard_negatives` must be a positive integer. "
                f"Received: num_hard_negatives={num_hard_negatives!r}"
            )
        if logit_scale_init > max_logit_scale:
            raise ValueError(
                f"`logit_scale_init` must be <= `max_logit_scale`={max_logit_scale}. "
                f"Received: logit_scale_init={logit_scale_init!r}"
            )

        # === Layers ===
        self.tokenizer = _build_tokenizer(tokenizer)
        self.text_encoder = _build_text_encoder(text_encoder, self.tokenizer)
        self.image_encoder = build_image_encoder(image_encoder)
        self.text_projection = keras.layers.Dense(
            embedding_dim, use_bias=False, name="text_projection"
        )
        self.image_projection = keras.layers.Dense(
            embedding_dim, use_bias=False, name="image_projection"
        )
        self.text_projection.build((None, _pooled_width(self.text_encoder, "text_encoder")))
        self.image_projection.build((None, _pooled_width(self.image_encoder, "image_encoder")))
        self.logit_scale = self.add_weight(
            name="logit_scale",
            shape=(),
            initializer=keras.initializers.Constant(logit_scale_init),
            dtype="float32",
        )
        self.recall_trackers = {
            f"{direction}_recall@{k}": keras.metrics.Mean(name=f"{direction}_recall@{k}")
            for direction in ("i2t", "t2i")
            for k in RECALL_AT
        }
        self.logit_scale_tracker = keras.metrics.Mean(name="logit_scale")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

        # === Config ===
        self.embedding_dim = embedding_dim
        self.logit_scale_init = float(logit_scale_init)
        self.max_logit_scale = float(max_logit_scale)
        self.word_dropout = float(word_dropout)
        self.keep_full_captions = keep_full_captions
        self.hard_negatives = bool(hard_negatives)
        self.num_hard_negatives = num_hard_negatives
        self.seed = seed

    @property
    def image_shape(self):
        """`(height, width, channels)` of the images the image tower takes."""
        return tuple(self.image_encoder.image_shape)

    @property
    def sequence_length(self):
        return self.tokenizer.sequence_length

    # === Encoding ===
    def tokenize(self, captions):
        """int32 token ids `(B, T)` of a batch of strings (in the graph)."""
        return self.tokenizer(captions)

    def scale(self):
        """The current logit scale `exp(min(t, max_logit_scale))`, a float32 scalar."""
        return ops.exp(ops.minimum(ops.cast(self.logit_scale, "float32"), self.max_logit_scale))

    def _logits(self, image_embeddings, text_embeddings):
        """Scaled cosine similarities `(images, texts)` of unit embeddings."""
        return self.scale() * ops.matmul(image_embeddings, ops.transpose(text_embeddings))

    def encode_tokens(self, token_ids, training=False):
        """l2-normalised float32 text embeddings `(B, embedding_dim)` of token ids `(B, T)`."""
        pooled = self.text_encoder(token_ids, training=training)["pooled"]
        return l2_normalize(self.text_projection(pooled))

    def encode_text(self, captions, training=False):
        """l2-normalised float32 embeddings `(B, embedding_dim)` of raw strings `(B,)`.

        Empty strings embed to the zero vector; long captions are truncated to the
        tokenizer's `sequence_length`.
        """
        return self.encode_tokens(self._token_ids(captions), training=training)

    def encode_image(self, images, training=False):
        """l2-normalised float32 embeddings `(B, embedding_dim)` of images in [-1, 1]."""
        pooled = self.image_encoder(images, training=training)["pooled"]
        return l2_normalize(self.image_projection(pooled))

    def _token_ids(self, captions):
        if is_host_strings(captions):
            return self.tokenizer(captions)
        dtype = keras.backend.standardize_dtype(captions.dtype)
        if dtype == "string":
            return self.tokenizer(captions)
        if "int" not in dtype:
            raise ValueError(
                f"`captions` must be strings or integer token ids. Received: captions.dtype={dtype}"
            )
        return ops.cast(captions, "int32")

    # === Forward ===
    def __call__(self, inputs, *args, **kwargs):
        # Keras takes only tensors positionally: tokenize Python / NumPy strings first.
        images, captions = unpack_pair(
            inputs, "DualEncoder", "`encode_image` or `encode_text` for one modality"
        )
        if is_host_strings(captions):
            inputs = (images, self.tokenizer(captions))
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        images, captions = unpack_pair(
            inputs, "DualEncoder", "`encode_image` or `encode_text` for one modality"
        )
        caption_ids = self._token_ids(captions)
        token_ids = shortened_ids = caption_ids
        if training and self.word_dropout > 0:
            shortened_ids = self._drop_words(caption_ids)
            if not self.keep_full_captions:
                token_ids = shortened_ids
        image_embeddings = self.encode_image(images, training=training)
        text_embeddings = self.encode_tokens(token_ids, training=training)
        logits = self._logits(image_embeddings, text_embeddings)
        outputs = {
            "logits": logits,
            "image_embeddings": image_embeddings,
            "text_embeddings": text_embeddings,
            "token_ids": token_ids,
            "caption_ids": caption_ids,
        }
        if training and self.word_dropout > 0 and self.keep_full_captions:
            shortened = self.encode_tokens(shortened_ids, training=training)
            outputs["shortened_ids"] = shortened_ids
            outputs["shortened_logits"] = self._logits(image_embeddings, shortened)
        if training and self.hard_negatives:
            negative_ids = ops.concatenate(
                [
                    self._swap_words(caption_ids, shift)
                    for shift in range(1, 1 + self.num_hard_negatives)
                ],
                axis=0,
            )  # (num_hard_negatives * B, T)
            negatives = self.encode_tokens(negative_ids, training=training)
            outputs["negative_ids"] = negative_ids
            outputs["negative_logits"] = self._logits(image_embeddings, negatives)
        return outputs

    def _swap_words(self, caption_ids, shift=1):
        """Hard negative captions: one word swapped for the word at the same position in
        another caption of the batch (NegCLIP-style, Yuksekgonul et al. 2023,
        https://arxiv.org/abs/2210.01936).

        Captions that share a template ("a {size} {color} {shape} at ...") then
        differ in exactly one attribute, so an image must tell apart every
        attribute, not only the few that already make its caption unique in the
        batch. A caption with no differing word to take stays unchanged (and counts
        as a positive).
        """
        shape = ops.shape(caption_ids)
        donor = ops.roll(caption_ids, shift, axis=0)  # another caption of the shuffled batch
        candidates = ops.logical_and(
            ops.logical_and(ops.not_equal(caption_ids, 0), ops.not_equal(donor, 0)),
            ops.not_equal(donor, caption_ids),
        )
        scores = ops.where(candidates, keras.random.uniform(shape, seed=self.seed_generator), -1.0)
        position = ops.argmax(scores, axis=1)  # training only: never exported
        swap = ops.logical_and(ops.cast(ops.one_hot(position, shape[1]), "bool"), candidates)
        return ops.where(swap, donor, caption_ids)

    def _drop_words(self, token_ids):
        """Random word dropout: each caption loses each word with its own rate in [0, max).

        The rate is drawn per caption, uniformly in `[0, word_dropout)`, so training
        sees whole captions as well as short partial ones ("a red circle"), which
        is what zero-shot prompts look like. Kept words move to the front (so
        positions match a naturally short caption); a caption never loses all
        its words.
        """
        shape = ops.shape(token_ids)
        real = ops.not_equal(token_ids, 0)
        rate = keras.random.uniform(
            (shape[0], 1), maxval=self.word_dropout, seed=self.seed_generator
        )
        keep = ops.logical_and(real, keras.random.uniform(shape, seed=self.seed_generator) >= rate)
        keep = ops.where(ops.any(keep, axis=1, keepdims=True), keep, real)
        positions = ops.arange(shape[1])[None, :]
        order = ops.argsort(ops.where(keep, positions, positions + shape[1]), axis=1)
        kept = ops.where(keep, token_ids, ops.zeros_like(token_ids))
        return ops.take_along_axis(kept, order, axis=1)

    # === Training ===
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        positives = caption_positives(y_pred["caption_ids"], y_pred["token_ids"])
        negative_logits = negative_positives = None
        if "negative_logits" in y_pred:
            negative_logits = y_pred["negative_logits"]
            negative_positives = identical_rows(y_pred["caption_ids"], y_pred["negative_ids"])
        # An image's own texts: those cut from a caption identical to its own.
        same_caption = identical_rows(y_pred["caption_ids"], y_pred["caption_ids"])
        image_targets = ops.logical_and(positives, same_caption)
        loss = contrastive_loss(
            y_pred["logits"], positives, negative_logits, negative_positives, image_targets
        )
        if "shortened_logits" in y_pred:  # keep_full_captions: a loss of their own
            shortened = caption_positives(y_pred["caption_ids"], y_pred["shortened_ids"])
            loss = loss + contrastive_loss(
                y_pred["shortened_logits"],
                shortened,
                image_targets=ops.logical_and(shortened, same_caption),
            )
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), loss.dtype)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logits = ops.cast(y_pred["logits"], "float32")
        positives = caption_positives(y_pred["caption_ids"], y_pred["token_ids"])
        for k in RECALL_AT:
            self.recall_trackers[f"i2t_recall@{k}"].update_state(recall_at_k(logits, positives, k))
            self.recall_trackers[f"t2i_recall@{k}"].update_state(
                recall_at_k(ops.transpose(logits), ops.transpose(positives), k)
            )
        self.logit_scale_tracker.update_state(self.scale())
        return self.get_metrics_result()

    # === Zero-shot classification ===
    def class_embeddings(self, class_names, templates=("a {}",)):
        """One normalised text embedding per class: the renormalised mean over templates.

        CLIP's prompt ensembling (Sec. 3.1.4). See `zero_shot` for the arguments.

        Returns:
            float32 numpy `(num_classes, embedding_dim)`.
        """
        class_names, templates = self._check_zero_shot_args(class_names, templates)
        prompts = [template.format(name) for name in class_names for template in templates]
        embeddings = ops.convert_to_numpy(self.encode_text(prompts))
        embeddings = embeddings.reshape(len(class_names), len(templates), -1).mean(axis=1)
        return ops.convert_to_numpy(l2_normalize(embeddings))

    def zero_shot(self, images, class_names, templates=("a {}",), batch_size=_ZERO_SHOT_BATCH):
        """Classifies images by the class whose prompt embeddings they are closest to.

        Args:
            images: float32 `(N, H, W, C)` images in [-1, 1] (numpy or tensor).
            class_names: a non-empty list of class names, e.g. `["circle", "ring"]`.
                Every name needs at least one word in the tokenizer's vocabulary
                (a name of unknown words only would tokenize to `[UNK]`s and could
                not be told apart from another such name).
            templates: prompt templates, each with one `{}` for the class name;
                the class embedding averages them (prompt ensembling).
            batch_size: images per forward pass.

        Returns:
            `(class_ids, probabilities)`: int64 numpy `(N,)` indices into
            `class_names`, and float32 numpy `(N, num_classes)`, the softmax of the
            scaled similarities.

        Raises:
            ValueError: empty or malformed `class_names` / `templates`, or a class
                name with no known word.

        Example:
        ```python
        ids, probs = model.zero_shot(images, list(kzoo.data.SHAPES), templates=("a {}",))
        ```
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
            )
        text = self.class_embeddings(class_names, templates)  # (C, E)
        images = ops.convert_to_numpy(images) if not isinstance(images, np.ndarray) else images
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"`images` must have shape (N, {', '.join(map(str, self.image_shape))}). "
                f"Received: images.shape={images.shape}"
            )
        image_embeddings = [
            ops.convert_to_numpy(self.encode_image(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        if image_embeddings:
            image_embeddings = np.concatenate(image_embeddings)
        else:
            image_embeddings = np.zeros((0, text.shape[1]), np.float32)
        logits = float(ops.convert_to_numpy(self.scale())) * image_embeddings @ text.T
        logits = logits - logits.max(axis=1, keepdims=True, initial=-np.inf)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return probabilities.argmax(axis=1).astype(np.int64), probabilities.astype(np.float32)

    def _check_zero_shot_args(self, class_names, templates):
        if isinstance(class_names, str) or not isinstance(class_names, list | tuple):
            raise ValueError(
                "`class_names` must be a non-empty list of strings. "
                f"Received: class_names={class_names!r}"
            )
        class_names = list(class_names)
        if not class_names or not all(isinstance(n, str) and n.strip() for n in class_names):
            raise ValueError(
                "`class_names` must be a non-empty list of non-empty strings. "
                f"Received: class_names={class_names!r}"
            )
        if isinstance(templates, str):
            templates = (templates,)
        templates = list(templates)
        bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
        if not templates or bad:
            raise ValueError(
                "`templates` must be a non-empty list of strings with exactly one '{}'. "
                f"Received: templates={templates!r}"
            )
        ids = ops.convert_to_numpy(self.tokenizer(class_names))
        unknown = [
            name
            for name, row in zip(class_names, ids, strict=True)
            if not np.any(row > _tokenizer_module().EOS_ID)
        ]
        if unknown:
            raise ValueError(
                "Every class name needs at least one word of the tokenizer's vocabulary; "
                f"these have none (they would all embed alike). Received: class names {unknown!r}"
            )
        return class_names, templates

    # === Export ===
    def export_endpoints(self):
        """Serving signatures for retrieval, all on raw inputs.

        - `serving_default` = `encode_image`: float32 `images` `(None, H, W, C)` in
          [-1, 1] -> `embeddings` `(None, embedding_dim)`; other image sizes or
          channel counts fail with `InvalidArgumentError` "Shape of tensor images
          [1,32,32,3] is not compatible with expected shape [?,16,16,3]" (TF Serving
          answers the request with that error).
        - `encode_text`: `tf.string` `text` `(None,)` -> `embeddings`; empty strings
          give zero vectors, long captions are truncated.
        - `similarity`: `images` and `text` -> `similarity` (cosine, `(B_images,
          B_text)`) and `probabilities` (softmax of the scaled similarities over the
          texts: zero-shot classification with one prompt per class).

        LiteRT has no string ops: use `litert_exportable()` for the LiteRT files.
        """
        image_spec = keras.InputSpec(
            shape=(None, *self.image_shape), dtype="float32", name="images"
        )
        text_spec = keras.InputSpec(shape=(None,), dtype="string", name="text")
        # A SavedModel signature checks dtypes but not shapes: check them in the graph.
        image_shape = (None, *self.image_shape)

        def encode_image(images):
            images = require_shape(images, image_shape)
            return {"embeddings": self.encode_image(images)}

        def encode_text(text):
            text = require_shape(text, (None,))
            return {"embeddings": self.encode_text(text)}

        def similarity(images, text):
            images = require_shape(images, image_shape)
            text = require_shape(text, (None,))
            cosine = ops.matmul(self.encode_image(images), ops.transpose(self.encode_text(text)))
            probabilities = ops.softmax(self.scale() * cosine, axis=-1)
            return {"similarity": cosine, "probabilities": probabilities}

        return {
            "serving_default": (encode_image, [image_spec]),
            "encode_image": (encode_image, [image_spec]),
            "encode_text": (encode_text, [text_spec]),
            "similarity": (similarity, [image_spec, text_spec]),
        }

    def export_png_endpoints(self):
        """`encode_image_png`: `encode_image` on `image_bytes` (PNG/JPEG, any size;
        SavedModel only, `kzoo.export.image_bytes`)."""
        return {"encode_image_png": "encode_image"}

    def export_parity_batch(self):
        """Parity inputs for the string endpoints: captions, an empty and an over-long one."""
        text = np.array(
            [
                "a small red circle at the top left on a blue background",
                "",
                "A LARGE cyan ring, at the center on a gray background!",
                " ".join(["a large white square"] * 10),
            ],
            dtype=np.bytes_,  # bytes load without pickling in the parity runner
        )
        images = np.random.default_rng(0).uniform(-1, 1, (4, *self.image_shape)).astype("float32")
        return {"encode_text": {"text": text}, "similarity": {"images": images, "text": text}}

    def litert_exportable(self):
        """A view of this model whose endpoints take token ids instead of strings, for LiteRT.

        LiteRT has no builtin string ops, so the LiteRT text encoder takes int32
        `token_ids` `(None, sequence_length)` (tokenize with `model.tokenize` or
        `Tokenizer` on the host); the image encoder is the same as the SavedModel's.
        Endpoints: `serving_default` = `encode_image` (`images` -> `embeddings`) and
        `encode_text` (`token_ids` -> `embeddings`). The view shares this model's
        weights.

        Example:
        ```python
        from kzoo.export import export_all
        saved = export_all(model, "exported", formats=("saved_model",))["saved_model"]
        export_all(model.litert_exportable(), "exported", name=saved.name,
                   formats=("litert",), version=saved.version)
        ```
        """
        return DualEncoderTokenEndpoints(self)

    # === Config ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "embedding_dim": self.embedding_dim,
            "logit_scale_init": self.logit_scale_init,
            "max_logit_scale": self.max_logit_scale,
            "word_dropout": self.word_dropout,
            "keep_full_captions": self.keep_full_captions,
            "hard_negatives": self.hard_negatives,
            "num_hard_negatives": self.num_hard_negatives,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        _tokenizer_module()  # registers kzoo>Tokenizer for deserialization
        config = dict(config)
        for key in ("text_encoder", "image_encoder", "tokenizer"):
            if isinstance(config[key], dict) and "class_name" in config[key]:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


class DualEncoderTokenEndpoints(keras.layers.Layer):
    """Token-id endpoints of a `DualEncoder` for LiteRT (see `DualEncoder.litert_exportable`)."""

    def __init__(self, dual_encoder, **kwargs):
        kwargs.setdefault("name", dual_encoder.name)
        super().__init__(**kwargs)
        self.dual_encoder = dual_encoder
        self.built = True

    def call(self, images):
        return self.dual_encoder.encode_image(images)

    def export_endpoints(self):
        model = self.dual_encoder
        image_spec = keras.InputSpec(
            shape=(None, *model.image_shape), dtype="float32", name="images"
        )
        token_spec = keras.InputSpec(
            shape=(None, model.sequence_length), dtype="int32", name="token_ids"
        )

        def encode_image(images):
            return {"embeddings": model.encode_image(images)}

        def encode_text(token_ids):
            return {"embeddings": model.encode_tokens(token_ids)}

        return {
            "serving_default": (encode_image, [image_spec]),
            "encode_image": (encode_image, [image_spec]),
            "encode_text": (encode_text, [token_spec]),
        }

    def export_parity_batch(self):
        model = self.dual_encoder
        text = model.export_parity_batch()["encode_text"]["text"]
        return {"encode_text": {"token_ids": ops.convert_to_numpy(model.tokenize(text))}}


def identical_rows(caption_ids, text_ids):
    """`(B_captions, B_texts)` bool: caption `i` and text `j` have the same token ids."""
    captions = ops.cast(caption_ids, "int32")
    texts = ops.cast(text_ids, "int32")
    return ops.all(ops.equal(captions[:, None, :], texts[None, :, :]), axis=-1)


def caption_positives(caption_ids, text_ids):
    """`(B, B)` bool: text `j` describes image `i` (whose own caption is `caption_ids[i]`).

    A text that kept its whole caption matches the images with an identical
    caption. A text that lost words to word dropout matches every image whose
    caption contains its remaining words in the same order ("a circle" matches
    every circle): a shorter description is true of more images, and counting
    those as negatives would teach the towers to contradict the captions.

    Args:
        caption_ids: int `(B, T)` token ids of each image's full caption.
        text_ids: int `(B, T)` token ids fed to the text tower (a subsequence of
            `caption_ids` row by row, padded with 0 on the right).

    Returns:
        A bool tensor `(B_images, B_texts)` with a True diagonal.
    """
    captions = ops.cast(caption_ids, "int32")
    texts = ops.cast(text_ids, "int32")
    length = captions.shape[1] if captions.shape[1] is not None else ops.shape(captions)[1]
    identical = identical_rows(captions, texts)
    shortened = ops.any(ops.not_equal(captions, texts), axis=-1)  # (B,) text j lost words
    # Greedy in-order matching of each text's words in each caption: `cursor[i, j]` is
    # the caption position after the last matched word (`length + 1` once one is missing).
    positions = ops.arange(length)[None, None, :]  # (1, 1, T)
    batch = ops.shape(captions)[0]
    cursor = ops.zeros((batch, batch), "int32")
    for t in range(texts.shape[1]):
        word = texts[None, :, t : t + 1]  # (1, B_texts, 1)
        found = ops.logical_and(
            ops.equal(captions[:, None, :], word), positions >= cursor[..., None]
        )  # (B_images, B_texts, T)
        first = ops.min(ops.where(found, positions, length + 1), axis=-1)
        cursor = ops.where(ops.equal(word[..., 0], 0), cursor, ops.minimum(first + 1, length + 1))
    contained = cursor <= length
    return ops.where(shortened[None, :], contained, identical)


def _build_tokenizer(tokenizer):
    module = _tokenizer_module()
    if isinstance(tokenizer, module.Tokenizer):
        return tokenizer
    if isinstance(tokenizer, dict):
        if "class_name" in tokenizer:
            return keras.saving.deserialize_keras_object(tokenizer)
        return module.Tokenizer(**tokenizer)
    raise ValueError(
        "`tokenizer` must be a kzoo Tokenizer or a dict of its arguments "
        f"(e.g. {{'vocabulary': 'kzoo_shapes'}}). Received: tokenizer={tokenizer!r}"
    )


def _build_text_encoder(text_encoder, tokenizer):
    if isinstance(text_encoder, dict):
        args = {
            "vocabulary_size": tokenizer.vocabulary_size,
            "sequence_length": tokenizer.sequence_length,
            **text_encoder,
        }
        text_encoder = TextEncoder(**args)
    if not isinstance(text_encoder, keras.Model):
        raise ValueError(
            "`text_encoder` must be a TextEncoder (a keras.Model) or a dict of its "
            f"arguments. Received: text_encoder={text_encoder!r}"
        )
    tokenizer.check_encoder(text_encoder)
    return apply_trainable_flag(text_encoder)


def _pooled_width(encoder, name):
    outputs = encoder.outputs if encoder.outputs else None
    if isinstance(encoder.output, dict) and "pooled" in encoder.output:
        return encoder.output["pooled"].shape[-1]
    raise ValueError(
        f"`{name}` must output a dict with a 'pooled' (B, D) entry. "
        f"Received: {name} outputs={outputs!r}"
    )
