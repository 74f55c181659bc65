"""Autoregressive transformer prior over VQ code grids, and a generator that decodes its samples.

The second stage of VQ-VAE-2 / VQGAN (Esser et al. 2021,
https://arxiv.org/abs/2012.09841, Sec. 3.2, Eq. 8-9): a decoder-only (GPT-style,
Radford et al. 2019) transformer models `p(s) = prod_i p(s_i | s_<i, c)` over the
raster-order flattened code grid `s`, conditioned on a class `c` by a start token
per class, or on a caption as in DALL-E (Ramesh et al. 2021,
https://arxiv.org/abs/2102.12092, Sec. 2.2): the caption's tokens are a prefix of
the same sequence, in the same transformer, and the loss covers the codes only.
Sampling uses temperature and top-k (Fan et al. 2018,
https://arxiv.org/abs/1805.04833) in a bounded `keras.ops.fori_loop`, so the whole
sampler exports as one graph.

Token ids: codes are `[0, codebook_size)`; start tokens follow, one (`codebook_size`)
for an unconditional or caption-conditional prior or `codebook_size + label` for a
class-conditional one. A caption prior's words follow its start token: caption token
`t` (a `kzoo.data.tokenizer.Tokenizer` id, `[PAD]` = 0) is `codebook_size + 1 + t`.

Sequences: `[start, codes[:-1]]` (length `h*w`), or for a caption prior
`[caption (max_caption_length ids, [PAD]-padded), start, codes[:-1]]`; the model
returns logits for the code positions only. Caption `[PAD]`s are masked out of
attention as keys, so no position sees them and their own outputs are discarded: the
`[PAD]` embedding never reaches a code's logits.
"""

import keras
import numpy as np
from keras import ops

from kzoo.layers import PositionEmbedding, TransformerBlock
from kzoo.layers.checks import check_positive_int
from kzoo.layers.seeds import TensorSeed
from kzoo.task import Task

_MASKED_LOGIT = -1e9


def _is_strings(captions):
    """Captions given as text: Python strings, a NumPy string array or a `tf.string` tensor."""
    if isinstance(captions, str | bytes):
        return True  # the tokenizer rejects a bare string with a clear message
    if isinstance(captions, list | tuple):
        return any(isinstance(c, str | bytes) for c in captions)
    if isinstance(captions, np.ndarray):
        return captions.dtype.kind in "OUS"
    dtype = getattr(captions, "dtype", None)
    return dtype is not None and keras.backend.standardize_dtype(dtype) == "string"


def prior_inputs(codes, start_tokens):
    """`(tokens, targets)` `(B, h*w)` int32: `[start, codes[:-1]]` and the raster-order codes.

    Args:
        codes: int `(B, h, w)` code grids.
        start_tokens: int `(B,)` start tokens (`CodePrior.start_tokens`).
    """
    codes = ops.cast(codes, "int32")
    targets = ops.reshape(codes, (ops.shape(codes)[0], -1))  # (B, h*w)
    starts = ops.cast(start_tokens, "int32")[:, None]
    return ops.concatenate([starts, targets[:, :-1]], axis=1), targets


def _check_sampling(temperature, top_k, codebook_size):
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(
            f"`temperature` must be a number > 0. Received: temperature={temperature!r}"
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= codebook_size
    ):
        raise ValueError(
            f"`top_k` must be None or an int in [1, {codebook_size}] (codebook_size). "
            f"Received: top_k={top_k!r}"
        )


