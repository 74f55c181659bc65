"""Quantizers: map continuous vectors to discrete codes (VQ, residual, grouped, FSQ, LFQ).

Papers, and the part of each that the code follows:
- VQ-VAE, straight-through estimator and codebook/commitment losses:
  van den Oord et al. 2017, https://arxiv.org/abs/1711.00937 (Eq. 3).
- EMA codebook updates with Laplace-smoothed cluster sizes: the same paper,
  Appendix A.1, as implemented in DeepMind's sonnet `VectorQuantizerEMA`.
- k-means codebook initialisation and dead-code restart: SoundStream,
  Zeghidour et al. 2021, https://arxiv.org/abs/2107.03312 (Sec. 3.3), also
  Jukebox, Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341 (random
  restarts).
- Cosine-similarity (l2-normalised) and low-dimensional factorised codes:
  ViT-VQGAN, Yu et al. 2021, https://arxiv.org/abs/2110.04627 (Sec. 3.2).
- Orthogonal codebook regularisation: Shin et al. 2021,
  https://arxiv.org/abs/2112.00384 (Eq. 2), as in lucidrains'
  vector-quantize-pytorch.
- Rotation trick gradient estimator: Fifty et al. 2024,
  https://arxiv.org/abs/2410.06424 (Sec. 4.2).
- Residual VQ with quantizer dropout: SoundStream (Sec. 3.3, Algorithm 1);
  dropout applied with a probability: DAC, Kumar et al. 2023,
  https://arxiv.org/abs/2306.06546.
- Grouped (product) quantization: wav2vec 2.0, Baevski et al. 2020,
  https://arxiv.org/abs/2006.11477 (Sec. 2).
- Finite scalar quantization: Mentzer et al. 2023, https://arxiv.org/abs/2309.15505
  (Sec. 3 and the reference code in its appendix).
- Lookup-free quantization with an entropy penalty: MAGVIT-v2, Yu et al. 2023,
  https://arxiv.org/abs/2310.05737 (Sec. 3.1).

Conventions shared by every quantizer here: computation in float32 (also under
`mixed_float16`); `get_code_indices(x)` returns int32 indices of shape
`x.shape[:-1]` (plus a trailing axis of size `num_quantizers`/`num_groups` for
`ResidualVQ`/`GroupedVQ`); `lookup(indices)` maps indices back to vectors of the
input's size; state updates (EMA, k-means, dead-code restart) run only when
called with `training=True`, and so do the `<name>_perplexity`, `<name>_usage`
and `<name>_dead_codes` metrics. The nearest-code search uses
`ops.top_k(scores, k=1)`: `argmin`/`argmax` lower to a Flex op that LiteRT
interpreters do not run.
"""

import itertools
import math

import keras
import numpy as np
from keras import ops

from kzoo.layers.checks import check_positive_int, is_number

# Under a data-parallel strategy each replica sees its own shard, so the EMA
# statistics must be summed across replicas or the codebooks drift apart.
# Layers cannot import TensorFlow; `kzoo.training.distribute` installs the
# backend's all-reduce here when it creates a multi-device strategy.
_cross_replica_sum = None


def set_cross_replica_sum(fn):
    """Install `fn(list_of_tensors) -> list_of_tensors`, summing across replicas (None: off)."""
    global _cross_replica_sum
    _cross_replica_sum = fn


def cross_replica_sum(tensors):
    """Sum `tensors` over the replicas of the active strategy (identity without one)."""
    return list(tensors) if _cross_replica_sum is None else list(_cross_replica_sum(tensors))


GRADIENT_ESTIMATORS = ("ste", "rotation")
_NORM_EPSILON = 1e-6
# Codes the matmul ranks first and `nearest_code` compares again by direct distance;
# the nearest code was among the first 4 for every latent measured (see there).
_NEAREST_CANDIDATES = 4
# Name scope of the search's ops, so an exporter can find them: full-integer LiteRT
# keeps them in float32 (`kzoo.export.litert`).
NEAREST_CODE_SCOPE = "nearest_code"


def nearest_code(flat_inputs, codebook, refine=True):
    """Index of the nearest codebook row for each input row (squared L2).

    Its ops are named under `NEAREST_CODE_SCOPE`.

    Args:
        flat_inputs: float tensor `(N, D)`.
        codebook: float tensor `(K, D)`.
        refine: compare the best-scored codes again by their direct distance, so the
            choice does not depend on the kernels' summation order (see below). Training
            passes False: the other code of a near tie serves as well there, and the
            second comparison made the `vq_fwd_bwd_ste` benchmark step 1.6x slower.

    Returns:
        int32 tensor `(N,)`.
    """
    with keras.name_scope(NEAREST_CODE_SCOPE):
        return _nearest_code(flat_inputs, codebook, refine)


def _nearest_code(flat_inputs, codebook, refine):
    # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every code,
    # so the nearest code maximises 2 x.e - ||e||^2: one matmul, no (N, K, D) tensor.
    scores = 2.0 * ops.matmul(flat_inputs, ops.transpose(codebook)) - ops.sum(
        ops.square(codebook), axis=-1
    )  # (N, K)
    if not refine:
        _, indices = ops.top_k(scores, k=1)
        return ops.cast(indices[:, 0], "int32")
    # That score is of the size of ||e||^2, so its float32 rounding depends on the
    # summation order, which differs between kernels (eager and graph, CPUs, LiteRT):
    # on the trained vqvae_shapes it errs by up to 3.3e-5, more than the gap between
    # the two nearest codes at 0.33% of the latents. The best-scored codes are compared
    # again by sum((x - e)^2), whose rounding is relative to the small distance itself.
    # On the 131,072 test-split latents of that model the choices then equal a float64
    # search (31 differed with the matmul alone), do not change with the summation
    # order (44 did), and 1 changes with 1e-6 noise on the inputs (31 did).
    num_candidates = min(_NEAREST_CANDIDATES, codebook.shape[0])
    _, candidates = ops.top_k(scores, k=num_candidates)  # (N, c)
    offsets = flat_inputs[:, None, :] - ops.take(codebook, candidates, axis=0)  # (N, c, D)
    _, best = ops.top_k(-ops.sum(ops.square(offsets), axis=-1), k=1)  # (N, 1)
    return ops.cast(ops.take_along_axis(candidates, best, axis=1)[:, 0], "int32")


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
    perplexity, usage = _perplexity_and_usage(counts)
    return perplexity, usage


def _perplexity_and_usage(counts):
    """Mean over codebooks of exp(entropy) and of the used fraction; counts `(C, K)`."""
    probs = counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1.0)
    entropy = -ops.sum(probs * ops.log(ops.maximum(probs, 1e-10)), axis=-1)  # (C,)
    usage = ops.mean(ops.cast(counts > 0, "float32"), axis=-1)
    return ops.mean(ops.exp(entropy)), ops.mean(usage)


