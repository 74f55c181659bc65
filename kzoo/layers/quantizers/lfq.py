"""`LFQ`: lookup-free quantization, each channel's sign one bit of the code.

Papers, and the part of each that the code follows:
- Lookup-free quantization with an entropy penalty: MAGVIT-v2, Yu et al. 2023,
  https://arxiv.org/abs/2310.05737 (Sec. 3.1).
"""

import itertools

import keras
import numpy as np
from keras import ops

from kzoo.layers.checks import check_positive_int, is_number
from kzoo.layers.quantizers._base import (
    QuantizerOutput,
    _ImplicitQuantizer,
    check_non_negative,
    code_counts,
)

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
            check_non_negative(arg, value)
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
        outputs, indices, loss = self.quantize_vectors(inputs, training=training)
        if training:
            self._update_health(code_counts(ops.reshape(indices, (-1,)), self.codebook_size))
        self.add_loss(loss)
        return outputs

    def quantize_vectors(self, inputs, training=False):
        """Quantize `inputs` as `call` does, without adding the loss or metrics.

        Args:
            inputs: float tensor `(..., embedding_dim)`.
            training: add the entropy penalty to the loss.

        Returns:
            `QuantizerOutput(quantized, indices, loss)`: float32 `(...,
            embedding_dim)` with the straight-through gradient, int32
            `inputs.shape[:-1]` in `[0, 2**num_bits)`, and the float32 scalar loss
            (commitment, plus the entropy penalty in training).
        """
        z = self._project_in(inputs)  # (..., num_bits)
        codes, indices = self._sign_codes(z)
        loss = self.commitment_cost * ops.mean(ops.square(z - ops.stop_gradient(codes)))
        if training and self.entropy_loss_weight > 0:
            flat = ops.reshape(z, (-1, self.num_bits))
            loss = loss + self.entropy_loss_weight * self.entropy_penalty(flat)
        return QuantizerOutput(self._project_out(z + ops.stop_gradient(codes - z)), indices, loss)

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
