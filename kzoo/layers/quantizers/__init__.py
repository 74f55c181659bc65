"""Quantizers: map continuous vectors to discrete codes, one family per module.

- `vector.py`: `VectorQuantizer` (learned or EMA codebook, k-means init, dead-code
  restart, cosine and factorised codes), `nearest_code`, `orthogonal_loss`.
- `residual.py`: `ResidualVQ` (stages of `VectorQuantizer`, quantizer dropout).
- `grouped.py`: `GroupedVQ` (one `VectorQuantizer` per channel group).
- `fsq.py`: `FSQ` (finite scalar quantization).
- `lfq.py`: `LFQ` (lookup-free quantization).
- `estimators.py`: the straight-through and rotation-trick gradient estimators.
- `_base.py`: what they share (`QuantizerOutput`, code statistics, health
  metrics, the cross-replica sum); `_composite.py`: the stages of the composites.

Each module's docstring names its papers. Conventions shared by every quantizer:
computation in float32 (also under `mixed_float16`); `quantize_vectors(x, training=False)`
returns `QuantizerOutput(quantized, indices, loss)`, what `call` computes before it
adds the loss (`add_loss`) and, in training, records code usage; `get_code_indices(x)`
returns int32 indices of shape `x.shape[:-1]` (plus a trailing axis of size
`num_quantizers`/`num_groups` for `ResidualVQ`/`GroupedVQ`); `lookup(indices)` maps
indices back to vectors of the input's size; state updates (EMA, k-means, dead-code
restart) run only when called with `training=True`, and so do the
`<name>_perplexity`, `<name>_usage` and `<name>_dead_codes` metrics.
"""

from kzoo.layers.quantizers._base import (
    QuantizerOutput,
    code_counts,
    code_statistics,
    cross_replica_sum,
)
from kzoo.layers.quantizers.estimators import (
    GRADIENT_ESTIMATORS,
    rotation_trick,
    straight_through,
)
from kzoo.layers.quantizers.fsq import FSQ
from kzoo.layers.quantizers.grouped import GroupedVQ
from kzoo.layers.quantizers.lfq import LFQ, LFQ_MAX_BITS
from kzoo.layers.quantizers.residual import ResidualVQ
from kzoo.layers.quantizers.vector import (
    NEAREST_CODE_SCOPE,
    VectorQuantizer,
    nearest_code,
    orthogonal_loss,
)

__all__ = [
    "FSQ",
    "GRADIENT_ESTIMATORS",
    "LFQ",
    "LFQ_MAX_BITS",
    "NEAREST_CODE_SCOPE",
    "GroupedVQ",
    "QuantizerOutput",
    "ResidualVQ",
    "VectorQuantizer",
    "code_counts",
    "code_statistics",
    "cross_replica_sum",
    "nearest_code",
    "orthogonal_loss",
    "rotation_trick",
    "straight_through",
]
