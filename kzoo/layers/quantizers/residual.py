"""`ResidualVQ`: a stack of `VectorQuantizer` stages, each quantizing what the previous left.

Papers, and the part of each that the code follows:
- Residual vector quantization with quantizer dropout: SoundStream, Zeghidour
  et al. 2021, https://arxiv.org/abs/2107.03312 (Sec. 3.3, Algorithm 1).
- Quantizer dropout applied with a probability: DAC, Kumar et al. 2023,
  https://arxiv.org/abs/2306.06546.
- The stages are `VectorQuantizer`s (`vector.py` lists their papers); the
  estimator that maps the inputs onto the sum is in `estimators.py`.
"""

import keras
from keras import ops

from kzoo.layers.checks import check_positive_int, is_number
from kzoo.layers.quantizers._base import (
    QuantizerOutput,
    _Quantizer,
    check_bool,
    check_input_dim,
    code_counts,
)
from kzoo.layers.quantizers._composite import make_stages, split_quantizer_options
from kzoo.layers.quantizers.estimators import apply_estimator


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
        quantizer_options: dict of `VectorQuantizer` arguments for every stage
            (`commitment_cost`, `codebook_cost`, `decay`, `epsilon`, `kmeans_init`,
            `kmeans_iters`, `dead_code_threshold`, `dead_code_window`,
            `use_cosine`, `code_dim`, `orthogonal_reg_weight`,
            `gradient_estimator`); the stages keep their own defaults for the
            rest. `gradient_estimator` also maps the inputs onto the sum.
        **kwargs: base layer arguments (`name`, ...). A `VectorQuantizer` option
            given here (`decay=0.99`) joins `quantizer_options`.

    Example:
    ```python
    rvq = kzoo.layers.ResidualVQ(4, codebook_size=256, embedding_dim=64,
                                 quantizer_options={"decay": 0.99},
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
        quantizer_options=None,
        **kwargs,
    ):
        quantizer_options, kwargs = split_quantizer_options(quantizer_options, kwargs)
        super().__init__(**kwargs)
        check_positive_int("num_quantizers", num_quantizers)
        check_bool("shared_codebook", shared_codebook)
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
        self.quantizer_options = quantizer_options

        # === Layers ===
        count = 1 if shared_codebook else self.num_quantizers
        self.quantizers = make_stages(count, codebook_size, embedding_dim, seed, quantizer_options)
        # Validated by the stages; copied after so a bad value fails there first.
        self.codebook_size = self.quantizers[0].codebook_size
        self.embedding_dim = self.quantizers[0].embedding_dim
        self.gradient_estimator = self.quantizers[0].gradient_estimator
        if self.quantizer_dropout > 0:
            self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._create_health_metrics(self.codebook_size, 1 if shared_codebook else count)

    def build(self, input_shape):
        check_input_dim(self.embedding_dim, input_shape)
        for quantizer in self.quantizers:
            quantizer.build((None, self.embedding_dim))

    def _stage(self, index):
        return self.quantizers[0 if self.shared_codebook else index]

    def call(self, inputs, training=None):
        outputs, indices, loss = self.quantize_vectors(inputs, training=training)
        self.add_loss(loss)
        if training:
            # One codebook: every stage's indices count towards the same codes.
            shape = (-1,) if self.shared_codebook else (-1, self.num_quantizers)
            self._update_health(code_counts(ops.reshape(indices, shape), self.codebook_size))
        return outputs

    def quantize_vectors(self, inputs, training=False):
        """Quantize `inputs` through every stage, without adding the loss or metrics.

        Args:
            inputs: float tensor `(..., embedding_dim)`.
            training: run the stages' training-only state updates and quantizer
                dropout.

        Returns:
            `QuantizerOutput(quantized, indices, loss)`: the float32 sum of the
            kept stages' codes `(..., embedding_dim)` with the gradient estimator,
            the int32 indices of every stage `inputs.shape[:-1] + (num_quantizers,)`
            (dropout does not change them), and the sum of the stages' losses.
        """
        inputs = ops.cast(inputs, "float32")
        keep = None
        if training and self.quantizer_dropout > 0:
            keep = self._stages_kept(inputs)  # (B,) number of stages per example
        residual, total, loss, stage_indices = inputs, ops.zeros_like(inputs), 0.0, []
        for i in range(self.num_quantizers):
            # Codes (constants) through the stage's output projection, which learns
            # through the sum; the codebook learns from its own loss only.
            stage_out, indices, stage_loss = self._stage(i).quantize_vectors(
                residual, training=training, gradient_estimator="none"
            )
            residual = residual - ops.stop_gradient(stage_out)
            if keep is not None:
                mask = ops.cast(i < keep, "float32")
                stage_out = stage_out * ops.reshape(mask, (-1,) + (1,) * (len(inputs.shape) - 1))
            total = total + stage_out
            loss = loss + stage_loss
            stage_indices.append(indices)
        flat_inputs = ops.reshape(inputs, (-1, self.embedding_dim))
        flat_total = ops.reshape(total, (-1, self.embedding_dim))
        estimate = apply_estimator(
            self.gradient_estimator, flat_inputs, ops.stop_gradient(flat_total)
        )
        outputs = estimate + (flat_total - ops.stop_gradient(flat_total))
        outputs = ops.reshape(outputs, ops.shape(inputs))
        return QuantizerOutput(outputs, ops.stack(stage_indices, axis=-1), loss)

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
                "quantizer_options": dict(self.quantizer_options),
            }
        )
        return config
