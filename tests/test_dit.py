"""DiT denoiser and its adaLN-Zero layers: reference numerics, zero init, sizes, saving, errors."""

import math

import keras
import numpy as np
import pytest

from kzoo.layers import AdaLNFinalLayer, AdaLNZeroBlock
from kzoo.models import DIT_SIZES, DiT
from kzoo.testing import assert_config_roundtrip, assert_keras_roundtrip, dtype_policy, gradients

TINY = dict(
    input_shape=(8, 8, 4), patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=5
)


def batch(size=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, 8, 8, 4)).astype("float32")
    t = np.array([1.5, 500.0, 999.0][:size], "float32")
    y = rng.integers(0, 6, size=(size,)).astype("int32")  # 5 is the null class
    return x, t, y


def randomize(model, std=0.1, seed=0):
    """Give every weight (the zero-initialised ones too) small random values."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(scale=std, size=variable.shape).astype("float32"))


# --- A numpy transcription of facebookresearch/DiT models.py (float64) ---


def np_layer_norm(x):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_dense(layer, x):
    kernel, bias = (np.float64(keras.ops.convert_to_numpy(w)) for w in layer.weights)
    return x @ kernel + bias


def np_dit_block(block, x, c):
    heads = block.num_heads
    shift1, scale1, gate1, shift2, scale2, gate2 = np.split(
        np_dense(block.modulation, np_silu(c)), 6, -1
    )
    h = np_layer_norm(x) * (1 + scale1[:, None]) + shift1[:, None]
    b, n, d = h.shape
    qkv = np_dense(block.qkv, h).reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
    scores = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = (weights @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + gate1[:, None] * np_dense(block.attn_out, attended)
    h = np_layer_norm(x) * (1 + scale2[:, None]) + shift2[:, None]
    return x + gate2[:, None] * np_dense(block.mlp_out, np_gelu_tanh(np_dense(block.mlp_in, h)))


def np_dit(model, x, t, y):
    p, (height, width, _) = model.patch_size, model.latent_shape
    h, w = height // p, width // p
    patch = model.get_layer("patch_embedding").proj
    kernel, bias = (np.float64(keras.ops.convert_to_numpy(v)) for v in patch.weights)
    patches = (
        x.reshape(len(x), h, p, w, p, -1).transpose(0, 1, 3, 2, 4, 5).reshape(len(x), h * w, -1)
    )
    tokens = patches @ kernel.reshape(-1, kernel.shape[-1]) + bias
    tokens += keras.ops.convert_to_numpy(model.get_layer("position_embedding").position_embedding)
    half = 128  # DiT's TimestepEmbedder: 256 frequencies, cos first
    args = t[:, None] * np.exp(-math.log(10000) * np.arange(half) / half)[None]
    t_freq = np.concatenate([np.cos(args), np.sin(args)], -1)
    c = np_dense(
        model.get_layer("time_embedding_2"),
        np_silu(np_dense(model.get_layer("time_embedding_1"), t_freq)),
    )
    table = keras.ops.convert_to_numpy(model.get_layer("class_embedding").embeddings)
    c = c + table[y]
    for i in range(model.depth):
        tokens = np_dit_block(model.get_layer(f"block{i}"), tokens, c)
    final = model.get_layer("final_layer")
    shift, scale = np.split(np_dense(final.modulation, np_silu(c)), 2, -1)
    out = np_dense(final.linear, np_layer_norm(tokens) * (1 + scale[:, None]) + shift[:, None])
    channels = out.shape[-1] // (p * p)
    # DiT: reshape (n, h, w, p, q, c), einsum nhwpqc->nchpwq; here channels-last.
    out = out.reshape(len(x), h, w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(len(x), height, width, channels)


def test_matches_a_numpy_transcription_of_the_reference():
    model = DiT(**TINY, learn_sigma=True)
    randomize(model)
    x, t, y = batch()
    got = keras.ops.convert_to_numpy(model([x, t, y]))
    assert got.shape == (3, 8, 8, 8)
    want = np_dit(model, np.float64(x), np.float64(t), y)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_label_embedding_starts_stronger_than_the_time_embedding():
    # The paper's N(0, 0.02) rows left the label as weak as the time embedding, and
    # the dit_shapes recipe never used it; rows now start at N(0, 1) (diffusers).
    keras.utils.set_random_seed(0)
    model = DiT(**TINY)
    rows = keras.ops.convert_to_numpy(model.get_layer("class_embedding").embeddings)
    assert 0.8 < rows.std() < 1.2
    time_embedding = keras.Model(model.inputs, model.get_layer("time_embedding_2").output)
    times = keras.ops.convert_to_numpy(time_embedding(list(batch())))
    assert rows.std() > 10 * times.std()


def test_fresh_dit_returns_exactly_zero_in_float32():
    model = DiT(**TINY)
    x, t, y = batch()
    out = model([x, t, y])
    assert tuple(out.shape) == x.shape
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert not np.any(keras.ops.convert_to_numpy(out))
    assert [i.name for i in model.inputs] == ["noisy_latents", "timesteps", "labels"]


def test_fresh_adaln_zero_block_is_the_identity():
    block = AdaLNZeroBlock(16, num_heads=2)
    tokens = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
    conditioning = np.random.default_rng(1).normal(size=(2, 16)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(block(tokens, conditioning)), tokens)
    final = AdaLNFinalLayer(6)
    assert not np.any(keras.ops.convert_to_numpy(final(tokens, conditioning)))
    assert final.compute_output_shape((2, 5, 16), (2, 16)) == (2, 5, 6)
    assert_config_roundtrip(block)
    assert_config_roundtrip(final)


def test_at_init_only_the_final_layer_and_modulations_get_gradients():
    # adaLN-Zero: with zero gates and a zero output layer, the first step trains
    # the output projection (and the final layer's modulation through it) only.
    model = DiT(**TINY)
    x, t, y = batch()
    grads = gradients(
        lambda: keras.ops.mean((model([x, t, y]) - x) ** 2), model.trainable_variables
    )
    nonzero = {
        v.path
        for v, g in zip(model.trainable_variables, grads, strict=True)
        if g is not None and np.any(keras.ops.convert_to_numpy(g))
    }
    assert any("final_layer/linear" in path for path in nonzero)
    assert not any("block" in path and "modulation" not in path for path in nonzero)


def test_gradients_reach_every_trainable_weight():
    model = DiT(**TINY)
    randomize(model)
    x, t, y = batch()
    grads = gradients(lambda: keras.ops.mean(model([x, t, y]) ** 2), model.trainable_variables)
    missing = [
        v.path
        for v, g in zip(model.trainable_variables, grads, strict=True)
        if g is None or not np.any(keras.ops.convert_to_numpy(g))
    ]
    assert not missing, missing
    assert not any("position_embedding" in v.path for v in model.trainable_variables)


def test_s2_parameter_count_matches_the_paper():
    # DiT-S/2 at 32x32x4 latents, 1000 classes (+1 null row). Per block:
    # qkv 384*1152+1152, proj 384^2+384, MLP 384*1536+1536 + 1536*384+384,
    # adaLN 384*2304+2304 = 2,659,968. Plus patch embed 6,528, t-MLP 246,528,
    # labels 1001*384, final adaLN 295,680 + linear 384*16+16, and the frozen
    # positions 256*384 (counted, as in the reference's `parameters()`).
    expected = 12 * 2_659_968 + 6_528 + 246_528 + 1001 * 384 + 295_680 + 6_160 + 256 * 384
    model = DiT.from_size("S/2", input_shape=(32, 32, 4), num_classes=1000)
    assert model.count_params() == expected == 32_957_200
    # The paper (Table 1) gives 33M, rounded to the nearest million: +-0.5M. Its
    # learn_sigma=True output adds only 384*16+16 parameters.
    assert abs(model.count_params() - 33e6) < 0.5e6
    assert len(model.trainable_variables) == 4 + 2 + 1 + 12 * 10 + 4


def test_sizes_table_and_from_size():
    assert set(DIT_SIZES) == {f"{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)}
    assert DIT_SIZES["B/4"] == {"hidden_size": 768, "depth": 12, "num_heads": 12, "patch_size": 4}
    assert DIT_SIZES["L/2"]["depth"] == 24 and DIT_SIZES["L/2"]["num_heads"] == 16
    assert DIT_SIZES["XL/8"] == {"hidden_size": 1152, "depth": 28, "num_heads": 16, "patch_size": 8}
    model = DiT.from_size("S/8", input_shape=(16, 16, 4), num_classes=None, depth=1)
    assert (model.hidden_size, model.depth, model.patch_size) == (384, 1, 8)
    x = np.zeros((2, 16, 16, 4), "float32")
    assert tuple(model([x, np.array([1, 2])]).shape) == (2, 16, 16, 4)
    with pytest.raises(ValueError, match="size='M/2'"):
        DiT.from_size("M/2")


def test_config_roundtrip_and_keras_save_load(tmp_path):
    model = DiT(**TINY, mlp_ratio=2.0, class_dropout_prob=0.2)
    randomize(model)
    clone = assert_config_roundtrip(model)
    assert clone.count_params() == model.count_params()
    reloaded = assert_keras_roundtrip(model, list(batch()), str(tmp_path))
    assert isinstance(reloaded, DiT) and reloaded.class_dropout_prob == 0.2


def test_mixed_float16_forward_is_finite_and_close_to_float32():
    reference = DiT(**TINY)
    randomize(reference)
    with dtype_policy("mixed_float16"):
        model = DiT(**TINY)
    model.set_weights(reference.get_weights())
    assert model.get_layer("block0").compute_dtype == "float16"
    x, t, y = batch()
    # Latents x300 give LayerNorm variances ~1e5, beyond float16: statistics run in float32.
    for scale in (1.0, 300.0):
        out = model([x * scale, t, y])
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        out = keras.ops.convert_to_numpy(out)
        assert np.all(np.isfinite(out))
        want = keras.ops.convert_to_numpy(reference([x * scale, t, y]))
        np.testing.assert_allclose(out, want, atol=0.03 * np.abs(want).max())


def test_fit_one_step_on_eps_mse():
    model = DiT(**TINY)
    x, t, y = batch()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="mse", run_eagerly=True)
    before = keras.ops.convert_to_numpy(model.get_layer("final_layer").linear.kernel).copy()
    loss = model.fit([x, t, y], x, batch_size=3, verbose=0).history["loss"][0]
    np.testing.assert_allclose(loss, np.mean(x**2), rtol=1e-5)  # zero prediction at init
    assert np.any(
        keras.ops.convert_to_numpy(model.get_layer("final_layer").linear.kernel) != before
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patch_size=3), "patch_size=3"),
        (dict(num_heads=5), "num_heads=5"),
        (dict(hidden_size=30, num_heads=3), "hidden_size=30"),
        (dict(input_shape=(8, 8)), "input_shape"),
        (dict(class_dropout_prob=1.0), "class_dropout_prob=1.0"),
        (dict(depth=0), "depth=0"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiT(**{**TINY, **kwargs})


def test_labels_without_num_classes_and_missing_labels_are_clear_errors():
    x, t, y = batch()
    unconditional = DiT(**{**TINY, "num_classes": None})
    assert tuple(unconditional([x, t]).shape) == x.shape
    with pytest.raises(ValueError, match="num_classes=None.*`labels`"):
        unconditional([x, t, y])
    with pytest.raises(ValueError, match="num_classes=5.*labels"):
        DiT(**TINY)([x, t])
