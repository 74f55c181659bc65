"""Gradient estimators: pass a gradient through the (non-differentiable) choice of a code.

- Straight-through estimator: VQ-VAE, van den Oord et al. 2017,
  https://arxiv.org/abs/1711.00937 (Sec. 3.1: the decoder's gradient is copied to
  the encoder output).
- Rotation trick: Fifty et al. 2024, https://arxiv.org/abs/2410.06424 (Sec. 4.2).
"""

from keras import ops

from kzoo.layers.quantizers._base import NORM_EPSILON

GRADIENT_ESTIMATORS = ("ste", "rotation")


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
    vector_norm = ops.maximum(ops.norm(vectors, axis=-1, keepdims=True), NORM_EPSILON)
    code_norm = ops.norm(codes, axis=-1, keepdims=True)
    unit_vectors = ops.stop_gradient(vectors / vector_norm)  # e^
    unit_codes = codes / ops.maximum(code_norm, NORM_EPSILON)  # q^
    scale = ops.stop_gradient(code_norm / vector_norm)
    # ||e^ + q^||^2 / 2 = 1 + cos(e, q); clamped where e and q point apart.
    half_sum_norm_sq = ops.maximum(
        1.0 + ops.sum(unit_vectors * unit_codes, axis=-1, keepdims=True), NORM_EPSILON
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


def _constant_codes(vectors, codes):
    return ops.stop_gradient(codes)


_ESTIMATOR_FNS = {"ste": straight_through, "rotation": rotation_trick, "none": _constant_codes}


def apply_estimator(name, vectors, codes):
    """`codes` with the gradient of estimator `name` to `vectors`.

    Args:
        name: one of `GRADIENT_ESTIMATORS`, or `"none"`: the codes as constants (no
            gradient to `vectors` or to `codes`).
        vectors: float tensor `(..., D)`.
        codes: float tensor `(..., D)`.

    Returns:
        float tensor `(..., D)` with the value of `codes`.
    """
    if name not in _ESTIMATOR_FNS:
        raise ValueError(
            f"`gradient_estimator` must be one of {(*GRADIENT_ESTIMATORS, 'none')}. "
            f"Received: gradient_estimator={name!r}"
        )
    return _ESTIMATOR_FNS[name](vectors, codes)
