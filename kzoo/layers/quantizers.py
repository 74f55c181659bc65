"""Vector quantizers: map continuous vectors to the nearest entry of a codebook.

- VQ-VAE, straight-through estimator and codebook/commitment losses:
  van den Oord et al. 2017, https://arxiv.org/abs/1711.00937 (Eq. 3).
- EMA codebook updates with Laplace-smoothed cluster sizes: the same paper,
  Appendix A.1, as implemented in DeepMind's sonnet `VectorQuantizerEMA`.

The nearest-code search uses `ops.top_k(-distances, k=1)`: `argmin` lowers to a
Flex op that LiteRT interpreters do not run.
"""

import keras
from keras import ops


def nearest_code(flat_inputs, codebook):
    """Index of the nearest codebook row for each input row (squared L2).

    Args:
        flat_inputs: float tensor `(N, D)`.
        codebook: float tensor `(K, D)`.

    Returns:
        int32 tensor `(N,)`.
    """
    # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every code,
    # so the nearest code maximises 2 x.e - ||e||^2: one matmul, no (N, K, D) tensor.
    scores = 2.0 * ops.matmul(flat_inputs, ops.transpose(codebook)) - ops.sum(
        ops.square(codebook), axis=-1
    )  # (N, K)
    _, indices = ops.top_k(scores, k=1)
    return ops.cast(indices[:, 0], "int32")


def code_statistics(indices, codebook_size):
    """Perplexity and used fraction of the codebook for a batch of indices."""
    counts = ops.bincount(ops.reshape(indices, (-1,)), minlength=codebook_size)
    counts = ops.cast(counts[:codebook_size], "float32")
    probs = counts / ops.maximum(ops.sum(counts), 1.0)
    entropy = -ops.sum(probs * ops.log(ops.maximum(probs, 1e-10)))
    usage = ops.mean(ops.cast(counts > 0, "float32"))
    return ops.exp(entropy), usage


