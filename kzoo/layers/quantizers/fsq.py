"""`FSQ`: finite scalar quantization, each channel rounded to a few levels.

Papers, and the part of each that the code follows:
- Finite scalar quantization: Mentzer et al. 2023, https://arxiv.org/abs/2309.15505
  (Sec. 3 and the reference code in its appendix).
"""

import math

import keras
import numpy as np
from keras import ops

from kzoo.layers.checks import check_positive_int
from kzoo.layers.quantizers._base import QuantizerOutput, _ImplicitQuantizer, code_counts


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

    def _round(self, inputs):
        """Codes in `[-1, 1]` (straight-through) and their int32 indices."""
        z = self._project_in(inputs)  # (..., len(levels))
        bounded = self._bound(z)
        rounded = bounded + ops.stop_gradient(ops.round(bounded) - bounded)
        codes = rounded / self._half_width
        digits = ops.cast(ops.round(bounded) + self._half_width, "int32")  # [0, L)
        indices = ops.sum(digits * self._basis, axis=-1)
        return codes, indices

    def call(self, inputs, training=None):
        outputs, indices, _ = self.quantize_vectors(inputs, training=training)
        if training:
            self._update_health(code_counts(ops.reshape(indices, (-1,)), self.codebook_size))
        return outputs

    def quantize_vectors(self, inputs, training=False):
        """Quantize `inputs` as `call` does, without recording metrics.

        Args:
            inputs: float tensor `(..., embedding_dim)`.
            training: unused (FSQ has no state); kept for the common contract.

        Returns:
            `QuantizerOutput(quantized, indices, loss)`: float32 `(...,
            embedding_dim)` with the straight-through gradient, int32
            `inputs.shape[:-1]` in `[0, prod(levels))`, and a float32 zero (FSQ
            has no auxiliary loss).
        """
        codes, indices = self._round(inputs)
        return QuantizerOutput(self._project_out(codes), indices, ops.zeros((), "float32"))

    def get_code_indices(self, inputs):
        """Code indices, int32 of shape `inputs.shape[:-1]` in `[0, prod(levels))`."""
        return self._round(inputs)[1]

    def _codes_from_indices(self, indices):
        digits = ops.mod(ops.floor_divide(indices[..., None], self._basis), self._levels_int)
        return (ops.cast(digits, "float32") - self._half_width) / self._half_width

    def get_config(self):
        config = super().get_config()
        config.update({"levels": list(self.levels), "embedding_dim": self.embedding_dim})
        return config
