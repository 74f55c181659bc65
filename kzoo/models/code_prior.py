"""Autoregressive transformer prior over VQ code grids, and a generator that decodes its samples.

The second stage of VQ-VAE-2 / VQGAN (Esser et al. 2021,
https://arxiv.org/abs/2012.09841, Sec. 3.2, Eq. 8-9): a decoder-only (GPT-style,
Radford et al. 2019) transformer models `p(s) = prod_i p(s_i | s_<i, c)` over the
raster-order flattened code grid `s`, conditioned on a class `c` by a start token
per class. Sampling uses temperature and top-k (Fan et al. 2018,
https://arxiv.org/abs/1805.04833) in a bounded `keras.ops.fori_loop`, so the whole
sampler exports as one graph.

Token ids: codes are `[0, codebook_size)`; start tokens follow, one (`codebook_size`)
for an unconditional prior or `codebook_size + label` for a class-conditional one.
"""

import keras
import numpy as np
from keras import ops

from kzoo.layers import PositionEmbedding, TransformerBlock

_MASKED_LOGIT = -1e9


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value


class _TensorSeed(keras.random.SeedGenerator):
    """A "seed generator" that always returns one given `(2,)` seed tensor.

    `keras.random` takes an int or a `SeedGenerator`, not a seed tensor; this lets
    a seed computed in the graph (a served request's seed, the loop step) drive
    the stateless sampler, so equal seeds give equal samples with no state.
    """

    def __init__(self, seed):  # no super().__init__: no state variable to track or save
        self._seed = ops.cast(seed, "int32")

    def next(self, ordered=True):
        return self._seed


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
        seed: int32 `(2,)` seed tensor (stateless: equal seeds, equal draws).
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
    samples = keras.random.categorical(logits, 1, dtype="int32", seed=_TensorSeed(seed))
    return samples[:, 0]