@keras.saving.register_keras_serializable(package="kzoo")
class VectorQuantizer(keras.layers.Layer):
    """Vector quantizer with a straight-through gradient estimator.

    `call(x)` replaces every vector along the last axis of `x` by its nearest
    codebook entry, returns the straight-through tensor `x + stop_gradient(q - x)`
    and adds `codebook_cost * ||sg(x) - q||^2 + commitment_cost * ||x - sg(q)||^2`
    (Eq. 3 of the VQ-VAE paper) with `add_loss`. With `decay` set, the codebook
    is instead an exponential moving average of the vectors assigned to each code
    (no codebook loss, no gradient to the codebook).

    The layer always computes in float32, also under a `mixed_float16` policy:
    half-precision distances overflow. During training it reports the codebook
    perplexity and the fraction of codes used in the batch as metrics
    `<name>_perplexity` and `<name>_usage`.

    Args:
        codebook_size: number of codes, `K >= 1`.
        embedding_dim: size of each code vector; must equal the input's last axis.
        commitment_cost: weight of the commitment loss, `>= 0`.
        codebook_cost: weight of the codebook loss, `>= 0` (unused with `decay`).
        decay: `None` for a codebook learned by gradient descent, or a float in
            `(0, 1)` for EMA updates.
        epsilon: Laplace smoothing of the EMA cluster sizes.
        **kwargs: base layer arguments (`name`, ...). `dtype` defaults to float32.

    Example:
    ```python
    vq = kzoo.layers.VectorQuantizer(codebook_size=512, embedding_dim=64)
    quantized = vq(latents)            # (B, H, W, 64), straight-through
    indices = vq.get_code_indices(latents)  # (B, H, W) int32
    vectors = vq.lookup(indices)            # (B, H, W, 64)
    ```
    """

    def __init__(
        self,
        codebook_size,
        embedding_dim,
        commitment_cost=0.25,
        codebook_cost=1.0,
        decay=None,
        epsilon=1e-5,
        **kwargs,
    ):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        _check_positive_int("codebook_size", codebook_size)
        _check_positive_int("embedding_dim", embedding_dim)
        for arg, value in (("commitment_cost", commitment_cost), ("codebook_cost", codebook_cost)):
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(
                    f"`{arg}` must be a non-negative number. Received: {arg}={value!r}"
                )
        if decay is not None and not (isinstance(decay, int | float) and 0.0 < decay < 1.0):
            raise ValueError(
                f"`decay` must be None or a float in (0, 1). Received: decay={decay!r}"
            )
        if not (isinstance(epsilon, int | float) and epsilon > 0):
            raise ValueError(f"`epsilon` must be a positive float. Received: epsilon={epsilon!r}")
        self.codebook_size = int(codebook_size)
        self.embedding_dim = int(embedding_dim)
        self.commitment_cost = float(commitment_cost)
        self.codebook_cost = float(codebook_cost)
        self.decay = None if decay is None else float(decay)
        self.epsilon = float(epsilon)
        prefix = self.name
        self.perplexity_tracker = keras.metrics.Mean(name=f"{prefix}_perplexity")
        self.usage_tracker = keras.metrics.Mean(name=f"{prefix}_usage")

    def build(self, input_shape):
        if input_shape[-1] != self.embedding_dim:
            raise ValueError(
                f"The last axis of the input must equal `embedding_dim`={self.embedding_dim}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.codebook = self.add_weight(
            name="codebook",
            shape=(self.codebook_size, self.embedding_dim),
            initializer=keras.initializers.VarianceScaling(
                scale=1.0, mode="fan_out", distribution="uniform"
            ),
            trainable=self.decay is None,
        )
        if self.decay is not None:
            self.ema_cluster_size = self.add_weight(
                name="ema_cluster_size",
                shape=(self.codebook_size,),
                # Ones with sums equal to the codebook keep every code where it is
                # until data arrives; unused codes then stay put instead of
                # collapsing to zero.
                initializer="ones",
                trainable=False,
            )
            self.ema_embed_sum = self.add_weight(
                name="ema_embed_sum",
                shape=(self.codebook_size, self.embedding_dim),
                initializer="zeros",
                trainable=False,
            )
            self.ema_embed_sum.assign(ops.convert_to_tensor(self.codebook))

    def call(self, inputs, training=None):
        inputs = ops.cast(inputs, "float32")
        flat = ops.reshape(inputs, (-1, self.embedding_dim))  # (N, D)
        indices = nearest_code(flat, self.codebook)  # (N,)
        # Look up before the EMA update so output, loss and indices agree (sonnet order).
        quantized = ops.reshape(ops.take(self.codebook, indices, axis=0), ops.shape(inputs))
        if training and self.decay is not None:
            self._ema_update(flat, indices)

        commitment = ops.mean(ops.square(inputs - ops.stop_gradient(quantized)))
        loss = self.commitment_cost * commitment
        if self.decay is None:
            codebook_loss = ops.mean(ops.square(ops.stop_gradient(inputs) - quantized))
            loss = loss + self.codebook_cost * codebook_loss
        self.add_loss(loss)

        if training:
            perplexity, usage = code_statistics(indices, self.codebook_size)
            self.perplexity_tracker.update_state(perplexity)
            self.usage_tracker.update_state(usage)
        # Straight-through: forward value is `quantized`, gradient flows to `inputs`.
        return inputs + ops.stop_gradient(quantized - inputs)

    def _ema_update(self, flat, indices):
        counts = ops.cast(ops.bincount(indices, minlength=self.codebook_size), "float32")
        counts = counts[: self.codebook_size]
        # segment_sum over code ids beats a one-hot (N, K) matmul on CPU (NOTES.md).
        sums = ops.segment_sum(flat, indices, num_segments=self.codebook_size)  # (K, D)
        decay = self.decay
        cluster_size = decay * self.ema_cluster_size + (1.0 - decay) * counts
        embed_sum = decay * self.ema_embed_sum + (1.0 - decay) * sums
        self.ema_cluster_size.assign(cluster_size)
        self.ema_embed_sum.assign(embed_sum)
        total = ops.sum(cluster_size)
        smoothed = (
            (cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        )
        self.codebook.assign(embed_sum / smoothed[:, None])

    def get_code_indices(self, inputs):
        """Nearest-code indices, int32 of shape `inputs.shape[:-1]`."""
        inputs = ops.cast(inputs, "float32")
        flat = ops.reshape(inputs, (-1, self.embedding_dim))
        indices = nearest_code(flat, self.codebook)
        return ops.reshape(indices, ops.shape(inputs)[:-1])

    def lookup(self, indices):
        """Code vectors for integer `indices`: shape `indices.shape + (embedding_dim,)`."""
        return ops.take(self.codebook, ops.cast(indices, "int32"), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "codebook_size": self.codebook_size,
                "embedding_dim": self.embedding_dim,
                "commitment_cost": self.commitment_cost,
                "codebook_cost": self.codebook_cost,
                "decay": self.decay,
                "epsilon": self.epsilon,
            }
        )
        return config


def _check_positive_int(arg, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={value!r}")