def rotation_trick(vectors, codes):
    """Rotation-trick estimator: forward value `codes`, gradient rotated onto `vectors`.

    Fifty et al. 2024, https://arxiv.org/abs/2410.06424 (Sec. 4.2): each vector
    `e` is mapped to its code `q` by `q~ = sg(||q|| / ||e|| * R) e`, where
    `R = I - 2 r r^T + 2 q^ e^T` (with `e^ = e/||e||`, `q^ = q/||q||`,
    `r = (e^ + q^)/||e^ + q^||`) rotates `e^` onto `q^` with one Householder
    reflection and a rank-one term. `R` and the scale are constants for the
    gradient, so `dL/de = ||q||/||e|| R^T dL/dq`: the gradient keeps its angle to
    the code instead of being copied (straight-through). The forward value is
    `codes` exactly (in exact arithmetic `||q||/||e|| R e = q`), so it matches the
    looked-up codes bit for bit.

    Args:
        vectors: float tensor `(..., D)`, the encoder outputs `e`.
        codes: float tensor `(..., D)`, their codes `q` (treated as constants).

    Returns:
        float tensor `(..., D)` equal to `codes`, with the rotated gradient to
        `vectors`.
    """
    codes = ops.stop_gradient(codes)
    vector_norm = ops.maximum(ops.norm(vectors, axis=-1, keepdims=True), _NORM_EPSILON)
    code_norm = ops.norm(codes, axis=-1, keepdims=True)
    unit_vectors = ops.stop_gradient(vectors / vector_norm)  # e^
    unit_codes = codes / ops.maximum(code_norm, _NORM_EPSILON)  # q^
    scale = ops.stop_gradient(code_norm / vector_norm)
    # ||e^ + q^||^2 / 2 = 1 + cos(e, q); clamped where e and q point apart.
    half_sum_norm_sq = ops.maximum(
        1.0 + ops.sum(unit_vectors * unit_codes, axis=-1, keepdims=True), _NORM_EPSILON
    )

    # The forward value is the codes themselves, so only the backward pass is
    # written out: no rotated copy of the input is computed and then discarded.
    @ops.custom_gradient
    def rotate(vectors):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # R^T g = g - 2 r (r.g) + 2 e^ (q^.g), with 2 r r^T = (e^+q^)(e^+q^)^T / (1+cos).
            along_vectors = ops.sum(unit_vectors * upstream, axis=-1, keepdims=True)
            along_codes = ops.sum(unit_codes * upstream, axis=-1, keepdims=True)
            return scale * (
                upstream
                - (unit_vectors + unit_codes) * ((along_vectors + along_codes) / half_sum_norm_sq)
                + 2.0 * unit_vectors * along_codes
            )

        return ops.copy(codes), grad

    return rotate(vectors)


def straight_through(vectors, codes):
    """Straight-through estimator: forward value `codes`, identity gradient to `vectors`."""
    return vectors + ops.stop_gradient(codes - vectors)


_ESTIMATOR_FNS = {"ste": straight_through, "rotation": rotation_trick}


def _l2_normalize(x):
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), _NORM_EPSILON)


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
    """Shared pieces: float32 by default and the codebook-health metrics."""

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
        perplexity, usage = _perplexity_and_usage(counts)
        self.perplexity_tracker.update_state(perplexity)
        self.usage_tracker.update_state(usage)
        self.dead_codes_tracker.update_state(counts)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kzoo")
