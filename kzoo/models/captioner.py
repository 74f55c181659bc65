"""Image captioner: an image encoder and a causal transformer decoder with cross-attention.

The encoder-decoder of "Show, Attend and Tell" (Xu et al. 2015,
https://arxiv.org/abs/1502.03044) with the transformer decoder of Vaswani et al.
2017 (https://arxiv.org/abs/1706.03762, Sec. 3.1): each decoder block runs causal
self-attention over the caption so far, cross-attention over the image tokens
(`ImageEncoder`'s `sequence`) and an MLP, all pre-LN (`TransformerBlock(causal=True,
cross_attention=True)`). Trained with teacher forcing: the decoder reads `[BOS] w1
.. wn` and predicts `w1 .. wn [EOS]`; the cross-entropy covers those real tokens
only (padding after `[EOS]` is ignored), as in CoCa's captioning loss (Yu et al.
2022, https://arxiv.org/abs/2205.01917, Eq. 2).

Decoding is greedy or top-k sampling (Fan et al. 2018,
https://arxiv.org/abs/1805.04833) in a bounded `keras.ops.fori_loop` of
`max_length` steps, so the whole captioner exports as one graph: every step runs
the decoder over the full, fixed-length token buffer (causal attention makes the
not-yet-written positions invisible), and once a row has written `[EOS]` every
later token is `[PAD]`.

The tokenizer (`kzoo.data.tokenizer.Tokenizer`, `[BOS]`/`[EOS]` added) is part of
the model, so `fit` takes raw caption strings and the exported `caption` signature
returns `tf.string` captions. Strings need the TensorFlow backend; the network
itself is `keras.ops`.
"""

import keras
import numpy as np
from keras import ops

from kzoo.layers.checks import check_positive_int
from kzoo.layers.transformer import PositionEmbedding, TransformerBlock
from kzoo.models.code_prior import sample_logits
from kzoo.models.image_text import (
    ImageCaptionPairsMixin,
    build_image_encoder,
    is_host_strings,
    require_shape,
    unpack_pair,
)
from kzoo.task import Task

DECODING_METHODS = ("greedy", "top_k")
# Special token ids of `kzoo.data.tokenizer` (fixed whatever the vocabulary).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_MASKED_LOGIT = -1e9


def _tokenizer_module():
    # Imported on use: the tokenizer needs TensorFlow (tf.strings), which `kzoo.models`
    # does not import at module load.
    from kzoo.data import tokenizer

    return tokenizer


def caption_loss(logits, targets):
    """Mean next-token cross-entropy over the real (non-`[PAD]`) targets.

    Args:
        logits: float `(B, T, V)`.
        targets: int `(B, T)`, `[PAD]` (0) where there is no token to predict.

    Returns:
        A float32 scalar; 0 when every target is padding.
    """
    targets = ops.cast(targets, "int32")
    mask = ops.cast(ops.not_equal(targets, PAD_ID), "float32")
    losses = keras.losses.sparse_categorical_crossentropy(
        targets, ops.cast(logits, "float32"), from_logits=True
    )  # (B, T)
    return ops.sum(losses * mask) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package="kzoo")
