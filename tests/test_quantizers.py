import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import VectorQuantizer
from kzoo.testing import assert_config_roundtrip, dtype_policy, gradients


def _vq(**kwargs):
    args = {"codebook_size": 16, "embedding_dim": 4}
    args.update(kwargs)
    layer = VectorQuantizer(**args)
    layer.build((None, args["embedding_dim"]))
    return layer


def test_indices_are_the_brute_force_nearest_codes():
    vq = _vq()
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    codebook = ops.convert_to_numpy(vq.codebook)
    distances = ((x[..., None, :] - codebook) ** 2).sum(-1)  # (3, 5, 16)
    indices = ops.convert_to_numpy(vq.get_code_indices(x))
    assert indices.shape == (3, 5) and indices.dtype == np.int32
    np.testing.assert_array_equal(indices, distances.argmin(-1))
    np.testing.assert_allclose(ops.convert_to_numpy(vq.lookup(indices)), codebook[indices])


def test_forward_is_quantized_and_gradient_is_straight_through():
    vq = _vq()
    x = keras.Variable(np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32"))
    out = vq(x)
    assert out.shape == (2, 3, 4)
    expected = ops.convert_to_numpy(vq.lookup(vq.get_code_indices(x)))
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-6)
    (grad,) = gradients(lambda: ops.sum(vq(x) * 3.0), [x])
    np.testing.assert_allclose(ops.convert_to_numpy(grad), np.full((2, 3, 4), 3.0))


def test_losses_match_equation_3():
    vq = _vq(commitment_cost=0.5, codebook_cost=2.0)
    x = np.random.default_rng(2).normal(size=(8, 4)).astype("float32")
    vq(x)
    q = ops.convert_to_numpy(vq.lookup(vq.get_code_indices(x)))
    mse = np.mean((x - q) ** 2)
    (loss,) = vq.losses
    np.testing.assert_allclose(float(loss), 0.5 * mse + 2.0 * mse, rtol=1e-5)
    # The codebook receives the codebook-loss gradient; inputs the commitment one.
    (codebook_grad,) = gradients(lambda: (vq(x), ops.sum(vq.losses))[1], [vq.codebook])
    assert np.abs(ops.convert_to_numpy(codebook_grad)).sum() > 0


def test_ema_update_matches_a_numpy_reference():
    """Sonnet's VectorQuantizerEMA update (VQ-VAE paper, Appendix A.1), step by step."""
    decay, eps, size = 0.8, 1e-5, 8
    vq = _vq(codebook_size=size, embedding_dim=2, decay=decay, epsilon=eps)
    assert not vq.codebook.trainable
    rng = np.random.default_rng(4)
    codebook = ops.convert_to_numpy(vq.codebook).astype(np.float64)
    cluster, embed_sum = np.ones(size), codebook.copy()
    for _ in range(5):
        x = rng.normal(size=(64, 2)).astype("float32")
        indices = ((x[:, None] - codebook) ** 2).sum(-1).argmin(-1)
        quantized = codebook[indices]  # looked up before the update
        counts = np.bincount(indices, minlength=size)
        sums = np.zeros_like(codebook)
        np.add.at(sums, indices, x)
        cluster = decay * cluster + (1 - decay) * counts
        embed_sum = decay * embed_sum + (1 - decay) * sums
        total = cluster.sum()
        codebook = embed_sum / ((cluster + eps) / (total + size * eps) * total)[:, None]
        vq(x, training=True)
        np.testing.assert_allclose(ops.convert_to_numpy(vq.codebook), codebook, rtol=1e-4)
    # EMA mode has no codebook loss: the only loss is the commitment term.
    np.testing.assert_allclose(
        float(vq.losses[-1]), 0.25 * np.mean((x - quantized) ** 2), rtol=1e-4
    )


def test_perplexity_and_usage_metrics():
    vq = _vq()
    code = ops.convert_to_numpy(vq.codebook)[3]
    vq(np.tile(code, (10, 1)), training=True)  # every vector is code 3
    assert float(vq.perplexity_tracker.result()) == pytest.approx(1.0)
    assert float(vq.usage_tracker.result()) == pytest.approx(1 / 16)
    vq.perplexity_tracker.reset_state()
    vq.usage_tracker.reset_state()
    vq(ops.convert_to_numpy(vq.codebook)[:8], training=True)  # codes 0..7 once each
    assert float(vq.perplexity_tracker.result()) == pytest.approx(8.0, rel=1e-4)
    assert float(vq.usage_tracker.result()) == pytest.approx(0.5)
    assert [m.name for m in vq.metrics] == [f"{vq.name}_perplexity", f"{vq.name}_usage"]


def test_stays_float32_under_mixed_precision():
    with dtype_policy("mixed_float16"):
        vq = VectorQuantizer(16, 4)
        out = vq(ops.cast(np.ones((2, 4)), "float16"))
    assert vq.compute_dtype == "float32"
    assert vq.codebook.dtype == "float32"
    assert out.dtype == "float32"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codebook_size": 0}, r"Received: codebook_size=0"),
        ({"embedding_dim": -3}, r"Received: embedding_dim=-3"),
        ({"commitment_cost": -0.1}, r"Received: commitment_cost=-0.1"),
        ({"decay": 1.5}, r"Received: decay=1.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"codebook_size": 16, "embedding_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**args)


def test_input_dim_must_match_embedding_dim():
    with pytest.raises(ValueError, match=r"embedding_dim.*Received: input_shape=\(2, 5\)"):
        VectorQuantizer(16, 4)(np.ones((2, 5), "float32"))


def test_config_and_keras_roundtrip(tmp_path):
    vq = _vq(decay=0.9, commitment_cost=0.3)
    clone = assert_config_roundtrip(vq)
    assert clone.decay == 0.9
    inputs = keras.Input((4,))
    model = keras.Model(inputs, VectorQuantizer(16, 4, decay=0.9)(inputs))
    x = np.random.default_rng(3).normal(size=(5, 4)).astype("float32")
    model.save(tmp_path / "vq.keras")
    reloaded = keras.saving.load_model(tmp_path / "vq.keras")
    np.testing.assert_array_equal(ops.convert_to_numpy(reloaded(x)), ops.convert_to_numpy(model(x)))