class VectorQuantizer(_Quantizer):
    """Vector quantizer with EMA, k-means init, dead-code restart, cosine and factorised codes.

    `call(x)` replaces every vector along the last axis of `x` by its nearest
    codebook entry and returns it with a gradient estimator (straight-through by
    default: `x + stop_gradient(q - x)`). It adds
    `codebook_cost * ||sg(x) - q||^2 + commitment_cost * ||x - sg(q)||^2`
    (Eq. 3 of the VQ-VAE paper) with `add_loss`, plus the orthogonal
    regulariser when enabled. With `decay` set, the codebook is instead an
    exponential moving average of the vectors assigned to each code (no codebook
    loss, no gradient to the codebook).

    The layer always computes in float32, also under a `mixed_float16` policy:
    half-precision distances overflow. During training it reports the codebook
    perplexity and the fraction of codes used in the batch (both averaged over
    the batches of an epoch), and the number of codes no vector was assigned to
    since the metrics were reset (each epoch in `fit`), as metrics
    `<name>_perplexity`, `<name>_usage` and `<name>_dead_codes`. EMA, k-means
    and restart updates also run only with `training=True`. Under a
    data-parallel strategy from `kzoo.training.distribute`, code counts are
    summed and random draws (k-means seeds, restarted codes) averaged across
    replicas, so every replica keeps the same codebook.

    Args:
        codebook_size: number of codes, `K >= 1`.
        embedding_dim: size of the input vectors (the input's last axis).
        commitment_cost: weight of the commitment loss, `>= 0`.
        codebook_cost: weight of the codebook loss, `>= 0` (unused with `decay`).
        decay: `None` for a codebook learned by gradient descent, or a float in
            `(0, 1)` for EMA updates (VQ-VAE Appendix A.1, sonnet
            `VectorQuantizerEMA`, https://arxiv.org/abs/1711.00937).
        epsilon: Laplace smoothing of the EMA cluster sizes.
        kmeans_init: initialise the codebook by k-means on the first training
            batch (`kmeans_iters` Lloyd iterations from random batch vectors),
            once; a non-trainable `initialized` flag saved with the weights
            records that it ran (SoundStream, https://arxiv.org/abs/2107.03312,
            Sec. 3.3). The batch should hold at least `codebook_size` vectors.
        kmeans_iters: Lloyd iterations of the k-means initialisation.
        dead_code_threshold: `0` disables restarts. Otherwise a code whose usage,
            an EMA of its assignments per training step over about
            `dead_code_window` steps, falls below this threshold is re-seeded with
            a random encoder output of the current batch (SoundStream Sec. 3.3,
            Jukebox https://arxiv.org/abs/2005.00341). A new or re-seeded code gets
            `dead_code_window` steps of grace. The unit is vectors per batch
            (1.0: fewer than one vector per batch on average), so it scales with
            the batch size. Draws come from a seeded `SeedGenerator`, so restarts
            are deterministic given `seed`.
        dead_code_window: length in training steps of the usage window (the EMA
            decay is `1 - 1 / dead_code_window`).
        use_cosine: l2-normalise inputs and codes, so the search maximises cosine
            similarity and codes lie on the unit sphere (ViT-VQGAN,
            https://arxiv.org/abs/2110.04627, Sec. 3.2).
        code_dim: `None`, or the size of factorised codes: inputs are projected
            (Dense) to `code_dim`, quantized there, and projected back to
            `embedding_dim` (ViT-VQGAN Sec. 3.2). Losses are computed in code space.
        orthogonal_reg_weight: weight of the orthogonal regulariser
            `||C C^T||_F^2 / K^2 - 1 / K` on the l2-normalised codebook `C`
            (Shin et al. 2021, https://arxiv.org/abs/2112.00384, Eq. 2); needs a
            codebook learned by gradient descent (`decay=None`).
        gradient_estimator: `"ste"` (straight-through) or `"rotation"` (rotation
            trick, Fifty et al. 2024, https://arxiv.org/abs/2410.06424, Sec. 4.2:
            see `rotation_trick`).
        seed: int seed of the random draws of k-means and restarts, or None.
        **kwargs: base layer arguments (`name`, ...). `dtype` defaults to float32.

    Example:
    ```python
    vq = kzoo.layers.VectorQuantizer(
        codebook_size=512, embedding_dim=64, decay=0.99, kmeans_init=True,
        dead_code_threshold=1.0, gradient_estimator="rotation", seed=0,
    )
    quantized = vq(latents, training=True)  # (B, H, W, 64)
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
        kmeans_init=False,
        kmeans_iters=10,
        dead_code_threshold=0.0,
        dead_code_window=100,
        use_cosine=False,
        code_dim=None,
        orthogonal_reg_weight=0.0,
        gradient_estimator="ste",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("codebook_size", codebook_size)
        check_positive_int("embedding_dim", embedding_dim)
        for arg, value in (
            ("commitment_cost", commitment_cost),
            ("codebook_cost", codebook_cost),
            ("dead_code_threshold", dead_code_threshold),
            ("orthogonal_reg_weight", orthogonal_reg_weight),
        ):
            _check_non_negative(arg, value)
        if decay is not None and not (is_number(decay) and 0.0 < decay < 1.0):
            raise ValueError(
                f"`decay` must be None or a float in (0, 1). Received: decay={decay!r}"
            )
        if not (is_number(epsilon) and epsilon > 0):
            raise ValueError(f"`epsilon` must be a positive float. Received: epsilon={epsilon!r}")
        _check_bool("kmeans_init", kmeans_init)
        _check_bool("use_cosine", use_cosine)
        check_positive_int("kmeans_iters", kmeans_iters)
        check_positive_int("dead_code_window", dead_code_window)
        if code_dim is not None:
            check_positive_int("code_dim", code_dim)
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(
                f"`gradient_estimator` must be one of {GRADIENT_ESTIMATORS}. "
                f"Received: gradient_estimator={gradient_estimator!r}"
            )
        if orthogonal_reg_weight > 0 and decay is not None:
            raise ValueError(
                "`orthogonal_reg_weight` needs a codebook learned by gradient descent "
                f"(decay=None); an EMA codebook gets no gradient. Received: "
                f"orthogonal_reg_weight={orthogonal_reg_weight!r} with decay={decay!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an int. Received: seed={seed!r}")
        self.codebook_size = int(codebook_size)
        self.embedding_dim = int(embedding_dim)
        self.commitment_cost = float(commitment_cost)
        self.codebook_cost = float(codebook_cost)
        self.decay = None if decay is None else float(decay)
        self.epsilon = float(epsilon)
        self.kmeans_init = kmeans_init
        self.kmeans_iters = int(kmeans_iters)
        self.dead_code_threshold = float(dead_code_threshold)
        self.dead_code_window = int(dead_code_window)
        self.use_cosine = use_cosine
        self.code_dim = None if code_dim is None else int(code_dim)
        self.orthogonal_reg_weight = float(orthogonal_reg_weight)
        self.gradient_estimator = gradient_estimator
        self.seed = seed
        self._code_size = self.code_dim or self.embedding_dim
        self._usage_decay = 1.0 - 1.0 / self.dead_code_window
        # A fresh code is dead after `dead_code_window` unused steps: the usage EMA
        # starts where `window` decays bring it just below the threshold.
        self._initial_usage = (
            self.dead_code_threshold
            if self.dead_code_window == 1
            else self.dead_code_threshold / self._usage_decay ** (self.dead_code_window - 0.5)
        )

        # === Layers ===
        if self.code_dim is not None:
            self.project_in = keras.layers.Dense(self.code_dim, dtype="float32", name="project_in")
            self.project_out = keras.layers.Dense(
                self.embedding_dim, dtype="float32", name="project_out"
            )
        if self.kmeans_init or self.dead_code_threshold > 0:
            self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._create_health_metrics(self.codebook_size)

    def build(self, input_shape):
        if input_shape[-1] != self.embedding_dim:
            raise ValueError(
                f"The last axis of the input must equal `embedding_dim`={self.embedding_dim}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        # The codebook is created first so it is variable "0" of every checkpoint
        # (load_own_variables checks its shape).
        self.codebook = self.add_weight(
            name="codebook",
            shape=(self.codebook_size, self._code_size),
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
                shape=(self.codebook_size, self._code_size),
                initializer="zeros",
                trainable=False,
            )
            self.ema_embed_sum.assign(ops.convert_to_tensor(self.codebook))
        if self.kmeans_init:
            self.initialized = self.add_weight(
                name="initialized", shape=(), initializer="zeros", trainable=False
            )
        if self.dead_code_threshold > 0:
            self.code_usage = self.add_weight(
                name="code_usage",
                shape=(self.codebook_size,),
                initializer=keras.initializers.Constant(self._initial_usage),
                trainable=False,
            )
        if self.code_dim is not None:
            self.project_in.build((None, self.embedding_dim))
            self.project_out.build((None, self.code_dim))

    # === Forward ===
    def call(self, inputs, training=None):
        outputs, indices, loss = self._quantize_with_estimator(inputs, training)
        self.add_loss(loss)
        if training:
            self._update_health(code_counts(indices, self.codebook_size))
        return outputs

    def _quantize_with_estimator(self, inputs, training):
        """`(outputs (..., embedding_dim), flat indices (N,), loss)` for one call."""
        inputs = ops.cast(inputs, "float32")
        lead_shape = ops.shape(inputs)[:-1]
        flat, quantized, indices, loss = self._quantize(inputs, training)
        outputs = _ESTIMATOR_FNS[self.gradient_estimator](flat, quantized)  # (N, code)
        outputs = self._project_out(ops.reshape(outputs, (*lead_shape, self._code_size)))
        return outputs, indices, loss

    def _quantize(self, inputs, training):
        """Search, state updates and losses in code space.

        Returns:
            `(flat, quantized, indices, loss)`: the `(N, code)` vectors searched,
            their `(N, code)` codes, `(N,)` int32 indices and the scalar loss.
        """
        flat = ops.reshape(self._project_in(inputs), (-1, self._code_size))  # (N, code)
        if training and self.kmeans_init:
            self._kmeans_init_once(flat)
        codes = self._codes()
        indices = nearest_code(flat, codes, refine=not training)  # (N,)
        # Look up before the EMA update so output, loss and indices agree (sonnet order).
        quantized = ops.take(codes, indices, axis=0)
        if training and (self.decay is not None or self.dead_code_threshold > 0):
            counts = code_counts(indices, self.codebook_size)[0]  # (K,) on this replica
            if self.decay is not None:
                counts = self._ema_update(flat, indices, counts)
            elif self.dead_code_threshold > 0:
                (counts,) = cross_replica_sum([counts])
            if self.dead_code_threshold > 0:
                self._restart_dead_codes(flat, counts)

        loss = self.commitment_cost * ops.mean(ops.square(flat - ops.stop_gradient(quantized)))
        if self.decay is None:
            codebook_loss = ops.mean(ops.square(ops.stop_gradient(flat) - quantized))
            loss = loss + self.codebook_cost * codebook_loss
        if self.orthogonal_reg_weight > 0:
            loss = loss + self.orthogonal_reg_weight * orthogonal_loss(self.codebook)
        return flat, quantized, indices, loss

    def _project_in(self, inputs):
        if self.code_dim is not None:
            inputs = self.project_in(inputs)
        return _l2_normalize(inputs) if self.use_cosine else inputs

    def _project_out(self, codes):
        return self.project_out(codes) if self.code_dim is not None else codes

    def _codes(self):
        codebook = ops.convert_to_tensor(self.codebook)
        return _l2_normalize(codebook) if self.use_cosine else codebook

    # === State updates (training only) ===
    def _ema_update(self, flat, indices, counts):
        """EMA step from this replica's `counts`; returns the counts summed over replicas."""
        # segment_sum over the code ids, not a one-hot (N, K) matmul: on CPU it was
        # the faster of the two when measured on this layer (TF 2.21).
        sums = ops.segment_sum(flat, indices, num_segments=self.codebook_size)  # (K, code)
        counts, sums = cross_replica_sum([ops.cast(counts, "float32"), sums])
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
        return counts

    def _kmeans_init_once(self, flat):
        done = self.initialized > 0.5
        # Replicas of a data-parallel strategy cannot all-reduce inside `cond` or a
        # loop: they start k-means from the same (replica-averaged) seeds outside
        # it, cluster their own shards, and average the centroids afterwards.
        synced = _cross_replica_sum is not None
        initial = (
            self._replica_mean(self._sample_rows(flat, self.codebook_size)) if synced else None
        )
        # Both branches return values and the assignments below are unconditional:
        # no side effects inside `cond`, so eager, graph and XLA agree.
        codebook = ops.cond(
            done,
            lambda: ops.convert_to_tensor(self.codebook),
            lambda: self._kmeans(flat, initial),
        )
        if synced:
            codebook = self._replica_mean(codebook)
            if self.use_cosine:
                codebook = _l2_normalize(codebook)
        self.codebook.assign(codebook)
        if self.decay is not None:
            self.ema_cluster_size.assign(
                ops.where(done, self.ema_cluster_size, ops.ones_like(self.ema_cluster_size))
            )
            self.ema_embed_sum.assign(ops.where(done, self.ema_embed_sum, codebook))
        if self.dead_code_threshold > 0:
            self.code_usage.assign(
                ops.where(
                    done, self.code_usage, ops.full_like(self.code_usage, self._initial_usage)
                )
            )
        self.initialized.assign(ops.ones_like(self.initialized))

    def _kmeans(self, flat, initial=None):
        """`kmeans_iters` Lloyd iterations from `initial` (default random rows of `flat`)."""
        size = self.codebook_size
        ones = ops.ones(ops.shape(flat)[:1], dtype="float32")

        def lloyd_step(_, centroids):
            indices = nearest_code(flat, centroids, refine=False)
            sums = ops.segment_sum(flat, indices, num_segments=size)
            counts = ops.segment_sum(ones, indices, num_segments=size)[:, None]
            means = sums / ops.maximum(counts, 1.0)
            if self.use_cosine:
                means = _l2_normalize(means)
            # An empty cluster keeps its centroid.
            return ops.where(counts > 0, means, centroids)

        if initial is None:
            initial = self._sample_rows(flat, size)
        elif self.use_cosine:
            initial = _l2_normalize(initial)
        return ops.fori_loop(0, self.kmeans_iters, lloyd_step, initial)

    def _restart_dead_codes(self, flat, counts):
        usage = self._usage_decay * self.code_usage + (1.0 - self._usage_decay) * counts
        dead = usage < self.dead_code_threshold  # (K,)
        zeros = ops.zeros((self.codebook_size, self._code_size), dtype="float32")
        fresh = ops.cond(
            ops.any(dead), lambda: self._sample_rows(flat, self.codebook_size), lambda: zeros
        )
        fresh = self._replica_mean(fresh)
        if self.use_cosine:
            fresh = _l2_normalize(fresh)
        dead_rows = dead[:, None]
        self.code_usage.assign(ops.where(dead, self._initial_usage, usage))
        self.codebook.assign(ops.where(dead_rows, fresh, self.codebook))
        if self.decay is not None:
            # A re-seeded code restarts from the EMA state of a fresh code.
            self.ema_cluster_size.assign(ops.where(dead, 1.0, self.ema_cluster_size))
            self.ema_embed_sum.assign(ops.where(dead_rows, fresh, self.ema_embed_sum))

    @staticmethod
    def _replica_mean(value):
        """Mean of `value` over replicas (itself without a strategy), so replicas agree.

        Random draws differ per replica (each has its own shard of the batch): a
        re-seeded code or k-means seed is the mean of one draw per replica.
        """
        total, replicas = cross_replica_sum([value, ops.ones((), dtype="float32")])
        return total / replicas

    def _sample_rows(self, flat, count):
        """`count` rows of `flat` drawn without replacement (cycling if N < count)."""
        num_rows = ops.shape(flat)[0]
        order = keras.random.shuffle(ops.arange(num_rows, dtype="int32"), seed=self.seed_generator)
        picks = ops.take(order, ops.mod(ops.arange(count, dtype="int32"), num_rows))
        return ops.take(flat, picks, axis=0)

    # === Codes ===
    def get_code_indices(self, inputs):
        """Nearest-code indices, int32 of shape `inputs.shape[:-1]`."""
        vectors, codes = self.search_vectors(inputs)
        indices = nearest_code(ops.reshape(vectors, (-1, self._code_size)), codes)
        return ops.reshape(indices, ops.shape(inputs)[:-1])

    def search_vectors(self, inputs):
        """What the nearest-code search compares: `(vectors, codes)`, both float32.

        `vectors` (shape `inputs.shape[:-1] + (code_dim or embedding_dim,)`) are the
        inputs after the `code_dim` projection and cosine normalisation, `codes` the
        `(codebook_size, code_dim or embedding_dim)` codebook in the same space.
        `get_code_indices` picks, for each vector, the code at the least squared L2
        distance; export parity uses both to tell a near tie from a wrong choice.
        """
        inputs = ops.cast(inputs, "float32")
        return self._project_in(inputs), self._codes()

    def lookup(self, indices):
        """Code vectors for integer `indices`: shape `indices.shape + (embedding_dim,)`."""
        return self._project_out(ops.take(self._codes(), ops.cast(indices, "int32"), axis=0))

    # === Saving ===
    def load_own_variables(self, store):
        expected = (self.codebook_size, self._code_size)
        if "0" in store.keys():
            found = tuple(store["0"].shape)
            if found != expected:
                raise ValueError(
                    f"Layer '{self.name}' cannot load a codebook of shape {found} (the "
                    f"checkpoint's codebook_size={found[0]}, code size {found[-1]}): it was "
                    f"built with codebook_size={self.codebook_size} and code size "
                    f"{self._code_size}. Build it with the checkpoint's codebook_size. "
                    f"Received: codebook_size={self.codebook_size}"
                )
        super().load_own_variables(store)

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
                "kmeans_init": self.kmeans_init,
                "kmeans_iters": self.kmeans_iters,
                "dead_code_threshold": self.dead_code_threshold,
                "dead_code_window": self.dead_code_window,
                "use_cosine": self.use_cosine,
                "code_dim": self.code_dim,
                "orthogonal_reg_weight": self.orthogonal_reg_weight,
                "gradient_estimator": self.gradient_estimator,
                "seed": self.seed,
            }
        )
        return config


