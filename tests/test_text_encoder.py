import keras
import numpy as np
import pytest
from keras import ops

from kzoo.data.tokenizer import Tokenizer
from kzoo.models import TextEncoder
from kzoo.models.text_encoder import masked_pool
from kzoo.testing import assert_config_roundtrip, dtype_policy, gradients

T = 8


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_shapes_vocabulary(sequence_length=T)


def _encoder(tokenizer, **kwargs):
    args = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, **kwargs}
    return TextEncoder(tokenizer.vocabulary_size, T, **args)


def _np(x):
    return ops.convert_to_numpy(x)


def test_output_shapes_and_masked_mean_pooling(tokenizer):
    encoder = _encoder(tokenizer)
    ids = tokenizer(["a small red circle", "a ring at the center on a gray background"])
    outputs = encoder(ids)
    assert set(outputs) == {"sequence", "pooled"}
    assert tuple(outputs["sequence"].shape) == (2, T, 16)
    assert tuple(outputs["pooled"].shape) == (2, 16)
    sequence, pooled = _np(outputs["sequence"]), _np(outputs["pooled"])
    np.testing.assert_allclose(pooled[0], sequence[0, :4].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(pooled[1], sequence[1].mean(axis=0), atol=1e-5)


def test_padding_is_masked(tokenizer):
    # Real tokens' states do not depend on how many padding positions follow: the
    # same caption through the same weights at twice the length gives the same result.
    encoder = _encoder(tokenizer)
    longer = TextEncoder(tokenizer.vocabulary_size, 2 * T, hidden_dim=16, num_layers=1, num_heads=2)
    # Same weights; the longer position table gets extra (unused) rows.
    for target, source in zip(longer.weights, encoder.weights, strict=True):
        value = _np(source)
        if tuple(target.shape) != value.shape:
            value = np.concatenate([value, np.zeros((T, 16), np.float32)])
        target.assign(value)
    ids = _np(tokenizer(["a small red circle"]))
    padded = np.concatenate([ids, np.zeros_like(ids)], axis=1)
    short, long = encoder(ids), longer(padded)
    np.testing.assert_allclose(
        _np(long["sequence"])[0, :4], _np(short["sequence"])[0, :4], atol=1e-5
    )
    np.testing.assert_allclose(_np(long["pooled"]), _np(short["pooled"]), atol=1e-5)


def test_empty_caption_pools_to_zero(tokenizer):
    for pooling in ("mean", "last"):
        encoder = _encoder(tokenizer, pooling=pooling)
        outputs = encoder(tokenizer(["", "a ring"]))
        assert np.all(np.isfinite(_np(outputs["sequence"])))
        np.testing.assert_array_equal(_np(outputs["pooled"])[0], 0.0)
        assert np.abs(_np(outputs["pooled"])[1]).max() > 0


def test_last_pooling_takes_the_last_real_token(tokenizer):
    ids = tokenizer.tokenize(["a small red circle", "a ring"], add_eos=True)
    encoder = _encoder(tokenizer, pooling="last")
    outputs = encoder(ids)
    sequence = _np(outputs["sequence"])
    np.testing.assert_allclose(_np(outputs["pooled"])[0], sequence[0, 4], atol=1e-6)  # [EOS]
    np.testing.assert_allclose(_np(outputs["pooled"])[1], sequence[1, 2], atol=1e-6)
    pooled = _np(masked_pool(ops.ones((1, 3, 2)), np.array([[0, 0, 0]]), mode="last"))
    np.testing.assert_array_equal(pooled, 0.0)


def test_causal_encoder_ignores_later_tokens(tokenizer):
    encoder = _encoder(tokenizer, causal=True)
    a = _np(encoder(tokenizer(["a small red circle"]))["sequence"])
    b = _np(encoder(tokenizer(["a small red square"]))["sequence"])
    np.testing.assert_allclose(a[0, :3], b[0, :3], atol=1e-5)
    assert np.abs(a[0, 3] - b[0, 3]).max() > 1e-3


def test_gradients_reach_every_weight(tokenizer):
    encoder = _encoder(tokenizer)
    ids = tokenizer(["a small red circle", "a large blue ring at the center"])
    grads = gradients(
        lambda: ops.sum(ops.square(encoder(ids)["pooled"])), encoder.trainable_weights
    )
    for grad, weight in zip(grads, encoder.trainable_weights, strict=True):
        assert grad is not None, weight.path
        assert np.all(np.isfinite(ops.convert_to_numpy(grad))), weight.path


def test_mixed_precision_output_is_finite(tokenizer):
    with dtype_policy("mixed_float16"):
        encoder = _encoder(tokenizer)
        outputs = encoder(tokenizer(["a small red circle", ""]))
    assert outputs["pooled"].dtype == "float16"
    assert np.all(np.isfinite(_np(outputs["pooled"])))


def test_config_and_keras_round_trip(tokenizer, tmp_path):
    encoder = _encoder(tokenizer, mlp_dim=20, dropout=0.1, pooling="last", causal=True)
    clone = assert_config_roundtrip(encoder)
    assert clone.count_params() == encoder.count_params()
    ids = tokenizer(["a small red circle"])
    encoder.save(tmp_path / "text.keras")
    reloaded = keras.saving.load_model(tmp_path / "text.keras")
    np.testing.assert_allclose(_np(reloaded(ids)["pooled"]), _np(encoder(ids)["pooled"]), atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocabulary_size": 0}, "vocabulary_size"),
        ({"hidden_dim": 10, "num_heads": 4}, "must divide"),
        ({"pooling": "max"}, "pooling"),
        ({"num_layers": 0}, "num_layers"),
        ({"dropout": 2.0}, "dropout"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"vocabulary_size": 10, "sequence_length": 4, "hidden_dim": 8, "num_heads": 2}
    with pytest.raises(ValueError, match=match):
        TextEncoder(**{**args, **kwargs})


def test_wrong_sequence_length_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="incompatible"):
        _encoder(tokenizer)(np.zeros((1, T + 1), np.int32))
