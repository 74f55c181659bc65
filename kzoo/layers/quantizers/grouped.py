"""`GroupedVQ`: cut each vector into groups and quantize each with its own `VectorQuantizer`.

Papers, and the part of each that the code follows:
- Grouped (product) quantization: wav2vec 2.0, Baevski et al. 2020,
  https://arxiv.org/abs/2006.11477 (Sec. 2).
- The groups are `VectorQuantizer`s (`vector.py` lists their papers).
"""

import keras
from keras import ops

from kzoo.layers.checks import check_positive_int
from kzoo.layers.quantizers._base import (
    QuantizerOutput,
    _Quantizer,
    check_input_dim,
    code_counts,
)
from kzoo.layers.quantizers._composite import make_stages, split_quantizer_options


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
        quantizer_options: dict of `VectorQuantizer` arguments for every group
            (see `ResidualVQ`); the groups keep their own defaults for the rest.
        **kwargs: base layer arguments (`name`, ...). A `VectorQuantizer` option
            given here (`decay=0.99`) joins `quantizer_options`.

    Example:
    ```python
    gvq = kzoo.layers.GroupedVQ(4, codebook_size=256, embedding_dim=64,
                                quantizer_options={"decay": 0.99})
    quantized = gvq(latents, training=True)  # (B, T, 64)
    indices = gvq.get_code_indices(latents)  # (B, T, 4) int32
    vectors = gvq.lookup(indices)            # (B, T, 64)
    ```
    """

    def __init__(
        self, num_groups, codebook_size, embedding_dim, seed=None, quantizer_options=None, **kwargs
    ):
        quantizer_options, kwargs = split_quantizer_options(quantizer_options, kwargs)
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
        self.quantizer_options = quantizer_options

        # === Layers ===
        self.quantizers = make_stages(
            self.num_groups, codebook_size, self.group_dim, seed, quantizer_options
        )
        self.codebook_size = self.quantizers[0].codebook_size
        self._create_health_metrics(self.codebook_size, self.num_groups)

    def build(self, input_shape):
        check_input_dim(self.embedding_dim, input_shape)
        for quantizer in self.quantizers:
            quantizer.build((None, self.group_dim))

    def _groups(self, inputs):
        size = self.group_dim
        return [inputs[..., g * size : (g + 1) * size] for g in range(self.num_groups)]

    def call(self, inputs, training=None):
        outputs, indices, loss = self.quantize_vectors(inputs, training=training)
        self.add_loss(loss)
        if training:
            flat_indices = ops.reshape(indices, (-1, self.num_groups))
            self._update_health(code_counts(flat_indices, self.codebook_size))
        return outputs

    def quantize_vectors(self, inputs, training=False):
        """Quantize each group of `inputs`, without adding the loss or metrics.

        Args:
            inputs: float tensor `(..., embedding_dim)`.
            training: run the groups' training-only state updates.

        Returns:
            `QuantizerOutput(quantized, indices, loss)`: the float32 concatenated
            codes `(..., embedding_dim)` (each group with its gradient estimator),
            int32 indices `inputs.shape[:-1] + (num_groups,)`, and the sum of the
            groups' losses.
        """
        inputs = ops.cast(inputs, "float32")
        outputs, group_indices, loss = [], [], 0.0
        for quantizer, group in zip(self.quantizers, self._groups(inputs), strict=True):
            out, indices, group_loss = quantizer.quantize_vectors(group, training=training)
            outputs.append(out)
            group_indices.append(indices)
            loss = loss + group_loss
        return QuantizerOutput(
            ops.concatenate(outputs, axis=-1), ops.stack(group_indices, axis=-1), loss
        )

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
                "quantizer_options": dict(self.quantizer_options),
            }
        )
        return config
