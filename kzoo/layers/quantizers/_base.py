"""What every quantizer family shares: the `quantize_vectors` result, the base layers,
code statistics, the codebook-health metrics and the cross-replica sum.

The metrics follow the VQ-VAE literature's usual health checks: perplexity
(`exp` of the code-usage entropy), the fraction of codes used in a batch, and the
codes unused over an epoch (the dead codes SoundStream, Zeghidour et al. 2021,
https://arxiv.org/abs/2107.03312, Sec. 3.3, restarts).
"""

from typing import Any, NamedTuple

import keras
from keras import ops

from kzoo.layers.checks import is_number

NORM_EPSILON = 1e-6


class QuantizerOutput(NamedTuple):
    """What a quantizer's `quantize_vectors(inputs, training=False)` returns.

    Attributes:
        quantized: float32 `(..., embedding_dim)`, the inputs replaced by their codes
            (the value `call` returns, with the layer's gradient estimator).
        indices: int32 code indices, `inputs.shape[:-1]` (plus a trailing axis of
            size `num_quantizers`/`num_groups` for `ResidualVQ`/`GroupedVQ`).
        loss: float32 scalar, the loss `call` adds with `add_loss` (0 for `FSQ`).
    """

    quantized: Any
    indices: Any
    loss: Any


# === Cross-replica sum ===
def multi_replica_context():
    """The `tf.distribute` replica context if it spans more than one replica, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    # Layers import only keras at module level, so that they load on every backend.
    # Replicas exist only under TensorFlow's tf.distribute, and the context that
    # holds them is found at call time, so TensorFlow is imported here, on the
    # TensorFlow backend only (already loaded there: importing it costs nothing).
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    # None in a cross-replica context (a strategy's scope, outside `strategy.run`).
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def cross_replica_sum(tensors):
    """Sum `tensors` over the replicas of the active strategy (identity without one).

    Under a data-parallel strategy each replica sees its own shard of the batch, so
    statistics that update state (EMA counts and sums, k-means and restart draws)
    are summed across replicas, or the replicas' codebooks drift apart.

    Args:
        tensors: a list of tensors.

    Returns:
        A list of tensors of the same shapes: the sums over replicas, or `tensors`
        themselves with one replica (or outside `tf.distribute`).
    """
    context = multi_replica_context()
    if context is None:
        return list(tensors)
    return list(context.all_reduce("sum", list(tensors)))


# === Code statistics ===
def code_counts(indices, codebook_size):
    """How often each code occurs, per codebook.

    Args:
        indices: int tensor `(N,)` (one codebook) or `(N, C)` (C codebooks, e.g.
            the stages of a residual VQ).
        codebook_size: number of codes per codebook.

    Returns:
        float32 tensor `(C, codebook_size)` (`C = 1` for 1-D indices).
    """
    indices = ops.cast(indices, "int32")
    if len(indices.shape) == 1:
        indices = indices[:, None]
    num_codebooks = indices.shape[-1]
    # One segment_sum over (codebook, code) ids: no (N, K) one-hot.
    offsets = ops.arange(num_codebooks, dtype="int32") * codebook_size
    ids = ops.reshape(indices + offsets, (-1,))
    ones = ops.ones(ops.shape(ids), dtype="float32")
    counts = ops.segment_sum(ones, ids, num_segments=num_codebooks * codebook_size)
    return ops.reshape(counts, (num_codebooks, codebook_size))


def code_statistics(indices, codebook_size):
    """Perplexity and used fraction of the codebook for a batch of indices.

    Args:
        indices: int tensor of code indices (any shape, one codebook).
        codebook_size: number of codes.

    Returns:
        `(perplexity, usage)` float32 scalars.
    """
    counts = code_counts(ops.reshape(indices, (-1,)), codebook_size)
    perplexity, usage = perplexity_and_usage(counts)
    return perplexity, usage


def perplexity_and_usage(counts):
    """Mean over codebooks of exp(entropy) and of the used fraction; counts `(C, K)`."""
    probs = counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1.0)
    entropy = -ops.sum(probs * ops.log(ops.maximum(probs, 1e-10)), axis=-1)  # (C,)
    usage = ops.mean(ops.cast(counts > 0, "float32"), axis=-1)
    return ops.mean(ops.exp(entropy)), ops.mean(usage)


def l2_normalize(x):
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), NORM_EPSILON)


# === Argument checks ===
def check_non_negative(arg, value):
    if not is_number(value) or value < 0:
        raise ValueError(f"`{arg}` must be a non-negative number. Received: {arg}={value!r}")


def check_bool(arg, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{arg}` must be True or False. Received: {arg}={value!r}")


def check_input_dim(embedding_dim, input_shape):
    if input_shape[-1] != embedding_dim:
        raise ValueError(
            f"The last axis of the input must equal `embedding_dim`={embedding_dim}. "
            f"Received: input_shape={tuple(input_shape)}"
        )


# === Base layers ===
class _DeadCodes(keras.metrics.Metric):
    """Codebook entries no vector was assigned to since the last reset (an epoch in fit).

    Reports 0 until the first update, so evaluation (where quantizers record no
    statistics) does not show every code as dead.
    """

    def __init__(self, codebook_size, num_codebooks=1, name="dead_codes", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.counts = self.add_variable(
            shape=(num_codebooks * codebook_size,), initializer="zeros", name="counts"
        )

    def update_state(self, counts):
        self.counts.assign_add(ops.reshape(ops.cast(counts, self.dtype), (-1,)))

    def result(self):
        counts = ops.convert_to_tensor(self.counts)
        dead = ops.sum(ops.cast(counts == 0, self.dtype))
        return ops.where(ops.sum(counts) > 0, dead, ops.zeros_like(dead))

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "codebook_size": self.codebook_size,
            "num_codebooks": self.num_codebooks,
        }


class _Quantizer(keras.layers.Layer):
    """Shared pieces: float32 by default and the codebook-health metrics.

    A subclass implements `quantize_vectors(inputs, training=False)` returning a
    `QuantizerOutput`; its `call` adds the loss and records the code usage. (Not
    `quantize`: Keras layers have that method for weight quantization, which
    `Model.quantize("int8")` calls on every layer with a mode.)
    """

    # Stages of ResidualVQ/GroupedVQ turn this off: their parent reports for all.
    _tracks_health = True

    def __init__(self, **kwargs):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def _create_health_metrics(self, codebook_size, num_codebooks=1):
        if not self._tracks_health:
            return
        self.perplexity_tracker = keras.metrics.Mean(name=f"{self.name}_perplexity")
        self.usage_tracker = keras.metrics.Mean(name=f"{self.name}_usage")
        self.dead_codes_tracker = _DeadCodes(
            codebook_size, num_codebooks, name=f"{self.name}_dead_codes"
        )

    def _update_health(self, counts):
        """Records per-batch perplexity/usage and epoch dead codes from `(C, K)` counts."""
        if not self._tracks_health:
            return
        perplexity, usage = perplexity_and_usage(counts)
        self.perplexity_tracker.update_state(perplexity)
        self.usage_tracker.update_state(usage)
        self.dead_codes_tracker.update_state(counts)

    def compute_output_shape(self, input_shape):
        return input_shape


class _ImplicitQuantizer(_Quantizer):
    """FSQ/LFQ: a fixed code grid, optional Dense projections around it."""

    def _create_projections(self, embedding_dim, code_dim):
        self._projected = embedding_dim != code_dim
        if self._projected:
            self.project_in = keras.layers.Dense(code_dim, dtype="float32", name="project_in")
            self.project_out = keras.layers.Dense(
                embedding_dim, dtype="float32", name="project_out"
            )

    def build(self, input_shape):
        check_input_dim(self.embedding_dim, input_shape)
        if self._projected:
            self.project_in.build((None, self.embedding_dim))
            self.project_out.build((None, self._code_size))

    def _project_in(self, inputs):
        inputs = ops.cast(inputs, "float32")
        return self.project_in(inputs) if self._projected else inputs

    def _project_out(self, codes):
        return self.project_out(codes) if self._projected else codes

    @property
    def codebook(self):
        """The implicit codebook in code space: `(codebook_size, code size)` float32."""
        return self._codes_from_indices(ops.arange(self.codebook_size, dtype="int32"))

    def lookup(self, indices):
        """Vectors `(..., embedding_dim)` for integer `indices`."""
        return self._project_out(self._codes_from_indices(ops.cast(indices, "int32")))