def sample_logits(logits, seed, temperature=1.0, top_k=None):
    """One sample per row of `(B, K)` logits, with temperature and top-k: int32 `(B,)`.

    Args:
        logits: `(B, K)` float logits.
        seed: int32 `(2,)` seed tensor (stateless: equal seeds, equal draws), or
            `(B, 2)`: one seed per row, each row drawn on its own, so a row's
            sample does not depend on the other rows of the batch.
        temperature: divides the logits, `> 0`.
        top_k: None, or keep only the `top_k` largest logits (ties at the k-th value
            are kept).

    Returns:
        int32 `(B,)` token ids.
    """
    logits = ops.cast(logits, "float32") / temperature
    if top_k is not None:
        kth = ops.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = ops.where(logits >= kth, logits, _MASKED_LOGIT)
    if len(seed.shape) == 2:
        return ops.map(
            lambda row: keras.random.categorical(
                row[0][None], 1, dtype="int32", seed=TensorSeed(row[1])
            )[0, 0],
            (logits, ops.cast(seed, "int32")),
        )
    samples = keras.random.categorical(logits, 1, dtype="int32", seed=TensorSeed(seed))
    return samples[:, 0]


def _check_seed(seed):
    """`seed` as an int32 tensor: a scalar, or one seed per sample `(B,)`."""
    if isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int or a 1-D sequence of ints. Received: seed={seed}")
    if isinstance(seed, list | tuple | np.ndarray | int | np.integer):
        array = np.asarray(seed)
        if array.ndim > 1 or array.dtype.kind not in "iu" or array.size == 0 and array.ndim:
            raise ValueError(
                "`seed` must be an int or a non-empty 1-D sequence of ints (one per sample). "
                f"Received: seed={seed!r}"
            )
        return ops.convert_to_tensor(array.astype("int32"))
    seed = ops.cast(seed, "int32")
    if len(seed.shape) > 1:
        raise ValueError(
            f"`seed` must be a scalar or 1-D (one per sample). Received: seed.shape={seed.shape}"
        )
    return seed


