import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import VectorQuantizer
from kzoo.layers.quantizers import orthogonal_loss, rotation_trick
from kzoo.testing import assert_config_roundtrip, assert_keras_roundtrip, dtype_policy, gradients


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


def test_indices_match_a_float64_search_far_from_the_origin():
    # Codes around (1000, ..., 1000), in pairs 0.2 apart: the nearest of a pair is nearer
    # by at most 0.04 in squared distance, while 2 x.e - ||e||^2 (~8e6) rounds to ~0.5 in
    # float32. The search must still pick what float64 picks: the direct distances it
    # compares are exact up to rounding relative to the distances themselves (~1e-8).
    dim = 8
    eye = np.eye(dim)
    first = 1000.0 + 10.0 * eye
    codebook = np.stack([first, first + 0.2 * np.roll(eye, 1, axis=1)], 1).reshape(16, dim)
    rng = np.random.default_rng(12)
    pair = rng.integers(0, dim, 256)
    t = rng.uniform(0.0, 1.0, 256)
    x = first[pair] + 0.2 * t[:, None] * np.roll(eye, 1, axis=1)[pair]
    x = (x + rng.normal(0.0, 0.01, x.shape)).astype("float32")
    vq = _vq(codebook_size=16, embedding_dim=dim)
    vq.codebook.assign(codebook.astype("float32"))
    exact = x.astype("float64")[:, None, :] - codebook.astype("float32").astype("float64")
    nearest = (exact**2).sum(-1).argmin(-1)
    assert 0.3 < np.mean(nearest % 2) < 0.7  # both codes of the pairs are nearest often
    np.testing.assert_array_equal(ops.convert_to_numpy(vq.get_code_indices(x)), nearest)
    # The inference forward pass (what a serving signature runs) picks the same codes.
    quantized = ops.convert_to_numpy(vq(x, training=False))
    np.testing.assert_array_equal(quantized, codebook.astype("float32")[nearest])


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
    assert [m.name for m in vq.metrics] == [
        f"{vq.name}_perplexity",
        f"{vq.name}_usage",
        f"{vq.name}_dead_codes",
    ]


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


# --- Codebook-learning options --------------------------------------------------------


def _rotation_reference(e, q, upstream):
    """Rotation trick (Fifty et al. 2024, Sec. 4.2) row by row with explicit matrices."""
    e, q, upstream = (np.asarray(a, np.float64) for a in (e, q, upstream))
    grads = np.zeros_like(e)
    for n in range(len(e)):
        e_hat, q_hat = e[n] / np.linalg.norm(e[n]), q[n] / np.linalg.norm(q[n])
        r = (e_hat + q_hat) / np.linalg.norm(e_hat + q_hat)
        rotation = np.eye(len(r)) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, e_hat)
        scale = np.linalg.norm(q[n]) / np.linalg.norm(e[n])
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(len(r)), atol=1e-10)
        np.testing.assert_allclose(scale * rotation @ e[n], q[n], atol=1e-10)
        grads[n] = scale * rotation.T @ upstream[n]
    return grads


