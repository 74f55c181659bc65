import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import MultiHeadAttention, PositionEmbedding, TransformerBlock
from kzoo.layers.transformer import scaled_dot_product_attention
from kzoo.testing import assert_config_roundtrip, dtype_policy, gradients

B, T, D = 2, 6, 16


def _tokens(seed=0, shape=(B, T, D)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _mask():
    # Row 0: 4 real tokens then padding; row 1: all real.
    return np.array([[1, 1, 1, 1, 0, 0], [1] * T], dtype=bool)


def test_attention_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 2, 3, 4)).astype("float32") for _ in range(3))
    mask = np.array([True, True, False])[None, None, None, :]
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0
    scores[..., 2] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    got = ops.convert_to_numpy(scaled_dot_product_attention(q, k, v, mask))
    np.testing.assert_allclose(got, weights @ v, atol=1e-5)


def test_padded_keys_have_no_influence():
    attention = MultiHeadAttention(num_heads=4)
    x = _tokens()
    out = ops.convert_to_numpy(attention(x, key_padding_mask=_mask()))
    changed = x.copy()
    changed[0, 4:] = 100.0  # new content only at padded positions
    out2 = ops.convert_to_numpy(attention(changed, key_padding_mask=_mask()))
    np.testing.assert_allclose(out2[0, :4], out[0, :4], atol=1e-5)
    np.testing.assert_allclose(out2[1], out[1], atol=1e-5)
    # Without the mask the padded content does change the real positions.
    out3 = ops.convert_to_numpy(attention(changed))
    assert np.abs(out3[0, :4] - out[0, :4]).max() > 1e-2


def test_all_padded_keys_give_the_output_bias_not_nan():
    attention = MultiHeadAttention(num_heads=2)
    out = ops.convert_to_numpy(attention(_tokens(), key_padding_mask=np.zeros((B, T), bool)))
    bias = ops.convert_to_numpy(attention.output_proj.bias)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np.broadcast_to(bias, out.shape), atol=1e-6)


def test_causal_attention_ignores_later_positions():
    attention = MultiHeadAttention(num_heads=2)
    x = _tokens()
    out = ops.convert_to_numpy(attention(x, causal=True))
    changed = x.copy()
    changed[:, 3:] = -5.0
    out2 = ops.convert_to_numpy(attention(changed, causal=True))
    np.testing.assert_allclose(out2[:, :3], out[:, :3], atol=1e-5)
    assert np.abs(out2[:, 3:] - out[:, 3:]).max() > 1e-2


def test_cross_attention_shapes_and_output_dim():
    attention = MultiHeadAttention(num_heads=2, key_dim=8, output_dim=12)
    out = attention(_tokens(), context=_tokens(1, (B, 9, 5)))
    assert tuple(out.shape) == (B, T, 12)
    assert attention.compute_output_shape((B, T, D), (B, 9, 5)) == (B, T, 12)


def test_block_shapes_mask_and_gradients():
    block = TransformerBlock(D, num_heads=4, mlp_dim=32)
    x = _tokens()
    out = block(x, padding_mask=_mask())
    assert tuple(out.shape) == (B, T, D)
    changed = x.copy()
    changed[0, 4:] = 50.0
    out2 = block(changed, padding_mask=_mask())
    np.testing.assert_allclose(
        ops.convert_to_numpy(out2)[0, :4], ops.convert_to_numpy(out)[0, :4], atol=1e-5
    )
    grads = gradients(
        lambda: ops.sum(ops.square(block(x, padding_mask=_mask()))), block.trainable_weights
    )
    assert len(grads) == len(block.trainable_weights) == 16
    for grad, weight in zip(grads, block.trainable_weights, strict=True):
        assert grad is not None and np.all(np.isfinite(grad)), weight.path
        # A key bias shifts every score of a row equally, which softmax ignores.
        if not weight.path.endswith("key/bias"):
            assert np.abs(grad).max() > 0, weight.path


def test_decoder_block_with_cross_attention():
    block = TransformerBlock(D, num_heads=2, causal=True, cross_attention=True)
    context = _tokens(2, (B, 5, 8))
    context_mask = np.array([[1, 1, 0, 0, 0], [1] * 5], bool)
    out = block(_tokens(), context=context, context_mask=context_mask)
    changed = context.copy()
    changed[0, 2:] = 9.0
    out2 = block(_tokens(), context=changed, context_mask=context_mask)
    np.testing.assert_allclose(ops.convert_to_numpy(out2), ops.convert_to_numpy(out), atol=1e-5)
    with pytest.raises(ValueError, match="needs a `context`"):
        block(_tokens())


def test_block_under_mixed_precision_stays_finite():
    with dtype_policy("mixed_float16"):
        block = TransformerBlock(D, num_heads=4)
        # Large activations: float16 scores would overflow without the float32 softmax.
        out = block(_tokens() * 30.0, padding_mask=_mask())
    assert out.dtype == "float16"
    assert np.all(np.isfinite(ops.convert_to_numpy(out)))


def test_config_round_trips_and_keras_save(tmp_path):
    block = TransformerBlock(D, num_heads=4, mlp_dim=24, dropout=0.1, causal=True)
    assert_config_roundtrip(block)
    assert_config_roundtrip(MultiHeadAttention(4, key_dim=3, output_dim=5, use_bias=False))
    assert_config_roundtrip(PositionEmbedding(10, initializer_stddev=0.5))

    inputs = keras.Input((T, D))
    mask = keras.Input((T,), dtype="bool")
    model = keras.Model([inputs, mask], block(inputs, padding_mask=mask))
    model.save(tmp_path / "block.keras")
    reloaded = keras.saving.load_model(tmp_path / "block.keras")
    np.testing.assert_allclose(
        ops.convert_to_numpy(reloaded([_tokens(), _mask()])),
        ops.convert_to_numpy(model([_tokens(), _mask()])),
        atol=1e-6,
    )


def test_position_embedding_adds_the_first_rows():
    layer = PositionEmbedding(8)
    x = np.zeros((1, 5, 4), np.float32)
    out = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out[0], ops.convert_to_numpy(layer.embeddings)[:5])
    with pytest.raises(ValueError, match="more positions"):
        PositionEmbedding(4)(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_dim": 0, "num_heads": 1}, "hidden_dim"),
        ({"hidden_dim": 10, "num_heads": 3}, "must divide"),
        ({"hidden_dim": 8, "num_heads": 2, "dropout": 1.0}, "dropout"),
        ({"hidden_dim": 8, "num_heads": 2, "mlp_dim": -1}, "mlp_dim"),
    ],
)
def test_bad_block_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerBlock(**kwargs)


def test_block_rejects_the_wrong_width():
    with pytest.raises(ValueError, match="hidden_dim"):
        TransformerBlock(8, 2)(_tokens())
    with pytest.raises(ValueError, match="must divide the query width"):
        MultiHeadAttention(num_heads=3)(_tokens())