@keras.saving.register_keras_serializable(package="kzoo")
class CodePrior(Task):
    """Decoder-only transformer prior over flattened VQ code grids: unconditional, class or caption.

    `model(tokens)` maps int tokens `(B, T)` (the prefix of `prefix_tokens`, width
    `P`: the caption's tokens, if any, then a start token; then codes) to float32
    next-code logits `(B, T - P + 1, codebook_size)` at the start token and the codes
    only, never at caption tokens. Train with `fit` on `prepare_inputs(codes,
    labels)` or `prepare_inputs(codes, captions=...)`: tokens `(B, P - 1 + h*w)`,
    targets the codes `(B, h*w)`, so the loss (next-token cross-entropy, the default
    `compile` loss) covers code positions only; sample with `sample`.

    Caption priors (`caption_vocabulary`): captions are strings, tokenized in the
    graph by a `kzoo.data.tokenizer.Tokenizer` this model holds (so a SavedModel
    endpoint takes `tf.string`), or int32 token ids `(B, max_caption_length)` of
    that tokenizer (what LiteRT takes: it has no string ops). A caption with more
    than `max_caption_length` words is truncated to its first words; unknown words
    become `[UNK]`; an empty caption is all `[PAD]` and leaves only the start token
    to condition on. The tokenizer makes `fit` fall back to `jit_compile=False`,
    with a Keras warning (Keras cannot XLA-compile a model holding string ops).

    Args:
        codebook_size: number of codes `K` of the VQ tokenizer.
        grid_shape: `(h, w)` of the code grid (the tokenizer's latent grid).
        hidden_dim: transformer width.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        num_classes: None (unconditional) or the number of class labels.
        mlp_dim: MLP width; default `4 * hidden_dim`.
        dropout: dropout of the transformer blocks.
        caption_vocabulary: None, or the caption words (a list, or `"kzoo_shapes"`
            for `kzoo.data.tokenizer.shapes_vocabulary()`) of a caption-conditional
            prior. Excludes `num_classes`. Saved resolved (as the word list).
        max_caption_length: caption tokens in the prefix (caption priors only);
            default 16.
        **kwargs: base `keras.Model` arguments.

    Example:
    ```python
    prior = kzoo.models.CodePrior(codebook_size=256, grid_shape=(8, 8), num_classes=6)
    prior.compile(optimizer=keras.optimizers.AdamW(3e-4))
    prior.fit(*prior.prepare_inputs(vqgan.encode(images), labels), epochs=10)
    codes = prior.sample(labels=[0, 1, 2], temperature=1.0, top_k=32, seed=0)  # (3, 8, 8)

    captioned = kzoo.models.CodePrior(256, (8, 8), caption_vocabulary="kzoo_shapes")
    captioned.fit(*captioned.prepare_inputs(codes, captions=captions), epochs=10)
    captioned.sample(captions=["a large red circle at the center on a blue background"])
    ```
    """

    capabilities = frozenset({"sample_codes"})

    def __init__(
        self,
        codebook_size,
        grid_shape,
        hidden_dim=128,
        num_layers=4,
        num_heads=4,
        num_classes=None,
        mlp_dim=None,
        dropout=0.0,
        caption_vocabulary=None,
        max_caption_length=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "code_prior")
        super().__init__(**kwargs)
        check_positive_int("codebook_size", codebook_size)
        if not (
            isinstance(grid_shape, list | tuple)
            and len(grid_shape) == 2
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in grid_shape)
        ):
            raise ValueError(
                f"`grid_shape` must be (height, width) of positive integers. "
                f"Received: grid_shape={grid_shape!r}"
            )
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("num_layers", num_layers)
        check_positive_int("num_heads", num_heads)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_dim`={hidden_dim}. "
                f"Received: num_heads={num_heads!r}"
            )
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        captioned = caption_vocabulary is not None
        if num_classes is not None and (captioned or max_caption_length is not None):
            raise ValueError(
                "`num_classes` and the caption options (`caption_vocabulary`, "
                "`max_caption_length`) are mutually exclusive: a prior is class- or "
                f"caption-conditional. Received: num_classes={num_classes!r}, "
                f"caption_vocabulary={_summarize(caption_vocabulary)}, "
                f"max_caption_length={max_caption_length!r}"
            )
        if not captioned and max_caption_length is not None:
            raise ValueError(
                "`max_caption_length` applies to a caption-conditional prior; pass "
                "`caption_vocabulary` too. Received: caption_vocabulary=None, "
                f"max_caption_length={max_caption_length!r}"
            )
        self.caption_tokenizer = None
        if captioned:
            max_caption_length = 16 if max_caption_length is None else max_caption_length
            check_positive_int("max_caption_length", max_caption_length)
            # Imported on use: the tokenizer needs TensorFlow (tf.strings), which
            # `kzoo.models` does not import at module load.
            from kzoo.data.tokenizer import Tokenizer

            self.caption_tokenizer = Tokenizer(
                caption_vocabulary, sequence_length=max_caption_length, name="caption_tokenizer"
            )
            caption_vocabulary = list(self.caption_tokenizer.vocabulary)
        self.codebook_size = codebook_size
        self.grid_shape = tuple(grid_shape)
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.caption_vocabulary = caption_vocabulary
        self.max_caption_length = max_caption_length
        self.sequence_length = grid_shape[0] * grid_shape[1]
        # Caption tokens before the start token (0 without captions), and the model's
        # longest input: that prefix, the start token and all codes but the last.
        self.context_length = max_caption_length or 0
        self.input_length = self.context_length + self.sequence_length
        self.num_start_tokens = num_classes or 1
        # Id of caption token 0 (`[PAD]`); caption token t is `caption_token_offset + t`.
        self.caption_token_offset = codebook_size + self.num_start_tokens
        self.vocabulary_size = self.caption_token_offset + (
            self.caption_tokenizer.vocabulary_size if captioned else 0
        )

        # === Layers ===
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(self.input_length, name="position_embedding")
        self.blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                mlp_dim=mlp_dim,
                dropout=dropout,
                causal=True,
                name=f"block{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.head = keras.layers.Dense(codebook_size, dtype="float32", name="logits")
        self.build((None, self.input_length))

    def build(self, input_shape):
        token_shape = (None, self.input_length)
        self.token_embedding.build(token_shape)
        self.position_embedding.build((*token_shape, self.hidden_dim))
        for block in self.blocks:
            block.build((*token_shape, self.hidden_dim))
        self.final_norm.build((*token_shape, self.hidden_dim))
        self.head.build((*token_shape, self.hidden_dim))
        self.built = True

    # === Forward ===
    def call(self, tokens, training=None):
        tokens = ops.cast(tokens, "int32")
        x = self.position_embedding(self.token_embedding(tokens))
        padding_mask = None
        if self.context_length:
            padding_mask = ops.not_equal(tokens, self.caption_token_offset)  # (B, T): not [PAD]
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        if self.context_length:
            x = x[:, self.context_length :]  # (B, T - P + 1, D): the code positions
        return self.head(self.final_norm(x))  # (B, L, K) float32

    def _describe(self):
        if self.caption_vocabulary is not None:
            return f"caption-conditional (max_caption_length={self.max_caption_length})"
        if self.num_classes is not None:
            return f"class-conditional (num_classes={self.num_classes})"
        return "unconditional (num_classes=None)"

    def start_tokens(self, labels=None, num_samples=None):
        """int32 `(B,)` start tokens: `codebook_size (+ label)`."""
        if self.num_classes is None:
            if labels is not None and self.caption_vocabulary is not None:
                raise ValueError(
                    f"This CodePrior is {self._describe()}; pass `captions`, not `labels`. "
                    "Received: labels is not None"
                )
            if labels is not None:
                raise ValueError(
                    "This CodePrior is unconditional (num_classes=None); pass `num_samples`. "
                    "Received: labels is not None"
                )
            if num_samples is None:
                raise ValueError(
                    "An unconditional CodePrior needs `num_samples`. Received: num_samples=None"
                )
            return ops.full((num_samples,), self.codebook_size, "int32")
        if labels is None:
            raise ValueError(
                f"This CodePrior is class-conditional (num_classes={self.num_classes}); pass "
                "`labels`. Received: labels=None"
            )
        labels = ops.cast(ops.convert_to_tensor(labels), "int32")
        if len(labels.shape) != 1:
            raise ValueError(
                f"`labels` must be 1-D (batch,). Received: labels.shape={labels.shape}"
            )
        self._check_range(labels, self.num_classes, "labels")
        return self.codebook_size + labels

    def tokenize(self, captions):
        """int32 caption token ids `(B, max_caption_length)` of the caption tokenizer (`[PAD]` = 0).

        Args:
            captions: strings `(B,)` (a list, a NumPy array or a `tf.string` tensor),
                tokenized in the graph: lowercased, punctuation dropped, truncated to
                the first `max_caption_length` words, `[PAD]`-padded; or int token
                ids `(B, max_caption_length)` of that tokenizer, returned checked.
        """
        if self.caption_tokenizer is None:
            raise ValueError(
                f"This CodePrior is {self._describe()}; it takes no `captions`"
                + (" (pass `labels`)" if self.num_classes else "")
                + ". Received: captions is not None"
            )
        if _is_strings(captions):
            return self.caption_tokenizer(captions)
        ids = ops.convert_to_tensor(captions)
        dtype = keras.backend.standardize_dtype(ids.dtype)
        if "int" not in dtype:
            raise ValueError(
                "`captions` must be strings or integer caption token ids. "
                f"Received: captions.dtype={dtype}"
            )
        if len(ids.shape) != 2 or ids.shape[1] != self.max_caption_length:
            raise ValueError(
                f"Caption token ids must have shape (batch, {self.max_caption_length}) "
                f"(max_caption_length). Received: captions.shape={tuple(ids.shape)}"
            )
        ids = ops.cast(ids, "int32")
        self._check_range(ids, self.caption_tokenizer.vocabulary_size, "captions")
        return ids

    def prefix_tokens(self, labels=None, num_samples=None, captions=None):
        """int32 `(B, P)`: what precedes the first code, `P = max_caption_length + 1` or 1.

        The caption's tokens (offset by `caption_token_offset`) then the start token
        for a caption prior; the start token (`start_tokens`) otherwise.

        Args:
            labels: int `(B,)` class labels (class-conditional prior).
            num_samples: batch size (unconditional prior).
            captions: captions of a caption prior, as for `tokenize`.
        """
        if self.caption_vocabulary is None:
            if captions is not None:
                self.tokenize(captions)  # raises: this prior takes no captions
            return self.start_tokens(labels, num_samples)[:, None]
        if labels is not None:
            self.start_tokens(labels)  # raises: pass captions, not labels
        if captions is None:
            raise ValueError(
                f"This CodePrior is {self._describe()}; pass `captions`. Received: captions=None"
            )
        ids = self.tokenize(captions) + self.caption_token_offset  # (B, max_caption_length)
        starts = ops.full((ops.shape(ids)[0], 1), self.codebook_size, "int32")
        return ops.concatenate([ids, starts], axis=1)

    def prepare_inputs(self, codes, labels=None, captions=None):
        """`(tokens, targets)` for `fit`: prefix + codes[:-1] `(B, P - 1 + h*w)`, codes `(B, h*w)`.

        Args:
            codes: int `(B, h, w)` code grids (`VQVAE.encode` / `VQGAN.encode`).
            labels: int `(B,)` class labels for a class-conditional prior.
            captions: `(B,)` captions for a caption prior (see `tokenize`).
        """
        codes = ops.cast(ops.convert_to_tensor(codes), "int32")
        if len(codes.shape) != 3 or tuple(codes.shape[1:]) != self.grid_shape:
            raise ValueError(
                f"`codes` must have shape (batch, {self.grid_shape[0]}, {self.grid_shape[1]}). "
                f"Received: codes.shape={tuple(codes.shape)}"
            )
        self._check_range(codes, self.codebook_size, "codes")
        prefix = self.prefix_tokens(labels, ops.shape(codes)[0], captions)  # (B, P)
        if prefix.shape[0] is not None and codes.shape[0] is not None:
            if prefix.shape[0] != codes.shape[0]:
                raise ValueError(
                    "`captions` must hold one caption per code grid. Received: "
                    f"{prefix.shape[0]} captions for {codes.shape[0]} code grids"
                )
        tokens, targets = prior_inputs(codes, prefix[:, -1])
        if self.context_length:
            tokens = ops.concatenate([prefix[:, :-1], tokens], axis=1)
        return tokens, targets

    def _check_range(self, values, high, name):
        try:
            array = ops.convert_to_numpy(values)
        except Exception:  # symbolic inside a traced function: checked at serving by limits
            return
        if array.size and (array.min() < 0 or array.max() >= high):
            raise ValueError(
                f"`{name}` must lie in [0, {high}). Received: {name} with min={array.min()} "
                f"and max={array.max()}"
            )

    # === Sampling ===
    def sample(
        self, labels=None, num_samples=None, temperature=1.0, top_k=None, seed=0, captions=None
    ):
        """Sample code grids `(B, h, w)` int32 autoregressively in a bounded `fori_loop`.

        Args:
            labels: int `(B,)` class labels (class-conditional prior).
            num_samples: batch size (unconditional prior); default the length of a
                per-example `seed`.
            temperature: softmax temperature, `> 0`.
            top_k: None or an int in `[1, codebook_size]`: sample among the top-k codes.
            seed: int or int32 scalar tensor; equal seeds give equal samples. Or one
                seed per sample, `(B,)`: each sample is then drawn from its own seed,
                the same alone as inside any batch.
            captions: `(B,)` captions (caption prior): strings or token ids, as for
                `tokenize`.

        Returns:
            int32 code grids `(B, h, w)`.

        Example:
        ```python
        mixed = prior.sample(labels=[0, 2], seed=[5, 6])
        alone = prior.sample(labels=[2], seed=[6])  # == mixed[1:]
        ```
        """
        _check_sampling(temperature, top_k, self.codebook_size)
        seed = _check_seed(seed)
        per_example = len(seed.shape) == 1
        if per_example and num_samples is None and self.num_classes is None:
            num_samples = ops.shape(seed)[0]
        prefix = self.prefix_tokens(labels, num_samples, captions)  # (B, P)
        width = self.context_length + 1  # P
        batch = ops.shape(prefix)[0]
        length = self.sequence_length
        if per_example and isinstance(batch, int) and seed.shape[0] is not None:
            if seed.shape[0] != batch:
                raise ValueError(
                    f"`seed` must be a scalar or have one entry per sample ({batch}). "
                    f"Received: seed with {seed.shape[0]} entries"
                )
        tokens = ops.concatenate(
            [prefix, ops.zeros((batch, length), "int32")], axis=1
        )  # (B, P + L): the prefix, then the codes as they are drawn
        columns = ops.arange(width + length, dtype="int32")[None]

        def step(position, tokens):
            logits = self(tokens[:, : self.input_length], training=False)  # (B, L, K)
            step_logits = ops.take(logits, position, axis=1)  # (B, K)
            position = ops.cast(position, "int32")
            if per_example:  # (B, 2): each sample's own stream
                step_seed = ops.stack([seed, ops.broadcast_to(position, ops.shape(seed))], axis=1)
            else:
                step_seed = ops.stack([seed, position])
            codes = sample_logits(step_logits, step_seed, temperature, top_k)
            return ops.where(columns == position + width, codes[:, None], tokens)

        tokens = ops.fori_loop(0, length, step, tokens)
        return ops.reshape(tokens[:, width:], (batch, *self.grid_shape))

    # === Training ===
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with next-token cross-entropy and accuracy by default."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics is None:
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # === Export ===
    def next_token_logits(self, tokens):
        """Logits `(B, K)` of the code after the last of `tokens` `(B, T)`.

        `tokens` are the prefix (`prefix_tokens`, width `P`) then the codes drawn so
        far: `P <= T <= P - 1 + h*w`.
        """
        logits = self(tokens, training=False)  # (B, T - P + 1, K)
        return ops.take(logits, ops.shape(logits)[1] - 1, axis=1)

    def export_endpoints(self):
        """One LiteRT-friendly step: `next_token_logits` (tokens -> logits `(B, K)`).

        Unconditional and class priors take `tokens` `(B, T)` int32: the start token
        then the codes so far. Caption priors take `caption_ids` `(B,
        max_caption_length)` int32 (the caption tokenizer's ids, `tokenize` on the
        host: LiteRT has no string ops) and `tokens` `(B, T)`, `1 <= T <= h*w`: the
        start token `codebook_size` then the codes so far.
        """
        spec = keras.InputSpec(shape=(None, None), dtype="int32", name="tokens")
        if self.caption_vocabulary is not None:
            caption_spec = keras.InputSpec(
                shape=(None, self.max_caption_length), dtype="int32", name="caption_ids"
            )

            def step(caption_ids, tokens):
                tokens = ops.cast(tokens, "int32")
                prefix = ops.cast(caption_ids, "int32") + self.caption_token_offset
                count = ops.shape(tokens)[1]  # the start token and the codes so far
                # Runs the full, static length: LiteRT cannot lower the padding mask's
                # reshape with two dynamic dims. Positions after the given tokens are
                # causally invisible to them, so the logits are those of the prefix.
                filler = ops.zeros((ops.shape(tokens)[0], self.sequence_length - count), "int32")
                full = ops.reshape(
                    ops.concatenate([prefix, tokens, filler], axis=1), (-1, self.input_length)
                )
                logits = self(full, training=False)  # (B, h*w, K)
                return {"logits": ops.take(logits, count - 1, axis=1)}

            return {
                "next_token_logits": (
                    step,
                    [caption_spec, spec],
                    {
                        "caption_ids": (0, self.caption_tokenizer.vocabulary_size - 1),
                        "tokens": (0, self.codebook_size),
                    },
                )
            }
        return {
            "next_token_logits": (
                lambda tokens: {"logits": self.next_token_logits(tokens)},
                [spec],
                {"tokens": (0, self.vocabulary_size - 1)},
            )
        }

    def export_parity_batch(self):
        codes = keras.random.randint((4, *self.grid_shape), 0, self.codebook_size, seed=0)
        if self.caption_vocabulary is not None:
            tokens, _ = prior_inputs(codes, ops.full((4,), self.codebook_size, "int32"))
            caption_ids = self.tokenize(self.parity_captions())
            return {
                "next_token_logits": {
                    "caption_ids": ops.convert_to_numpy(caption_ids),
                    "tokens": ops.convert_to_numpy(tokens),
                }
            }
        tokens, _ = self.prepare_inputs(
            codes, None if self.num_classes is None else ops.arange(4) % self.num_classes
        )
        return {"next_token_logits": {"tokens": ops.convert_to_numpy(tokens)}}

    def parity_captions(self):
        """Four parity-check captions: short, empty, over-long with an unknown word, upper case."""
        words = self.caption_vocabulary
        return np.array(
            [
                " ".join(words[:3]),
                "",
                " ".join(["unknownword", *words] * 2),
                " ".join(words[::-1][:4]).upper() + "!",
            ],
            dtype=np.bytes_,  # bytes load without pickling in the parity runner
        )

    # === Config ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "codebook_size": self.codebook_size,
            "grid_shape": self.grid_shape,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_classes": self.num_classes,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "caption_vocabulary": self.caption_vocabulary,
            "max_caption_length": self.max_caption_length,
        }


def _summarize(vocabulary):
    if isinstance(vocabulary, list | tuple) and len(vocabulary) > 5:
        return f"[{', '.join(map(repr, vocabulary[:5]))}, ...] ({len(vocabulary)} words)"
    return repr(vocabulary)


@keras.saving.register_keras_serializable(package="kzoo")
class Generator(Task):
    """A `CodePrior` and a VQ tokenizer: labels or captions and a seed in, images out, one endpoint.

    Args:
        prior: a `CodePrior` whose `codebook_size` and `grid_shape` match `tokenizer`.
        tokenizer: a `VQVAE` / `VQGAN` (anything with `decode(indices)` and
            `codebook_size`, `latent_shape`).
        temperature: sampling temperature, `> 0`.
        top_k: None or the number of codes to sample among.
        max_batch: the exported endpoint's largest batch.
        **kwargs: base `keras.Model` arguments.

    Example:
    ```python
    generator = kzoo.models.Generator(prior, vqgan, top_k=32)
    images = generator.generate(labels=[0, 1], seed=0)  # (2, 32, 32, 3)
    kzoo.export.export_saved_model(generator, "exported")  # one `generate` signature
    # A caption prior's generator: generate(captions=["a red circle ..."], seed=0);
    # its `generate` signature takes `captions` (tf.string, (B,)) and `seed`.
    ```
    """

    capabilities = frozenset({"generate"})

    def __init__(self, prior, tokenizer, temperature=1.0, top_k=None, max_batch=64, **kwargs):
        kwargs.setdefault("name", "generator")
        super().__init__(**kwargs)
        if isinstance(prior, dict):
            prior = keras.saving.deserialize_keras_object(prior)
        if isinstance(tokenizer, dict):
            tokenizer = keras.saving.deserialize_keras_object(tokenizer)
        if not isinstance(prior, CodePrior):
            raise TypeError(f"`prior` must be a CodePrior. Received: prior={type(prior).__name__}")
        if (
            getattr(tokenizer, "codebook_size", None) != prior.codebook_size
            or tuple(getattr(tokenizer, "latent_shape", (None, None))[:2]) != prior.grid_shape
        ):
            raise ValueError(
                f"The tokenizer's codebook_size and latent grid must match the prior's "
                f"(codebook_size={prior.codebook_size}, grid_shape={prior.grid_shape}). Received: "
                f"tokenizer codebook_size={getattr(tokenizer, 'codebook_size', None)}, "
                f"latent_shape={getattr(tokenizer, 'latent_shape', None)}"
            )
        check_positive_int("max_batch", max_batch)
        self.prior = prior
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_k = top_k
        self.max_batch = max_batch
        self.codebook_size = prior.codebook_size
        _check_sampling(temperature, top_k, prior.codebook_size)
        self.built = True

    def generate(self, labels=None, num_samples=None, seed=0, captions=None):
        """Images `(B, H, W, C)` decoded from sampled code grids (see `CodePrior.sample`).

        `seed` is an int, or one int per image `(B,)` (each image then the same alone
        as inside any batch); an unconditional prior takes `num_samples`, or the
        batch from a per-image `seed`.
        """
        codes = self.prior.sample(
            labels,
            num_samples,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=seed,
            captions=captions,
        )
        return self.tokenizer.decode(codes)

    def call(self, inputs):
        if self.prior.caption_vocabulary is not None:
            return self.generate(captions=inputs)
        return self.generate(labels=inputs)

    def export_endpoints(self):
        """The single endpoint `generate`: (labels or captions, seed) -> images.

        Every input has one entry per image, so TF Serving can batch requests: `seed`
        is int32 `(B,)`, each image drawn from its own seed (the same image alone as
        inside a mixed batch). A class prior's `generate` takes `labels` `(B,)`; a
        caption prior's takes `captions` `tf.string` `(B,)`, tokenized in the graph
        (long captions truncated); an unconditional prior's takes `seed` alone, one
        image per seed. At most `max_batch` images.
        """
        seed = keras.InputSpec(shape=(None,), dtype="int32", name="seed")
        if self.prior.caption_vocabulary is not None:
            captions = keras.InputSpec(shape=(None,), dtype="string", name="captions")
            return {
                "generate": (
                    lambda c, s: {"images": self.generate(captions=c, seed=s)},
                    [captions, seed],
                    {"batch": self.max_batch, "same_batch": True},
                )
            }
        if self.prior.num_classes is None:
            return {
                "generate": (
                    lambda s: {"images": self.generate(seed=s)},
                    [seed],
                    {"batch": self.max_batch},
                )
            }
        labels = keras.InputSpec(shape=(None,), dtype="int32", name="labels")
        return {
            "generate": (
                lambda y, s: {"images": self.generate(labels=y, seed=s)},
                [labels, seed],
                {
                    "labels": (0, self.prior.num_classes - 1),
                    "batch": self.max_batch,
                    "same_batch": True,
                },
            )
        }

    def export_png_endpoints(self):
        """`generate_png`: `generate`'s inputs, PNG bytes out (SavedModel only)."""
        return {"generate_png": "generate"}

    def export_parity_batch(self):
        if self.prior.caption_vocabulary is not None:
            captions = self.prior.parity_captions()[:3]
            return {"generate": {"captions": captions, "seed": np.arange(3, 6, dtype="int32")}}
        if self.prior.num_classes is None:
            return {"generate": {"seed": np.array([3, 4], "int32")}}
        labels = (np.arange(2) % self.prior.num_classes).astype("int32")
        return {"generate": {"labels": labels, "seed": np.array([3, 4], "int32")}}

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "prior": keras.saving.serialize_keras_object(self.prior),
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "temperature": self.temperature,
            "top_k": self.top_k,
            "max_batch": self.max_batch,
        }