def test_rotation_trick_matches_a_numpy_reference():
    rng = np.random.default_rng(5)
    e, q, upstream = (rng.normal(size=(6, 4)) for _ in range(3))
    vectors = keras.Variable(e.astype("float32"))
    out = rotation_trick(vectors, q.astype("float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(out), q, atol=1e-6)
    (grad,) = gradients(
        lambda: ops.sum(rotation_trick(vectors, q.astype("float32")) * upstream), [vectors]
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(grad), _rotation_reference(e, q, upstream), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_gradient_estimators_forward_codes_and_reach_the_inputs(estimator):
    vq = _vq(gradient_estimator=estimator)
    rng = np.random.default_rng(6)
    x = keras.Variable(rng.normal(size=(2, 3, 4)).astype("float32"))
    upstream = rng.normal(size=(2, 3, 4)).astype("float32")
    codes = ops.convert_to_numpy(vq.lookup(vq.get_code_indices(x)))
    np.testing.assert_allclose(ops.convert_to_numpy(vq(x)), codes, atol=1e-6)
    (grad,) = gradients(lambda: ops.sum(vq(x) * upstream), [x])
    grad = ops.convert_to_numpy(grad)
    if estimator == "ste":
        np.testing.assert_allclose(grad, upstream)
    else:
        e = ops.convert_to_numpy(x).reshape(-1, 4).astype(np.float64)
        expected = _rotation_reference(e, codes.reshape(-1, 4), upstream.reshape(-1, 4))
        np.testing.assert_allclose(grad.reshape(-1, 4), expected, rtol=1e-4, atol=1e-5)
        assert np.abs(grad - upstream).max() > 1e-2  # not the straight-through copy


def _clustered(rng, centers, per_cluster, noise=0.05):
    points = np.repeat(np.asarray(centers, "float32"), per_cluster, axis=0)
    return (points + noise * rng.normal(size=points.shape)).astype("float32")


def test_kmeans_init_runs_once_and_its_flag_survives_save_load(tmp_path):
    rng = np.random.default_rng(7)
    x = _clustered(rng, [[5, 5], [-5, 5], [5, -5], [-5, -5]], 16)
    inputs = keras.Input((2,))
    vq = VectorQuantizer(4, 2, kmeans_init=True, seed=0, name="vq")
    model = keras.Model(inputs, vq(inputs))
    assert float(vq.initialized) == 0.0
    random_distortion = ((x[:, None] - ops.convert_to_numpy(vq.codebook)) ** 2).sum(-1).min(-1)
    model(x, training=True)
    assert float(vq.initialized) == 1.0
    codebook = ops.convert_to_numpy(vq.codebook)
    # Lloyd's fixed point: every used code is the mean of the vectors assigned to it.
    indices = ops.convert_to_numpy(vq.get_code_indices(x))
    for code in np.unique(indices):
        np.testing.assert_allclose(codebook[code], x[indices == code].mean(0), atol=1e-4)
    distortion = ((x - codebook[indices]) ** 2).sum(-1)
    assert distortion.mean() < 0.1 * random_distortion.mean()
    # Not re-run on later batches (the codebook only learns by gradient here).
    model(x + 3.0, training=True)
    np.testing.assert_array_equal(ops.convert_to_numpy(vq.codebook), codebook)

    model.save(tmp_path / "vq.keras")
    reloaded = keras.saving.load_model(tmp_path / "vq.keras")
    reloaded_vq = reloaded.get_layer("vq")
    assert float(reloaded_vq.initialized) == 1.0
    reloaded(x - 3.0, training=True)
    np.testing.assert_array_equal(ops.convert_to_numpy(reloaded_vq.codebook), codebook)


@pytest.mark.parametrize("decay", [None, 0.9])
def test_dead_codes_are_reseeded_from_the_batch_after_the_window(decay):
    rng = np.random.default_rng(8)
    x = (0.1 * rng.normal(size=(32, 2))).astype("float32")

    def trained(seed, steps):
        vq = _vq(codebook_size=8, embedding_dim=2, decay=decay, seed=seed,
                 dead_code_threshold=0.5, dead_code_window=2)  # fmt: skip
        far = np.array([[0.0, 0.0]] + [[100.0 + i, 100.0] for i in range(7)], "float32")
        vq.codebook.assign(far)
        if decay is not None:
            vq.ema_embed_sum.assign(far)
        for _ in range(steps):
            vq(x, training=True)
        return vq

    # Codes 1..7 get no vector: alive for `window - 1` steps, re-seeded at step `window`.
    after_one = ops.convert_to_numpy(trained(3, 1).codebook)
    assert (after_one[1:, 0] > 99).all()
    vq = trained(3, 2)
    codebook = ops.convert_to_numpy(vq.codebook)
    restarted = codebook[1:]
    assert len({tuple(row) for row in restarted}) == 7  # distinct batch vectors
    for row in restarted:
        assert np.abs(x - row).sum(-1).min() < 1e-6
    if decay is not None:
        np.testing.assert_allclose(ops.convert_to_numpy(vq.ema_cluster_size)[1:], 1.0)
    assert float(vq.dead_codes_tracker.result()) == 7  # unused by every batch so far
    vq(x, training=True)
    assert float(vq.dead_codes_tracker.result()) == 0  # each new code now has its vector
    # Deterministic given the seed; another seed draws other vectors.
    np.testing.assert_array_equal(ops.convert_to_numpy(trained(3, 2).codebook), codebook)
    assert not np.array_equal(ops.convert_to_numpy(trained(4, 2).codebook), codebook)


def test_cosine_codes_are_unit_vectors_of_maximal_cosine():
    vq = _vq(use_cosine=True)
    x = np.random.default_rng(9).normal(size=(20, 4)).astype("float32")
    codebook = ops.convert_to_numpy(vq.codebook)
    unit_codes = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
    indices = ops.convert_to_numpy(vq.get_code_indices(x))
    np.testing.assert_array_equal(indices, (x @ unit_codes.T).argmax(-1))
    out = ops.convert_to_numpy(vq(x))
    np.testing.assert_allclose(out, unit_codes[indices], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)


def test_factorised_codes_project_to_code_dim_and_back():
    vq = VectorQuantizer(16, 8, code_dim=3)
    vq.build((None, 8))
    assert tuple(vq.codebook.shape) == (16, 3)
    rng = np.random.default_rng(10)
    x = keras.Variable(rng.normal(size=(2, 5, 8)).astype("float32"))
    upstream = rng.normal(size=(2, 5, 8)).astype("float32")
    out = vq(x)
    assert out.shape == (2, 5, 8)
    np.testing.assert_allclose(
        ops.convert_to_numpy(out),
        ops.convert_to_numpy(vq.lookup(vq.get_code_indices(x))),
        atol=1e-5,
    )
    watched = [x, vq.project_in.kernel, vq.project_out.kernel, vq.codebook]
    grads = gradients(lambda: ops.sum(vq(x) * upstream) + ops.sum(vq.losses), watched)
    for variable, grad in zip(watched, grads, strict=True):
        assert np.abs(ops.convert_to_numpy(grad)).sum() > 0, variable.name


def test_search_vectors_are_what_the_nearest_code_search_compares():
    # Factorised cosine codes: the search runs on projected, l2-normalised vectors.
    vq = VectorQuantizer(16, 8, code_dim=3, use_cosine=True)
    vq.build((None, 8))
    x = np.random.default_rng(11).normal(size=(2, 5, 8)).astype("float32")
    vectors, codes = (ops.convert_to_numpy(t) for t in vq.search_vectors(x))
    assert vectors.shape == (2, 5, 3) and codes.shape == (16, 3)
    projected = x @ ops.convert_to_numpy(vq.project_in.kernel)
    projected += ops.convert_to_numpy(vq.project_in.bias)
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    # Unit vectors computed in float32 in another order: a few ulps (1.2e-7) apart.
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    codebook = ops.convert_to_numpy(vq.codebook)
    np.testing.assert_allclose(
        codes, codebook / np.linalg.norm(codebook, axis=-1, keepdims=True), atol=1e-6
    )
    distances = ((vectors[..., None, :].astype("float64") - codes) ** 2).sum(-1)  # (2, 5, 16)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(vq.get_code_indices(x)), distances.argmin(-1)
    )


def test_orthogonal_regulariser_matches_equation_2():
    vq = _vq(codebook_size=6, embedding_dim=4, orthogonal_reg_weight=0.3)
    x = np.random.default_rng(11).normal(size=(10, 4)).astype("float32")
    vq(x)
    codebook = ops.convert_to_numpy(vq.codebook).astype(np.float64)
    unit = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
    orthogonal = ((unit @ unit.T) ** 2).sum() / 36 - 1 / 6
    q = ops.convert_to_numpy(vq.lookup(vq.get_code_indices(x)))
    mse = np.mean((x - q) ** 2)
    (loss,) = vq.losses
    np.testing.assert_allclose(float(loss), 1.25 * mse + 0.3 * orthogonal, rtol=1e-5)
    # Orthogonal codes cost nothing.
    np.testing.assert_allclose(float(orthogonal_loss(np.eye(4, dtype="float32"))), 0.0, atol=1e-7)


def test_dead_codes_metric_counts_codes_unused_since_reset():
    vq = _vq(codebook_size=8, embedding_dim=2)
    codebook = ops.convert_to_numpy(vq.codebook)
    assert float(vq.dead_codes_tracker.result()) == 0  # no data yet: nothing reported
    vq(codebook[:3], training=True)
    assert float(vq.dead_codes_tracker.result()) == 5
    vq(codebook[2:5], training=True)
    assert float(vq.dead_codes_tracker.result()) == 3
    vq.dead_codes_tracker.reset_state()
    vq(codebook[:1], training=True)
    assert float(vq.dead_codes_tracker.result()) == 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decay": 0.0}, r"Received: decay=0.0"),
        ({"decay": 1.0}, r"Received: decay=1.0"),
        ({"gradient_estimator": "gumbel"}, r"Received: gradient_estimator='gumbel'"),
        ({"code_dim": 0}, r"Received: code_dim=0"),
        ({"kmeans_iters": 0}, r"Received: kmeans_iters=0"),
        ({"dead_code_threshold": -1.0}, r"Received: dead_code_threshold=-1.0"),
        ({"dead_code_window": 0}, r"Received: dead_code_window=0"),
        ({"use_cosine": "yes"}, r"Received: use_cosine='yes'"),
        ({"orthogonal_reg_weight": 0.1, "decay": 0.9}, r"Received: orthogonal_reg_weight=0.1"),
    ],
)
def test_bad_option_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(16, 4, **kwargs)


