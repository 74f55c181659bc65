"""`VectorQuantizer`: nearest-code vector quantization with a learned or EMA codebook.

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
  https://arxiv.org/abs/2410.06424 (Sec. 4.2), in `estimators.py`.

The nearest-code search uses `ops.top_k(scores, k=1)`: `argmin`/`argmax` lower to a
Flex op that LiteRT interpreters do not run.
"""

import keras
from keras import ops

from kzoo.layers.checks import check_positive_int, is_number
from kzoo.layers.quantizers._base import (
    QuantizerOutput,
    _Quantizer,
    check_bool,
    check_input_dim,
    check_non_negative,
    code_counts,
    cross_replica_sum,
    l2_normalize,
    multi_replica_context,
)
from kzoo.layers.quantizers.estimators import GRADIENT_ESTIMATORS, apply_estimator

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
    data-parallel `tf.distribute` strategy of several replicas (such as
    `kzoo.training.distribute` creates), code counts are summed and random draws
    (k-means seeds, restarted codes) averaged across replicas, so every replica
    keeps the same codebook.

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
    quantized, indices, loss = vq.quantize_vectors(latents)  # no add_loss, no metrics
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
            check_non_negative(arg, value)
        if decay is not None and not (is_number(decay) and 0.0 < decay < 1.0):
            raise ValueError(
                f"`decay` must be None or a float in (0, 1). Received: decay={decay!r}"
            )
        if not (is_number(epsilon) and epsilon > 0):
            raise ValueError(f"`epsilon` must be a positive float. Received: epsilon={epsilon!r}")
        check_bool("kmeans_init", kmeans_init)
        check_bool("use_cosine", use_cosine)
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
        check_input_dim(self.embedding_dim, input_shape)
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
        outputs, indices, loss = self.quantize_vectors(inputs, training=training)
        self.add_loss(loss)
        if training:
            self._update_health(code_counts(ops.reshape(indices, (-1,)), self.codebook_size))
        return outputs

    def quantize_vectors(self, inputs, training=False, gradient_estimator=None):
        """Quantize `inputs`: what `call` computes, without adding the loss or metrics.

        `ResidualVQ` and `GroupedVQ` compose their stages through this method.

        Args:
            inputs: float tensor `(..., embedding_dim)`.
            training: run the training-only state updates (k-means, EMA, restarts)
                and the search without the refining second comparison.
            gradient_estimator: `None` for the layer's own `gradient_estimator`,
                one of `"ste"` and `"rotation"`, or `"none"`: the codes as constants
                (no gradient to the inputs or the codebook; the `code_dim` output
                projection still learns), which `ResidualVQ` sums before it maps
                the inputs onto the total with one estimator.

        Returns:
            `QuantizerOutput(quantized, indices, loss)`: float32 `(...,
            embedding_dim)`, int32 `inputs.shape[:-1]`, and the float32 scalar loss
            (commitment, codebook and orthogonal terms).
        """
        inputs = ops.cast(inputs, "float32")
        lead_shape = ops.shape(inputs)[:-1]
        flat, quantized, indices, loss = self._search(inputs, training)
        if gradient_estimator is None:
            gradient_estimator = self.gradient_estimator
        outputs = apply_estimator(gradient_estimator, flat, quantized)  # (N, code)
        outputs = self._project_out(ops.reshape(outputs, (*lead_shape, self._code_size)))
        return QuantizerOutput(outputs, ops.reshape(indices, lead_shape), loss)

    def _search(self, inputs, training):
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
        return l2_normalize(inputs) if self.use_cosine else inputs

    def _project_out(self, codes):
        return self.project_out(codes) if self.code_dim is not None else codes

    def _codes(self):
        codebook = ops.convert_to_tensor(self.codebook)
        return l2_normalize(codebook) if self.use_cosine else codebook

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
        synced = multi_replica_context() is not None
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
                codebook = l2_normalize(codebook)
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
                means = l2_normalize(means)
            # An empty cluster keeps its centroid.
            return ops.where(counts > 0, means, centroids)

        if initial is None:
            initial = self._sample_rows(flat, size)
        elif self.use_cosine:
            initial = l2_normalize(initial)
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
            fresh = l2_normalize(fresh)
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
    normed = l2_normalize(ops.cast(codebook, "float32"))
    size = ops.shape(normed)[0]
    cosine = ops.matmul(normed, ops.transpose(normed))  # (K, K)
    return ops.sum(ops.square(cosine)) / (size * size) - 1.0 / size