def orthogonal_loss(codebook):
    """Orthogonal regulariser of Shin et al. 2021 (Eq. 2), https://arxiv.org/abs/2112.00384.

    Args:
        codebook: float tensor `(K, D)`.

    Returns:
        `||C C^T||_F^2 / K^2 - 1 / K` for the row-normalised codebook `C`: 0 when
        the codes are orthogonal (possible only for `K <= D`).
    """
    normed = _l2_normalize(ops.cast(codebook, "float32"))
    size = ops.shape(normed)[0]
    cosine = ops.matmul(normed, ops.transpose(normed))  # (K, K)
    return ops.sum(ops.square(cosine)) / (size * size) - 1.0 / size


# Options of VectorQuantizer that ResidualVQ and GroupedVQ pass to each stage/group.
_VQ_OPTIONS = {
    "commitment_cost": 0.25,
    "codebook_cost": 1.0,
    "decay": None,
    "epsilon": 1e-5,
    "kmeans_init": False,
    "kmeans_iters": 10,
    "dead_code_threshold": 0.0,
    "dead_code_window": 100,
    "use_cosine": False,
    "code_dim": None,
    "orthogonal_reg_weight": 0.0,
    "gradient_estimator": "ste",
}


class _StageQuantizer(VectorQuantizer):
    """A VectorQuantizer inside ResidualVQ/GroupedVQ: the parent reports the metrics."""

    _tracks_health = False


