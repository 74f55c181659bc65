import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import ConcatFusion, CrossAttention, FiLM, GatedFusion
from kzoo.testing import assert_config_roundtrip, dtype_policy, gradients

B, N, D, T, E = 2, 5, 16, 4, 8


def _array(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


TOKENS = _array(0, (B, N, D))
MAPS = _array(1, (B, 3, 3, D))
CONTEXT = _array(2, (B, T, E))
VECTOR = _array(3, (B, E))
# Row 0: two real context tokens then padding; row 1: all real.
CONTEXT_MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)


def _padded_context_changed():
    changed = CONTEXT.copy()
    changed[0, 2:] = 77.0
    return changed


def _open_gates(layer):
    layer.attention_gate.assign(1.0)
    layer.mlp_gate.assign(1.0)


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("x", [TOKENS, MAPS], ids=["tokens", "maps"])
def test_cross_attention_shapes(x):
    layer = CrossAttention(num_heads=4)
    out = layer(x, CONTEXT, context_mask=CONTEXT_MASK)
    assert tuple(out.shape) == x.shape
    assert np.abs(_np(out) - x).max() > 1e-3  # a residual plus a non-zero update


@pytest.mark.parametrize("make", [lambda: CrossAttention(4), lambda: GatedFusion(4)])
def test_padded_context_has_no_influence(make):
    layer = make()
    if isinstance(layer, GatedFusion):
        layer(TOKENS, CONTEXT)
        _open_gates(layer)
    out = _np(layer(TOKENS, CONTEXT, context_mask=CONTEXT_MASK))
    changed = _np(layer(TOKENS, _padded_context_changed(), context_mask=CONTEXT_MASK))
    np.testing.assert_allclose(changed, out, atol=1e-5)
    unmasked = _np(layer(TOKENS, _padded_context_changed()))
    assert np.abs(unmasked[0] - out[0]).max() > 1e-2


def test_cross_attention_with_no_valid_context_is_finite():
    layer = CrossAttention(2)
    out = _np(layer(TOKENS, CONTEXT, context_mask=np.zeros((B, T), bool)))
    bias = _np(layer.attention.output_proj.bias)
    np.testing.assert_allclose(out, TOKENS + bias, atol=1e-5)


def test_film_is_the_identity_at_init_and_modulates_after():
    layer = FiLM()
    for x in (TOKENS, MAPS):
        np.testing.assert_allclose(_np(FiLM()(x, VECTOR)), x, atol=0)
    layer(MAPS, VECTOR)
    kernel = _array(4, tuple(layer.modulation.kernel.shape))
    layer.modulation.kernel.assign(kernel)
    scale, shift = np.split(VECTOR @ kernel, 2, axis=-1)
    expected = MAPS * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    np.testing.assert_allclose(_np(layer(MAPS, VECTOR)), expected, atol=1e-4)


def test_concat_fusion_broadcasts_a_vector_and_projects():
    layer = ConcatFusion(output_dim=6)
    out = layer(MAPS, VECTOR)
    assert tuple(out.shape) == (B, 3, 3, 6)
    kernel, bias = _np(layer.projection.kernel), _np(layer.projection.bias)
    joined = np.concatenate([MAPS, np.broadcast_to(VECTOR[:, None, None], (B, 3, 3, E))], -1)
    np.testing.assert_allclose(_np(out), joined @ kernel + bias, atol=1e-4)
    # Per-position conditioning of the same positions.
    assert tuple(ConcatFusion()(TOKENS, _array(5, (B, N, E))).shape) == (B, N, D)


def test_gated_fusion_is_the_identity_at_init():
    layer = GatedFusion(num_heads=4)
    np.testing.assert_allclose(_np(layer(TOKENS, CONTEXT, context_mask=CONTEXT_MASK)), TOKENS)
    grads = gradients(
        lambda: ops.sum(ops.square(layer(TOKENS, CONTEXT, context_mask=CONTEXT_MASK))),
        [layer.attention_gate, layer.mlp_gate],
    )
    # Closed gates still learn: their gradient is non-zero, so they open.
    assert all(abs(float(g)) > 0 for g in grads)


@pytest.mark.parametrize(
    "make, args",
    [
        (lambda: CrossAttention(4), (TOKENS, CONTEXT)),
        (lambda: FiLM(), (TOKENS, VECTOR)),
        (lambda: ConcatFusion(), (TOKENS, VECTOR)),
        (lambda: GatedFusion(4), (TOKENS, CONTEXT)),
    ],
    ids=["cross_attention", "film", "concat", "gated"],
)
def test_gradients_reach_every_weight(make, args):
    layer = make()
    layer(*args)
    if isinstance(layer, GatedFusion):
        _open_gates(layer)
    if isinstance(layer, FiLM):
        layer.modulation.kernel.assign(_array(6, tuple(layer.modulation.kernel.shape)))
    grads = gradients(lambda: ops.sum(ops.square(layer(*args))), layer.trainable_weights)
    for grad, weight in zip(grads, layer.trainable_weights, strict=True):
        assert grad is not None and np.all(np.isfinite(grad)), weight.path
        if not weight.path.endswith("key/bias"):  # softmax ignores a shared score shift
            assert np.abs(grad).max() > 0, weight.path


def test_under_mixed_precision_outputs_are_float16_and_finite():
    with dtype_policy("mixed_float16"):
        for layer, args in (
            (CrossAttention(4), (TOKENS * 20, CONTEXT * 20, CONTEXT_MASK)),
            (GatedFusion(4), (TOKENS, CONTEXT, CONTEXT_MASK)),
            (FiLM(), (TOKENS, VECTOR)),
            (ConcatFusion(), (TOKENS, VECTOR)),
        ):
            out = layer(*args)
            assert out.dtype == "float16", type(layer).__name__
            assert np.all(np.isfinite(_np(out)))


def test_config_round_trips_and_keras_save(tmp_path):
    assert_config_roundtrip(CrossAttention(4, key_dim=3, dropout=0.1, layer_norm_epsilon=1e-6))
    assert_config_roundtrip(FiLM())
    assert_config_roundtrip(ConcatFusion(output_dim=7))
    assert_config_roundtrip(GatedFusion(2, mlp_ratio=2.0, dropout=0.1))

    tokens = keras.Input((N, D))
    context = keras.Input((T, E))
    mask = keras.Input((T,), dtype="bool")
    pooled = keras.Input((E,))
    x = CrossAttention(4)(tokens, context, context_mask=mask)
    x = GatedFusion(4)(x, context, context_mask=mask)
    x = FiLM()(x, pooled)
    x = ConcatFusion(output_dim=D)(x, pooled)
    model = keras.Model([tokens, context, mask, pooled], x)
    gated = [layer for layer in model.layers if isinstance(layer, GatedFusion)][0]
    _open_gates(gated)
    inputs = [TOKENS, CONTEXT, CONTEXT_MASK, VECTOR]
    model.save(tmp_path / "fusion.keras")
    reloaded = keras.saving.load_model(tmp_path / "fusion.keras")
    np.testing.assert_allclose(_np(reloaded(inputs)), _np(model(inputs)), atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: CrossAttention(0), "num_heads"),
        (lambda: CrossAttention(2, dropout=-0.1), "dropout"),
        (lambda: ConcatFusion(output_dim=0), "output_dim"),
        (lambda: GatedFusion(2, mlp_ratio=0), "mlp_ratio"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