def test_loading_weights_of_another_codebook_size_names_codebook_size(tmp_path):
    def model(codebook_size):
        inputs = keras.Input((4,))
        return keras.Model(inputs, VectorQuantizer(codebook_size, 4, name="vq")(inputs))

    model(16).save_weights(tmp_path / "vq.weights.h5")
    with pytest.raises(
        ValueError, match=r"checkpoint's codebook_size=16.*Received: codebook_size=32"
    ):
        model(32).load_weights(tmp_path / "vq.weights.h5")


def test_all_options_config_and_keras_roundtrip(tmp_path):
    options = dict(
        decay=0.9, kmeans_init=True, kmeans_iters=3, dead_code_threshold=0.5,
        dead_code_window=5, use_cosine=True, code_dim=3, gradient_estimator="rotation", seed=2,
    )  # fmt: skip
    clone = assert_config_roundtrip(_vq(**options))
    assert clone.get_config()["code_dim"] == 3
    inputs = keras.Input((6, 4))
    model = keras.Model(inputs, VectorQuantizer(16, 4, name="vq", **options)(inputs))
    x = np.random.default_rng(12).normal(size=(8, 6, 4)).astype("float32")
    model(x, training=True)  # runs k-means, EMA and the restart bookkeeping
    reloaded = assert_keras_roundtrip(model, x, str(tmp_path))
    for name in ("codebook", "ema_cluster_size", "code_usage", "initialized"):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(getattr(reloaded.get_layer("vq"), name)),
            ops.convert_to_numpy(getattr(model.get_layer("vq"), name)),
        )