def _split_vq_options(kwargs):
    options = {key: kwargs.pop(key, default) for key, default in _VQ_OPTIONS.items()}
    return options, kwargs


def _stage_seed(seed, index):
    return None if seed is None else seed + 1 + index


@keras.saving.register_keras_serializable(package="kzoo")
class ResidualVQ(_Quantizer):
    """Residual vector quantization: each stage quantizes what the previous ones left.

    SoundStream, Zeghidour et al. 2021, https://arxiv.org/abs/2107.03312
    (Sec. 3.3, Algorithm 1): stage `i` quantizes the residual
    `r_i = x - sum_{j<i} q_j` with its own `VectorQuantizer` (or one shared
    codebook), and the output is `sum_i q_i`. The estimator (straight-through or
    rotation trick, `gradient_estimator`) maps `x` onto that sum once, so the
    encoder receives an unscaled gradient; each stage adds its own commitment /
    codebook losses on its residual, and code-space projections (`code_dim`)
    learn through the sum.

    Quantizer dropout (variable bitrate): during training each example, with
    probability `quantizer_dropout`, keeps only its first `n ~ U{1..num_quantizers}`
    stages in the output (SoundStream; applied with a probability as in DAC,
    Kumar et al. 2023, https://arxiv.org/abs/2306.06546). Every stage still
    learns on its full residual, so codebooks keep seeing the distribution they
    quantize at full bitrate.

    Args:
        num_quantizers: number of stages, `>= 1`.
        codebook_size: codes per stage.
        embedding_dim: size of the input vectors.
        shared_codebook: one codebook (one `VectorQuantizer`) for every stage.
        quantizer_dropout: probability in `[0, 1]` that a training example uses a
            random number of stages.
        seed: int seed of the dropout draws and of the stages' k-means/restart
            draws (stage `i` uses `seed + 1 + i`), or None.
        **kwargs: `VectorQuantizer` options applied to every stage
            (`commitment_cost`, `codebook_cost`, `decay`, `epsilon`, `kmeans_init`,
            `kmeans_iters`, `dead_code_threshold`, `dead_code_window`,
            `use_cosine`, `code_dim`, `orthogonal_reg_weight`,
            `gradient_estimator`), then base layer arguments (`name`, ...).

    Example:
    ```python
    rvq = kzoo.layers.ResidualVQ(4, codebook_size=256, embedding_dim=64, decay=0.99,
                                 quantizer_dropout=0.5)
    quantized = rvq(latents, training=True)  # (B, T, 64)
    indices = rvq.get_code_indices(latents)  # (B, T, 4) int32
    coarse = rvq.lookup(indices[..., :2])    # decode with the first 2 stages only
    ```
    """

    def __init__(
        self,
        num_quantizers,
        codebook_size,
        embedding_dim,
        shared_codebook=False,
        quantizer_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        vq_options, kwargs = _split_vq_options(kwargs)
        super().__init__(**kwargs)
        check_positive_int("num_quantizers", num_quantizers)
        _check_bool("shared_codebook", shared_codebook)
        if not (is_number(quantizer_dropout) and 0.0 <= quantizer_dropout <= 1.0):
            raise ValueError(
                "`quantizer_dropout` must be a probability in [0, 1]. "
                f"Received: quantizer_dropout={quantizer_dropout!r}"
            )
        self.num_quantizers = int(num_quantizers)
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.shared_codebook = shared_codebook
        self.quantizer_dropout = float(quantizer_dropout)
        self.seed = seed
        self.vq_options = vq_options

        # === Layers ===
        count = 1 if shared_codebook else self.num_quantizers
        self.quantizers = [
            _StageQuantizer(
                codebook_size,
                embedding_dim,
                seed=_stage_seed(seed, i),
                dtype="float32",
                name=f"quantizer_{i}",
                **vq_options,
            )
            for i in range(count)
        ]
        # Validated by the stages; copied after so a bad value fails there first.
        self.codebook_size = self.quantizers[0].codebook_size
        self.embedding_dim = self.quantizers[0].embedding_dim
        self.gradient_estimator = vq_options["gradient_estimator"]
        if self.quantizer_dropout > 0:
            self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._create_health_metrics(self.codebook_size, 1 if shared_codebook else count)

    def build(self, input_shape):
        if input_shape[-1] != self.embedding_dim:
            raise ValueError(
                f"The last axis of the input must equal `embedding_dim`={self.embedding_dim}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        for quantizer in self.quantizers:
            quantizer.build((None, self.embedding_dim))

    def _stage(self, index):
        return self.quantizers[0 if self.shared_codebook else index]

    def call(self, inputs, training=None):
        inputs = ops.cast(inputs, "float32")
        lead_shape = ops.shape(inputs)[:-1]
        keep = None
        if training and self.quantizer_dropout > 0:
            keep = self._stages_kept(inputs)  # (B,) number of stages per example
        residual, total, loss, stage_indices = inputs, ops.zeros_like(inputs), 0.0, []
        for i in range(self.num_quantizers):
            quantizer = self._stage(i)
            _, codes, indices, stage_loss = quantizer._quantize(residual, training)
            # Codes (constants) through the stage's output projection, which learns
            # through the sum; the codebook learns from its own loss only.
            stage_out = quantizer._project_out(
                ops.reshape(ops.stop_gradient(codes), (*lead_shape, quantizer._code_size))
            )
            residual = residual - ops.stop_gradient(stage_out)
            if keep is not None:
                mask = ops.cast(i < keep, "float32")
                stage_out = stage_out * ops.reshape(mask, (-1,) + (1,) * (len(inputs.shape) - 1))
            total = total + stage_out
            loss = loss + stage_loss
            stage_indices.append(indices)
        self.add_loss(loss)
        if training:
            indices = ops.stack(stage_indices, axis=-1)  # (N, Q)
            if self.shared_codebook:
                indices = ops.reshape(indices, (-1,))
            self._update_health(code_counts(indices, self.codebook_size))
        flat_inputs = ops.reshape(inputs, (-1, self.embedding_dim))
        flat_total = ops.reshape(total, (-1, self.embedding_dim))
        estimate = _ESTIMATOR_FNS[self.gradient_estimator](
            flat_inputs, ops.stop_gradient(flat_total)
        )
        outputs = estimate + (flat_total - ops.stop_gradient(flat_total))
        return ops.reshape(outputs, ops.shape(inputs))

    def _stages_kept(self, inputs):
        batch = ops.shape(inputs)[:1]
        stages = keras.random.randint(
            batch, 1, self.num_quantizers + 1, dtype="int32", seed=self.seed_generator
        )
        dropped = keras.random.uniform(batch, seed=self.seed_generator) < self.quantizer_dropout
        return ops.where(dropped, stages, self.num_quantizers)

    def get_code_indices(self, inputs):
        """Indices of every stage: int32 of shape `inputs.shape[:-1] + (num_quantizers,)`."""
        residual = ops.cast(inputs, "float32")
        stage_indices = []
        for i in range(self.num_quantizers):
            quantizer = self._stage(i)
            indices = quantizer.get_code_indices(residual)
            residual = residual - quantizer.lookup(indices)
            stage_indices.append(indices)
        return ops.stack(stage_indices, axis=-1)

    def lookup(self, indices):
        """Sum of the stages' codes for `indices` `(..., n)` with `n <= num_quantizers`.

        Passing fewer than `num_quantizers` stages decodes at a lower bitrate.
        """
        indices = ops.cast(indices, "int32")
        stages = indices.shape[-1]
        if stages is None or not 1 <= stages <= self.num_quantizers:
            raise ValueError(
                f"The last axis of `indices` must hold 1 to num_quantizers="
                f"{self.num_quantizers} stages. Received: indices.shape={tuple(indices.shape)}"
            )
        total = 0.0
        for i in range(stages):
            total = total + self._stage(i).lookup(indices[..., i])
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_quantizers": self.num_quantizers,
                "codebook_size": self.codebook_size,
                "embedding_dim": self.embedding_dim,
                "shared_codebook": self.shared_codebook,
                "quantizer_dropout": self.quantizer_dropout,
                "seed": self.seed,
                **self.vq_options,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class GroupedVQ(_Quantizer):
    """Grouped vector quantization: split each vector into groups, quantize each on its own.

    The last axis (`embedding_dim`) is cut into `num_groups` equal chunks and
    chunk `g` is quantized by its own `VectorQuantizer` of `codebook_size` codes
    (grouped/product quantization as in wav2vec 2.0, Baevski et al. 2020,
    https://arxiv.org/abs/2006.11477, Sec. 2): `codebook_size ** num_groups`
    combinations for the cost of `num_groups` small searches. Each group applies
    its own gradient estimator and losses.

    Args:
        num_groups: number of groups, `>= 1`; must divide `embedding_dim`.
        codebook_size: codes per group.
        embedding_dim: size of the input vectors.
        seed: int seed of the groups' k-means/restart draws (group `g` uses
            `seed + 1 + g`), or None.
        **kwargs: `VectorQuantizer` options applied to every group (see
            `ResidualVQ`), then base layer arguments (`name`, ...).

    Example:
    ```python
    gvq = kzoo.layers.GroupedVQ(4, codebook_size=256, embedding_dim=64, decay=0.99)
    quantized = gvq(latents, training=True)  # (B, T, 64)
    indices = gvq.get_code_indices(latents)  # (B, T, 4) int32
    vectors = gvq.lookup(indices)            # (B, T, 64)
    ```
    """

    def __init__(self, num_groups, codebook_size, embedding_dim, seed=None, **kwargs):
        vq_options, kwargs = _split_vq_options(kwargs)
        super().__init__(**kwargs)
        check_positive_int("num_groups", num_groups)
        check_positive_int("embedding_dim", embedding_dim)
        if embedding_dim % num_groups:
            raise ValueError(
                f"`num_groups` must divide `embedding_dim`={embedding_dim}. "
                f"Received: num_groups={num_groups!r}"
            )
        self.num_groups = int(num_groups)
        self.embedding_dim = int(embedding_dim)
        self.group_dim = self.embedding_dim // self.num_groups
        self.seed = seed
        self.vq_options = vq_options

        # === Layers ===
        self.quantizers = [
            _StageQuantizer(
                codebook_size,
                self.group_dim,
                seed=_stage_seed(seed, g),
                dtype="float32",
                name=f"quantizer_{g}",
                **vq_options,
            )
            for g in range(self.num_groups)
        ]
        self.codebook_size = self.quantizers[0].codebook_size
        self._create_health_metrics(self.codebook_size, self.num_groups)

    def build(self, input_shape):
        if input_shape[-1] != self.embedding_dim:
            raise ValueError(
                f"The last axis of the input must equal `embedding_dim`={self.embedding_dim}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        for quantizer in self.quantizers:
            quantizer.build((None, self.group_dim))

    def _groups(self, inputs):
        size = self.group_dim
        return [inputs[..., g * size : (g + 1) * size] for g in range(self.num_groups)]

    def call(self, inputs, training=None):
        inputs = ops.cast(inputs, "float32")
        outputs, group_indices, loss = [], [], 0.0
        for quantizer, group in zip(self.quantizers, self._groups(inputs), strict=True):
            out, indices, group_loss = quantizer._quantize_with_estimator(group, training)
            outputs.append(out)
            group_indices.append(indices)
            loss = loss + group_loss
        self.add_loss(loss)
        if training:
            self._update_health(code_counts(ops.stack(group_indices, axis=-1), self.codebook_size))
        return ops.concatenate(outputs, axis=-1)

    def get_code_indices(self, inputs):
        """Indices of every group: int32 of shape `inputs.shape[:-1] + (num_groups,)`."""
        inputs = ops.cast(inputs, "float32")
        return ops.stack(
            [
                quantizer.get_code_indices(group)
                for quantizer, group in zip(self.quantizers, self._groups(inputs), strict=True)
            ],
            axis=-1,
        )

    def lookup(self, indices):
        """Vectors `(..., embedding_dim)` for indices `(..., num_groups)`."""
        indices = ops.cast(indices, "int32")
        if indices.shape[-1] != self.num_groups:
            raise ValueError(
                f"The last axis of `indices` must equal num_groups={self.num_groups}. "
                f"Received: indices.shape={tuple(indices.shape)}"
            )
        return ops.concatenate(
            [quantizer.lookup(indices[..., g]) for g, quantizer in enumerate(self.quantizers)],
            axis=-1,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_groups": self.num_groups,
                "codebook_size": self.codebook_size,
                "embedding_dim": self.embedding_dim,
                "seed": self.seed,
                **self.vq_options,
            }
        )
        return config


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
        if input_shape[-1] != self.embedding_dim:
            raise ValueError(
                f"The last axis of the input must equal `embedding_dim`={self.embedding_dim}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
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


@keras.saving.register_keras_serializable(package="kzoo")
class FSQ(_ImplicitQuantizer):
    """Finite scalar quantization: round each of a few bounded channels to a fixed grid.

    Mentzer et al. 2023, https://arxiv.org/abs/2309.15505 (Sec. 3 and its code):
    channel `d` is bounded with `tanh` to `levels[d]` values, rounded (with a
    straight-through gradient) and rescaled to `[-1, 1]`. The codebook is the
    implicit product grid of `prod(levels)` codes: no codebook weights, no
    auxiliary loss, no collapse. Index `i = sum_d digit_d * prod(levels[:d])`.
    When `embedding_dim != len(levels)`, Dense layers project in and out.

    Args:
        levels: list of ints `>= 2`, the number of values per channel, e.g.
            `[8, 5, 5, 5]` (1000 codes; the paper's recommendations per codebook
            size are in its Table 1).
        embedding_dim: size of the input vectors; default `len(levels)` (no
            projection).
        **kwargs: base layer arguments (`name`, ...). `dtype` defaults to float32.

    Example:
    ```python
    fsq = kzoo.layers.FSQ(levels=[8, 5, 5, 5], embedding_dim=64)
    quantized = fsq(latents, training=True)  # (B, H, W, 64)
    indices = fsq.get_code_indices(latents)  # (B, H, W) int32 in [0, 1000)
    vectors = fsq.lookup(indices)            # (B, H, W, 64)
    ```
    """

    def __init__(self, levels=(8, 5, 5, 5), embedding_dim=None, **kwargs):
        super().__init__(**kwargs)
        if (
            not isinstance(levels, list | tuple)
            or not levels
            or any(isinstance(lv, bool) or not isinstance(lv, int) or lv < 2 for lv in levels)
        ):
            raise ValueError(
                "`levels` must be a non-empty list of integers >= 2 (values per channel). "
                f"Received: levels={levels!r}"
            )
        codebook_size = math.prod(levels)
        if codebook_size >= 2**31:
            raise ValueError(
                f"`levels` give {codebook_size} codes; int32 indices need fewer than 2**31. "
                f"Received: levels={levels!r}"
            )
        if embedding_dim is None:
            embedding_dim = len(levels)
        check_positive_int("embedding_dim", embedding_dim)
        self.levels = [int(lv) for lv in levels]
        self.embedding_dim = int(embedding_dim)
        self.codebook_size = codebook_size
        self._code_size = len(self.levels)
        levels_np = np.asarray(self.levels, dtype=np.float64)
        # As in the paper's code: an even level count needs a half-step offset so that
        # tanh's symmetric range still hits exactly L integers after rounding.
        self._half_range = ((levels_np - 1) * (1 + 1e-3) / 2).astype("float32")
        self._offset = np.where(levels_np % 2 == 0, 0.5, 0.0).astype("float32")
        # The paper's listing writes tan here; atanh is what makes bound(0) = 0.
        self._shift = np.arctanh(self._offset / self._half_range).astype("float32")
        self._half_width = (np.asarray(self.levels) // 2).astype("float32")
        self._basis = np.cumprod([1, *self.levels[:-1]]).astype("int32")
        self._levels_int = np.asarray(self.levels, dtype="int32")

        # === Layers ===
        self._create_projections(self.embedding_dim, self._code_size)
        self._create_health_metrics(self.codebook_size)

    def _bound(self, z):
        return ops.tanh(z + self._shift) * self._half_range - self._offset

    def _quantize(self, inputs):
        """Codes in `[-1, 1]` (straight-through) and their int32 indices."""
        z = self._project_in(inputs)  # (..., len(levels))
        bounded = self._bound(z)
        rounded = bounded + ops.stop_gradient(ops.round(bounded) - bounded)
        codes = rounded / self._half_width
        digits = ops.cast(ops.round(bounded) + self._half_width, "int32")  # [0, L)
        indices = ops.sum(digits * self._basis, axis=-1)
        return codes, indices

    def call(self, inputs, training=None):
        codes, indices = self._quantize(inputs)
        if training:
            self._update_health(code_counts(ops.reshape(indices, (-1,)), self.codebook_size))
        return self._project_out(codes)

    def get_code_indices(self, inputs):
        """Code indices, int32 of shape `inputs.shape[:-1]` in `[0, prod(levels))`."""
        return self._quantize(inputs)[1]

    def _codes_from_indices(self, indices):
        digits = ops.mod(ops.floor_divide(indices[..., None], self._basis), self._levels_int)
        return (ops.cast(digits, "float32") - self._half_width) / self._half_width

    def get_config(self):
        config = super().get_config()
        config.update({"levels": list(self.levels), "embedding_dim": self.embedding_dim})
        return config


# Codes are int32, and health metrics keep one counter per code.
LFQ_MAX_BITS = 20


@keras.saving.register_keras_serializable(package="kzoo")
class LFQ(_ImplicitQuantizer):
    """Lookup-free quantization: each channel's sign is one bit of the code.

    MAGVIT-v2, Yu et al. 2023, https://arxiv.org/abs/2310.05737 (Sec. 3.1): the
    code of `z` is `sign(z)` in `{-1, 1}^num_bits` (straight-through), its index
    the bits read as a binary number (first channel = most significant bit). The
    entropy penalty `E[H(q(z))] - diversity_gamma * H(E[q(z)])`, with
    `q(c | z) = softmax_c(2 z.c / entropy_temperature)` over all `2**num_bits`
    codes, makes each code confident and the batch use all codes. `q` factorises
    over bits (`q(bit_d = 1) = sigmoid(4 z_d / T)`), so the per-sample entropy is
    a sum over bits, and the batch entropy is computed exactly from two
    half-codebook factors without an `(N, 2**num_bits)` matrix (memory
    `N * 2**(num_bits/2)`, compute `N * 2**num_bits`); the entropy term is added
    only in training.
    A commitment loss `||z - sg(code)||^2` is added too.

    Args:
        num_bits: code bits, `1 <= num_bits <= 20`; `2**num_bits` codes.
        embedding_dim: size of the input vectors; default `num_bits` (no
            projection), otherwise Dense layers project in and out.
        entropy_loss_weight: weight of the entropy penalty, `>= 0`.
        commitment_cost: weight of the commitment loss, `>= 0`.
        diversity_gamma: weight of the batch-entropy term inside the penalty.
        entropy_temperature: softmax temperature `T > 0` of the code distribution.
        **kwargs: base layer arguments (`name`, ...). `dtype` defaults to float32.

    Example:
    ```python
    lfq = kzoo.layers.LFQ(num_bits=10, embedding_dim=64)
    quantized = lfq(latents, training=True)  # (B, H, W, 64), losses added
    indices = lfq.get_code_indices(latents)  # (B, H, W) int32 in [0, 1024)
    vectors = lfq.lookup(indices)            # (B, H, W, 64)
    ```
    """

    def __init__(
        self,
        num_bits,
        embedding_dim=None,
        entropy_loss_weight=0.1,
        commitment_cost=0.25,
        diversity_gamma=1.0,
        entropy_temperature=0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(num_bits, bool)
            or not isinstance(num_bits, int)
            or not 1 <= num_bits <= LFQ_MAX_BITS
        ):
            raise ValueError(
                f"`num_bits` must be an integer in [1, {LFQ_MAX_BITS}]. "
                f"Received: num_bits={num_bits!r}"
            )
        if embedding_dim is None:
            embedding_dim = num_bits
        check_positive_int("embedding_dim", embedding_dim)
        for arg, value in (
            ("entropy_loss_weight", entropy_loss_weight),
            ("commitment_cost", commitment_cost),
            ("diversity_gamma", diversity_gamma),
        ):
            _check_non_negative(arg, value)
        if not (is_number(entropy_temperature) and entropy_temperature > 0):
            raise ValueError(
                "`entropy_temperature` must be a positive float. "
                f"Received: entropy_temperature={entropy_temperature!r}"
            )
        self.num_bits = num_bits
        self.embedding_dim = int(embedding_dim)
        self.entropy_loss_weight = float(entropy_loss_weight)
        self.commitment_cost = float(commitment_cost)
        self.diversity_gamma = float(diversity_gamma)
        self.entropy_temperature = float(entropy_temperature)
        self.codebook_size = 2**num_bits
        self._code_size = num_bits
        self._bit_values = (2 ** np.arange(num_bits - 1, -1, -1)).astype("int32")  # MSB first

        # === Layers ===
        self._create_projections(self.embedding_dim, self._code_size)
        self._create_health_metrics(self.codebook_size)

    def _sign_codes(self, z):
        positive = z > 0
        codes = ops.where(positive, 1.0, -1.0)
        indices = ops.sum(ops.cast(positive, "int32") * self._bit_values, axis=-1)
        return codes, indices

    def call(self, inputs, training=None):
        z = self._project_in(inputs)  # (..., num_bits)
        codes, indices = self._sign_codes(z)
        loss = self.commitment_cost * ops.mean(ops.square(z - ops.stop_gradient(codes)))
        if training:
            flat = ops.reshape(z, (-1, self.num_bits))
            if self.entropy_loss_weight > 0:
                loss = loss + self.entropy_loss_weight * self.entropy_penalty(flat)
            self._update_health(code_counts(ops.reshape(indices, (-1,)), self.codebook_size))
        self.add_loss(loss)
        return self._project_out(z + ops.stop_gradient(codes - z))

    def entropy_penalty(self, flat):
        """MAGVIT-v2 entropy penalty of `(N, num_bits)` vectors: sample - gamma * batch entropy."""
        logits = 4.0 * flat / self.entropy_temperature  # q(bit = 1) = sigmoid(logits)
        log_on, log_off = ops.log_sigmoid(logits), ops.log_sigmoid(-logits)
        prob_on = ops.sigmoid(logits)
        sample_entropy = -ops.sum(prob_on * log_on + (1.0 - prob_on) * log_off, axis=-1)
        # E_z[q(c | z)] for all 2**B codes without an (N, 2**B) matrix: q factorises
        # over bits, so with c = (high bits a, low bits b), E_z[q(a | z) q(b | z)] is
        # one (2**h, N) x (N, 2**(B-h)) matmul; row-major order matches the indices.
        high = self.num_bits // 2
        q_high = self._half_code_probs(log_on[:, :high], log_off[:, :high])  # (N, 2**h)
        q_low = self._half_code_probs(log_on[:, high:], log_off[:, high:])  # (N, 2**(B-h))
        num_vectors = ops.cast(ops.shape(flat)[0], "float32")
        mean_probs = ops.reshape(ops.matmul(ops.transpose(q_high), q_low), (-1,)) / num_vectors
        batch_entropy = -ops.sum(mean_probs * ops.log(ops.maximum(mean_probs, 1e-10)))
        return ops.mean(sample_entropy) - self.diversity_gamma * batch_entropy

    @staticmethod
    def _half_code_probs(log_on, log_off):
        """`q(c | z)` over every code of the given bits `(N, b)`: `(N, 2**b)`, MSB first."""
        num_bits = log_on.shape[-1]
        if num_bits == 0:
            return ops.ones((ops.shape(log_on)[0], 1), dtype="float32")
        codes = np.array(list(itertools.product([0.0, 1.0], repeat=num_bits)), "float32")
        log_probs = ops.matmul(log_on, codes.T) + ops.matmul(log_off, 1.0 - codes.T)
        return ops.exp(log_probs)

    def get_code_indices(self, inputs):
        """Code indices, int32 of shape `inputs.shape[:-1]` in `[0, 2**num_bits)`."""
        return self._sign_codes(self._project_in(inputs))[1]

    def _codes_from_indices(self, indices):
        bits = ops.mod(ops.floor_divide(ops.cast(indices, "int32")[..., None], self._bit_values), 2)
        return ops.cast(bits, "float32") * 2.0 - 1.0

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_bits": self.num_bits,
                "embedding_dim": self.embedding_dim,
                "entropy_loss_weight": self.entropy_loss_weight,
                "commitment_cost": self.commitment_cost,
                "diversity_gamma": self.diversity_gamma,
                "entropy_temperature": self.entropy_temperature,
            }
        )
        return config


def _check_non_negative(arg, value):
    if not is_number(value) or value < 0:
        raise ValueError(f"`{arg}` must be a non-negative number. Received: {arg}={value!r}")


def _check_bool(arg, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{arg}` must be True or False. Received: {arg}={value!r}")