class Captioner(ImageCaptionPairsMixin, Task):
    """Image-to-text: images in [-1, 1] -> captions, trained with `fit` on `(images, captions)`.

    `model((images, captions))` (captions as strings, or the int32 ids of
    `tokenize`) returns `{"logits": (B, max_length, V), "targets": (B, max_length)}`
    under teacher forcing; `fit` minimises `caption_loss` and shows
    `token_accuracy` (argmax == target over the real target tokens).
    `generate(images)` returns int32 token ids, `caption(images)` `tf.string`
    captions.

    Args:
        image_encoder: an `ImageEncoder` (or a model mapping images to a dict with a
            `"sequence"` `(B, N, D)` entry and an `image_shape`), or a dict of
            `ImageEncoder` arguments.
        vocabulary: the caption words (a list), or `"kzoo_shapes"` for
            `kzoo.data.tokenizer.shapes_vocabulary()`. Saved resolved (the list).
        max_length: decoder positions: the most tokens a caption has, its `[EOS]`
            included (so at most `max_length - 1` words; longer captions are
            truncated to their first words, and still end with `[EOS]`).
        hidden_dim: decoder width.
        num_layers: decoder blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_dim: decoder MLP width; default `4 * hidden_dim`.
        dropout: dropout of the decoder blocks.
        max_batch: the largest batch the exported `caption` signature accepts.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    model = kzoo.models.Captioner(
        image_encoder={"image_shape": (32, 32, 3), "patch_size": 4, "hidden_dim": 64},
        vocabulary="kzoo_shapes",
        max_length=16,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(kzoo.data.load("kzoo_shapes", batch_size=64, outputs=("image", "caption")))
    model.caption(images)  # tf.string (B,): "a small red circle at the top left on ..."
    model.generate(images, method="top_k", top_k=5, seed=0)  # int32 (B, 16)
    ```
    """

    capabilities = frozenset({"caption"})

    def __init__(
        self,
        image_encoder,
        vocabulary="kzoo_shapes",
        max_length=16,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=None,
        dropout=0.0,
        max_batch=256,
        **kwargs,
    ):
        kwargs.setdefault("name", "captioner")
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("num_layers", num_layers)
        check_positive_int("num_heads", num_heads)
        check_positive_int("max_batch", max_batch)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                "`max_length` must be an integer >= 2 (one word and the [EOS]). "
                f"Received: max_length={max_length!r}"
            )
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_dim`={hidden_dim}. "
                f"Received: num_heads={num_heads!r}"
            )

        # === Layers ===
        # `[BOS] words [EOS] [PAD]...`: decoder inputs are ids[:, :-1], targets ids[:, 1:].
        self.tokenizer = _tokenizer_module().Tokenizer(
            vocabulary,
            sequence_length=max_length + 1,
            add_bos=True,
            add_eos=True,
            name="tokenizer",
        )
        self.image_encoder = build_image_encoder(image_encoder)
        sequence = self.image_encoder.output
        if not isinstance(sequence, dict) or "sequence" not in sequence:
            raise ValueError(
                "`image_encoder` must output a dict with a 'sequence' (B, N, D) entry. "
                f"Received: image_encoder outputs={sequence!r}"
            )
        self.context_shape = tuple(sequence["sequence"].shape[1:])  # (N, D_image)
        vocabulary_size = self.tokenizer.vocabulary_size
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(max_length, name="position_embedding")
        self.blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                mlp_dim=mlp_dim,
                dropout=dropout,
                causal=True,
                cross_attention=True,
                name=f"decoder_block{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")
        token_shape = (None, max_length)
        self.token_embedding.build(token_shape)
        self.position_embedding.build((*token_shape, hidden_dim))
        for block in self.blocks:
            block.build((*token_shape, hidden_dim), context_shape=(None, *self.context_shape))
        self.final_norm.build((*token_shape, hidden_dim))
        self.head.build((*token_shape, hidden_dim))
        self.token_accuracy_tracker = keras.metrics.Mean(name="token_accuracy")
        self.built = True

        # === Config ===
        self.vocabulary = list(self.tokenizer.vocabulary)
        self.vocabulary_size = vocabulary_size
        self.max_length = max_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.max_batch = max_batch

    @property
    def image_shape(self):
        """`(height, width, channels)` of the images the encoder takes."""
        return tuple(self.image_encoder.image_shape)

    # === Encoding ===
    def tokenize(self, captions):
        """int32 ids `(B, max_length + 1)`: `[BOS] words [EOS]`, `[PAD]`-padded (in the graph)."""
        return self.tokenizer(captions)

    def detokenize(self, token_ids):
        """`tf.string` `(B,)` of token ids (stops at the first `[EOS]`, drops `[PAD]`/`[BOS]`)."""
        return self.tokenizer.detokenize(token_ids)

    def _check_images(self, images):
        if is_host_strings(images):
            raise ValueError(
                f"`images` must be float images of shape (batch, {self._shape_text()}). "
                f"Received: images of type {type(images).__name__}"
            )
        if not hasattr(images, "shape"):
            images = np.asarray(images, "float32")
        shape = tuple(images.shape)
        if len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"`images` must have shape (batch, {self._shape_text()}). "
                f"Received: images.shape={shape}"
            )
        return ops.cast(images, "float32") if isinstance(images, np.ndarray) else images

    def _shape_text(self):
        return ", ".join(map(str, self.image_shape))

    def encode_images(self, images, training=False):
        """Image tokens `(B, N, D_image)`: the context every decoder block attends to."""
        images = self._check_images(images)
        return self.image_encoder(images, training=training)["sequence"]

    def decode(self, image_features, token_ids, training=False):
        """Next-token logits float32 `(B, T, V)` of decoder inputs `(B, T)`, `T <= max_length`.

        Position `t` sees tokens `0..t` (causal) and every image token.
        """
        token_ids = ops.cast(token_ids, "int32")
        x = self.position_embedding(self.token_embedding(token_ids))  # (B, T, D)
        for block in self.blocks:
            x = block(x, context=image_features, training=training)
        return self.head(self.final_norm(x))

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
        if captions.shape[-1] != self.max_length + 1:
            raise ValueError(
                f"Token ids must have shape (batch, {self.max_length + 1}) (`tokenize`). "
                f"Received: captions.shape={tuple(captions.shape)}"
            )
        return ops.cast(captions, "int32")

    # === Forward ===
    def __call__(self, inputs, *args, **kwargs):
        # Keras takes only tensors positionally: tokenize Python / NumPy strings first.
        images, captions = unpack_pair(
            inputs,
            "Captioner",
            "`caption` or `generate` for images alone (teacher forcing takes both)",
        )
        if is_host_strings(captions):
            inputs = (images, self.tokenizer(captions))
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        images, captions = unpack_pair(
            inputs,
            "Captioner",
            "`caption` or `generate` for images alone (teacher forcing takes both)",
        )
        token_ids = self._token_ids(captions)  # (B, max_length + 1)
        logits = self.decode(
            self.encode_images(images, training=training), token_ids[:, :-1], training=training
        )
        return {"logits": logits, "targets": token_ids[:, 1:]}

    # === Decoding ===
    def generate(self, images, method="greedy", top_k=None, temperature=1.0, seed=0):
        """Token ids int32 `(B, max_length)` of captions decoded in a bounded loop.

        Each row holds words, then `[EOS]`, then `[PAD]`s (a row that never picks
        `[EOS]` has `max_length` words). `[PAD]` and `[BOS]` are never picked.

        Args:
            images: float32 `(B, H, W, C)` in [-1, 1].
            method: `"greedy"` (argmax) or `"top_k"` (sample among the `top_k`
                most likely tokens, with `temperature`).
            top_k: an int in `[1, vocabulary_size]`, for `method="top_k"`
                (`top_k=1` is greedy).
            temperature: divides the logits before sampling, `> 0`.
            seed: int or int32 scalar tensor; equal seeds give equal samples.
        """
        _check_decoding(method, top_k, temperature, self.vocabulary_size)
        image_features = self.encode_images(images)
        batch = ops.shape(image_features)[0]
        length = self.max_length
        tokens = ops.concatenate(
            [ops.full((batch, 1), BOS_ID, "int32"), ops.zeros((batch, length), "int32")], axis=1
        )  # (B, 1 + L): [BOS], then the tokens as they are picked
        columns = ops.arange(length + 1, dtype="int32")[None]
        banned = np.zeros((1, self.vocabulary_size), bool)
        banned[0, [PAD_ID, BOS_ID]] = True
        banned = ops.convert_to_tensor(banned)
        seed = ops.cast(seed, "int32")

        def step(position, tokens):
            logits = self.decode(image_features, tokens[:, :length])  # (B, L, V)
            logits = ops.take(logits, position, axis=1)  # (B, V)
            logits = ops.where(banned, _MASKED_LOGIT, logits)
            if method == "greedy":
                picked = ops.cast(ops.argmax(logits, axis=-1), "int32")
            else:
                step_seed = ops.stack([seed, ops.cast(position, "int32")])
                picked = sample_logits(logits, step_seed, temperature, top_k)
            finished = ops.any(ops.equal(tokens, EOS_ID), axis=1)  # (B,) [EOS] already written
            picked = ops.where(finished, PAD_ID, picked)
            return ops.where(columns == position + 1, picked[:, None], tokens)

        tokens = ops.fori_loop(0, length, step, tokens)
        return tokens[:, 1:]

    def caption(self, images, method="greedy", top_k=None, temperature=1.0, seed=0):
        """Captions `tf.string` `(B,)` of images (see `generate` for the arguments)."""
        return self.detokenize(self.generate(images, method, top_k, temperature, seed))

    # === Training ===
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = caption_loss(y_pred["logits"], y_pred["targets"])
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), loss.dtype)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        targets = ops.cast(y_pred["targets"], "int32")
        predicted = ops.cast(ops.argmax(y_pred["logits"], axis=-1), "int32")
        self.token_accuracy_tracker.update_state(
            ops.cast(ops.equal(predicted, targets), "float32"),
            sample_weight=ops.cast(ops.not_equal(targets, PAD_ID), "float32"),
        )
        return self.get_metrics_result()

    # === Export ===
    def next_token_logits(self, image_features, token_ids):
        """Logits `(B, V)` of the token after the last non-`[PAD]` id of `token_ids`.

        Args:
            image_features: `(B, N, D_image)` from `encode_images`.
            token_ids: int32 `(B, max_length)`: `[BOS]`, the tokens picked so far,
                then `[PAD]`s (the full, static length: LiteRT lowers it without
                dynamic shapes; causal attention hides the padding from the
                positions before it).
        """
        token_ids = ops.cast(token_ids, "int32")
        logits = self.decode(image_features, token_ids)  # (B, L, V)
        count = ops.sum(ops.cast(ops.not_equal(token_ids, PAD_ID), "int32"), axis=1)
        select = ops.one_hot(ops.maximum(count - 1, 0), self.max_length, dtype=logits.dtype)
        return ops.sum(logits * select[..., None], axis=1)  # (B, V)

    def export_endpoints(self):
        """Serving signatures: `caption` (the default) and the two pieces of a host-side loop.

        - `caption`: float32 `images` `(None, H, W, C)` in [-1, 1] -> `captions`
          `tf.string` `(None,)` and `token_ids` int32 `(None, max_length)`, greedy
          decoding, at most `max_batch` images. Images of another size or channel
          count fail with `InvalidArgumentError` "Shape of tensor images
          [1,32,32,3] is not compatible with expected shape [?,16,16,3]".
        - `encode_image`: `images` -> `image_features` `(None, N, D_image)`.
        - `next_token_logits`: `image_features` and `token_ids` `(None,
          max_length)` (see `next_token_logits`) -> `logits` `(None, V)`.

        LiteRT has no string ops: `litert_exportable()` keeps the last two.
        """
        image_shape = (None, *self.image_shape)
        image_spec = keras.InputSpec(shape=image_shape, dtype="float32", name="images")

        def caption(images):
            images = require_shape(images, image_shape)
            token_ids = self.generate(images)
            return {"captions": self.detokenize(token_ids), "token_ids": token_ids}

        def encode_image(images):
            images = require_shape(images, image_shape)
            return {"image_features": self.encode_images(images)}

        return {
            "caption": (caption, [image_spec], {"batch": self.max_batch}),
            "encode_image": (encode_image, [image_spec]),
            **self._step_endpoint(),
        }

    def _step_endpoint(self):
        feature_spec = keras.InputSpec(
            shape=(None, *self.context_shape), dtype="float32", name="image_features"
        )
        token_spec = keras.InputSpec(shape=(None, self.max_length), dtype="int32", name="token_ids")
        return {
            "next_token_logits": (
                lambda features, ids: {"logits": self.next_token_logits(features, ids)},
                [feature_spec, token_spec],
                {"token_ids": (0, self.vocabulary_size - 1)},
            )
        }

    def export_png_endpoints(self):
        """`caption_png` and `encode_image_png`: `caption` and `encode_image` on
        `image_bytes` (PNG/JPEG, any size; SavedModel only, `kzoo.export.image_bytes`)."""
        return {"caption_png": "caption", "encode_image_png": "encode_image"}

    def export_parity_batch(self):
        """Random images, and decoder inputs cut from captions at several lengths."""
        images = np.random.default_rng(0).uniform(-1, 1, (4, *self.image_shape)).astype("float32")
        features = ops.convert_to_numpy(self.encode_images(images))
        words = self.vocabulary
        captions = [" ".join(words[:3]), "", " ".join((words * 4)[: 2 * self.max_length]), words[0]]
        token_ids = ops.convert_to_numpy(self.tokenize(captions))[:, :-1].copy()
        token_ids[0, 2:] = PAD_ID  # a caption cut after its first word
        return {
            "caption": {"images": images},
            "encode_image": {"images": images},
            "next_token_logits": {"image_features": features, "token_ids": token_ids},
        }

    def litert_exportable(self):
        """A view with the LiteRT-friendly endpoints only: `encode_image`, `next_token_logits`.

        The host runs the loop: `encode_image` once, then `next_token_logits` per
        token (write the picked id after the last non-`[PAD]` one; stop at `[EOS]`
        = 3), then maps ids to words with the `vocabulary.txt` that `kzoo.export`
        writes beside the `.tflite` (line `i` is id `i`; `get_vocabulary()` in
        Python). Shares this model's weights.
        """
        return CaptionerTokenEndpoints(self)

    def get_vocabulary(self):
        """All tokens in id order, special tokens first."""
        return self.tokenizer.get_vocabulary()

    # === Config ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "vocabulary": list(self.vocabulary),
            "max_length": self.max_length,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = config["image_encoder"]
        if isinstance(encoder, dict) and "class_name" in encoder:
            config["image_encoder"] = keras.saving.deserialize_keras_object(encoder)
        return cls(**config)


class CaptionerTokenEndpoints(keras.layers.Layer):
    """`encode_image` and `next_token_logits` of a `Captioner`, for LiteRT (no strings)."""

    def __init__(self, captioner, **kwargs):
        kwargs.setdefault("name", captioner.name)
        super().__init__(**kwargs)
        self.captioner = captioner
        self.built = True

    def call(self, images):
        return self.captioner.encode_images(images)

    def export_endpoints(self):
        model = self.captioner
        image_spec = keras.InputSpec(
            shape=(None, *model.image_shape), dtype="float32", name="images"
        )
        return {
            "encode_image": (
                lambda images: {"image_features": model.encode_images(images)},
                [image_spec],
            ),
            **model._step_endpoint(),
        }

    def export_parity_batch(self):
        batch = self.captioner.export_parity_batch()
        return {key: batch[key] for key in ("encode_image", "next_token_logits")}


def _check_decoding(method, top_k, temperature, vocabulary_size):
    if method not in DECODING_METHODS:
        raise ValueError(f"`method` must be one of {DECODING_METHODS}. Received: method={method!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(
            f"`temperature` must be a number > 0. Received: temperature={temperature!r}"
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}")
    if method == "greedy" and top_k is not None:
        raise ValueError(
            f"`top_k` applies to method='top_k' only. Received: method='greedy', top_k={top_k!r}"
        )
    if method == "top_k" and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocabulary_size
    ):
        raise ValueError(
            f"method='top_k' needs `top_k`, an int in [1, {vocabulary_size}] "
            f"(vocabulary_size). Received: top_k={top_k!r}"
        )