@keras.saving.register_keras_serializable(package="kzoo")
class CodePrior(keras.Model):
    """Decoder-only transformer prior over flattened VQ code grids, unconditional or per class.

    `model(tokens)` maps int tokens `(B, L)` (a start token, then codes) to float32
    next-code logits `(B, L, codebook_size)`. Train with `fit` on
    `prepare_inputs(codes, labels)` (next-token cross-entropy is the default
    `compile` loss); sample with `sample`. Caption conditioning is not implemented.

    Args:
        codebook_size: number of codes `K` of the VQ tokenizer.
        grid_shape: `(h, w)` of the code grid (the tokenizer's latent grid).
        hidden_dim: transformer width.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        num_classes: None (unconditional) or the number of class labels.
        mlp_dim: MLP width; default `4 * hidden_dim`.
        dropout: dropout of the transformer blocks.
        **kwargs: base `keras.Model` arguments.

    Example:
    ```python
    prior = kzoo.models.CodePrior(codebook_size=256, grid_shape=(8, 8), num_classes=6)
    prior.compile(optimizer=keras.optimizers.AdamW(3e-4))
    prior.fit(*prior.prepare_inputs(vqgan.encode(images), labels), epochs=10)
    codes = prior.sample(labels=[0, 1, 2], temperature=1.0, top_k=32, seed=0)  # (3, 8, 8)
    ```
    """

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
        **kwargs,
    ):
        kwargs.setdefault("name", "code_prior")
        super().__init__(**kwargs)
        _check_positive_int(codebook_size, "codebook_size")
        if not (
            isinstance(grid_shape, list | tuple)
            and len(grid_shape) == 2
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in grid_shape)
        ):
            raise ValueError(
                f"`grid_shape` must be (height, width) of positive integers. "
                f"Received: grid_shape={grid_shape!r}"
            )
        _check_positive_int(hidden_dim, "hidden_dim")
        _check_positive_int(num_layers, "num_layers")
        _check_positive_int(num_heads, "num_heads")
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_dim`={hidden_dim}. "
                f"Received: num_heads={num_heads!r}"
            )
        if num_classes is not None:
            _check_positive_int(num_classes, "num_classes")
        self.codebook_size = codebook_size
        self.grid_shape = tuple(grid_shape)
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.sequence_length = grid_shape[0] * grid_shape[1]
        self.num_start_tokens = num_classes or 1
        self.vocabulary_size = codebook_size + self.num_start_tokens

        # === Layers ===
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(self.sequence_length, name="position_embedding")
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
        self.build((None, self.sequence_length))

    def build(self, input_shape):
        token_shape = (None, self.sequence_length)
        self.token_embedding.build(token_shape)
        self.position_embedding.build((*token_shape, self.hidden_dim))
        for block in self.blocks:
            block.build((*token_shape, self.hidden_dim))
        self.final_norm.build((*token_shape, self.hidden_dim))
        self.head.build((*token_shape, self.hidden_dim))
        self.built = True

    # === Forward ===
    def call(self, tokens, training=None):
        x = self.position_embedding(self.token_embedding(ops.cast(tokens, "int32")))
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(self.final_norm(x))  # (B, L, K) float32

    def start_tokens(self, labels=None, num_samples=None):
        """int32 `(B,)` start tokens: `codebook_size (+ label)`."""
        if self.num_classes is None:
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

    def prepare_inputs(self, codes, labels=None):
        """`(tokens, targets)` for `fit`: start token + codes[:-1], and the codes, `(B, h*w)`.

        Args:
            codes: int `(B, h, w)` code grids (`VQVAE.encode` / `VQGAN.encode`).
            labels: int `(B,)` class labels for a class-conditional prior.
        """
        codes = ops.cast(ops.convert_to_tensor(codes), "int32")
        if len(codes.shape) != 3 or tuple(codes.shape[1:]) != self.grid_shape:
            raise ValueError(
                f"`codes` must have shape (batch, {self.grid_shape[0]}, {self.grid_shape[1]}). "
                f"Received: codes.shape={tuple(codes.shape)}"
            )
        self._check_range(codes, self.codebook_size, "codes")
        starts = self.start_tokens(labels, num_samples=ops.shape(codes)[0])
        return prior_inputs(codes, starts)

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
    def sample(self, labels=None, num_samples=None, temperature=1.0, top_k=None, seed=0):
        """Sample code grids `(B, h, w)` int32 autoregressively in a bounded `fori_loop`.

        Args:
            labels: int `(B,)` class labels (class-conditional prior).
            num_samples: batch size (unconditional prior).
            temperature: softmax temperature, `> 0`.
            top_k: None or an int in `[1, codebook_size]`: sample among the top-k codes.
            seed: int or int32 scalar tensor; equal seeds give equal samples.

        Returns:
            int32 code grids `(B, h, w)`.
        """
        _check_sampling(temperature, top_k, self.codebook_size)
        starts = self.start_tokens(labels, num_samples)
        batch = ops.shape(starts)[0]
        length = self.sequence_length
        seed = ops.cast(seed, "int32")
        tokens = ops.concatenate(
            [starts[:, None], ops.zeros((batch, length), "int32")], axis=1
        )  # (B, L + 1): start token, then the codes as they are drawn
        columns = ops.arange(length + 1, dtype="int32")[None]

        def step(position, tokens):
            logits = self(tokens[:, :length], training=False)  # (B, L, K)
            step_logits = ops.take(logits, position, axis=1)  # (B, K)
            step_seed = ops.stack([seed, ops.cast(position, "int32")])
            codes = sample_logits(step_logits, step_seed, temperature, top_k)
            return ops.where(columns == position + 1, codes[:, None], tokens)

        tokens = ops.fori_loop(0, length, step, tokens)
        return ops.reshape(tokens[:, 1:], (batch, *self.grid_shape))

    # === Training ===
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with next-token cross-entropy and accuracy by default."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics is None:
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # === Export ===
    def next_token_logits(self, tokens):
        """Logits `(B, K)` of the code after the last of `tokens` `(B, L)`, `1 <= L <= h*w`."""
        return ops.take(self(tokens, training=False), ops.shape(tokens)[1] - 1, axis=1)

    def export_endpoints(self):
        """One LiteRT-friendly step: `next_token_logits` (tokens `(B, L)` -> logits `(B, K)`)."""
        spec = keras.InputSpec(shape=(None, None), dtype="int32", name="tokens")
        return {
            "next_token_logits": (
                lambda tokens: {"logits": self.next_token_logits(tokens)},
                [spec],
                {"tokens": (0, self.vocabulary_size - 1)},
            )
        }

    def export_parity_batch(self):
        tokens, _ = self.prepare_inputs(
            keras.random.randint((4, *self.grid_shape), 0, self.codebook_size, seed=0),
            None if self.num_classes is None else ops.arange(4) % self.num_classes,
        )
        return {"next_token_logits": {"tokens": ops.convert_to_numpy(tokens)}}

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
        }


@keras.saving.register_keras_serializable(package="kzoo")
class Generator(keras.Model):
    """A `CodePrior` and a VQ tokenizer: labels and a seed in, images out, as one endpoint.

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
    ```
    """

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
        _check_positive_int(max_batch, "max_batch")
        self.prior = prior
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_k = top_k
        self.max_batch = max_batch
        self.codebook_size = prior.codebook_size
        _check_sampling(temperature, top_k, prior.codebook_size)
        self.built = True

    def generate(self, labels=None, num_samples=None, seed=0):
        """Images `(B, H, W, C)` decoded from sampled code grids."""
        codes = self.prior.sample(
            labels, num_samples, temperature=self.temperature, top_k=self.top_k, seed=seed
        )
        return self.tokenizer.decode(codes)

    def call(self, labels):
        return self.generate(labels=labels)

    def export_endpoints(self):
        """The single endpoint `generate`: (labels or num_samples, seed) -> images."""
        seed = keras.InputSpec(shape=(), dtype="int32", name="seed")
        if self.prior.num_classes is None:
            count = keras.InputSpec(shape=(), dtype="int32", name="num_samples")
            return {
                "generate": (
                    lambda n, s: {"images": self.generate(num_samples=n, seed=s)},
                    [count, seed],
                    {"num_samples": (1, self.max_batch)},
                )
            }
        labels = keras.InputSpec(shape=(None,), dtype="int32", name="labels")
        return {
            "generate": (
                lambda y, s: {"images": self.generate(labels=y, seed=s)},
                [labels, seed],
                {"labels": (0, self.prior.num_classes - 1), "batch": self.max_batch},
            )
        }

    def export_parity_batch(self):
        seed = np.asarray(3, "int32")
        if self.prior.num_classes is None:
            return {"generate": {"num_samples": np.asarray(2, "int32"), "seed": seed}}
        labels = (np.arange(2) % self.prior.num_classes).astype("int32")
        return {"generate": {"labels": labels, "seed": seed}}

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
