"""Sinusoidal timestep embedding, patch embedding and fixed 2-D sin-cos positions."""

import math

import keras
import numpy as np
import pytest

from kzoo.layers import PatchEmbedding, SinCosPositionEmbedding2D, SinusoidalTimestepEmbedding
from kzoo.layers.embeddings import sincos_position_table, timestep_embedding
from kzoo.testing import assert_config_roundtrip, dtype_policy


def numpy_timestep_embedding(t, dim, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000.0):
    """diffusers' `get_timestep_embedding`, transcribed in float64 numpy."""
    half = dim // 2
    exponent = -math.log(max_period) * np.arange(half, dtype=np.float64) / (half - freq_shift)
    args = np.asarray(t, np.float64)[:, None] * np.exp(exponent)[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = np.pad(emb, [(0, 0), (0, 1)])
    return emb


def dit_reference_pos_embed(embed_dim, grid_hw):
    """DiT's (MAE's) `get_2d_sincos_pos_embed`, verbatim but for a (height, width) grid."""
    height, width = grid_hw

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape([2, 1, height, width])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize(
    "dim, flip, shift", [(64, True, 0.0), (256, True, 0.0), (32, False, 1.0), (33, True, 0.0)]
)
def test_timestep_embedding_matches_numpy_formula(dim, flip, shift):
    t = np.array([0, 1, 17, 500, 999], "int32")
    got = keras.ops.convert_to_numpy(
        timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    )
    want = numpy_timestep_embedding(t, dim, flip, shift)
    assert got.shape == (5, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4)  # float32 args up to 999 rad


def test_timestep_embedding_first_column_is_cos_t():
    # cosines first with freq 1 in column 0: cos(t), and sin(t) at column dim // 2.
    t = np.array([0.0, 2.5, 10.0], "float32")
    got = keras.ops.convert_to_numpy(timestep_embedding(t, 8))
    np.testing.assert_allclose(got[:, 0], np.cos(t), atol=1e-6)
    np.testing.assert_allclose(got[:, 4], np.sin(t), atol=1e-6)


def test_timestep_layer_keeps_fractional_timesteps_float32_under_mixed_precision():
    t = np.array([999.7, 0.3], "float32")  # 999.7 would round to 999.5 in float16
    with dtype_policy("mixed_float16"):
        layer = SinusoidalTimestepEmbedding(16)
        out = layer(t)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    want = numpy_timestep_embedding(t, 16)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out).astype("float32"), want, atol=2e-3)


def test_timestep_layer_int_and_float_inputs_agree_and_config_roundtrips():
    layer = SinusoidalTimestepEmbedding(12, flip_sin_to_cos=False, freq_shift=1.0)
    ints = keras.ops.convert_to_numpy(layer(np.array([3, 400], "int32")))
    floats = keras.ops.convert_to_numpy(layer(np.array([3.0, 400.0], "float32")))
    np.testing.assert_array_equal(ints, floats)
    assert layer.compute_output_shape((None,)) == (None, 12)
    clone = assert_config_roundtrip(layer)
    assert clone.freq_shift == 1.0 and clone.flip_sin_to_cos is False


@pytest.mark.parametrize("grid", [(4, 4), (2, 3), (16, 16)])
def test_sincos_positions_match_dit_reference(grid):
    got = keras.ops.convert_to_numpy(sincos_position_table(32, grid))
    np.testing.assert_allclose(got, dit_reference_pos_embed(32, grid), atol=2e-6)


def test_position_layer_adds_fixed_nontrainable_table():
    layer = SinCosPositionEmbedding2D((2, 3))
    tokens = np.random.default_rng(0).normal(size=(2, 6, 16)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(tokens))
    np.testing.assert_allclose(
        out - tokens, np.broadcast_to(dit_reference_pos_embed(16, (2, 3)), out.shape), atol=2e-6
    )
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 1
    assert layer.count_params() == 6 * 16
    assert_config_roundtrip(layer)


def test_position_layer_rejects_wrong_token_count_and_bad_dims():
    with pytest.raises(ValueError, match="Expected 6 tokens"):
        SinCosPositionEmbedding2D((2, 3))(np.zeros((1, 5, 16), "float32"))
    with pytest.raises(ValueError, match="embed_dim=18"):
        sincos_position_table(18, 4)
    with pytest.raises(ValueError, match="grid_size"):
        SinCosPositionEmbedding2D((2, 0))


def test_patch_embedding_equals_linear_on_flattened_patches():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 4, 6, 3)).astype("float32")
    layer = PatchEmbedding(2, 5)
    tokens = keras.ops.convert_to_numpy(layer(images))
    assert tokens.shape == (2, 6, 5)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    # Row-major patches (h, w), each flattened as (p, q, c), times the kernel.
    patches = images.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 12)
    np.testing.assert_allclose(tokens, patches @ kernel.reshape(12, 5) + bias, atol=1e-5)
    assert layer.compute_output_shape((None, 4, 6, 3)) == (None, 6, 5)
    assert_config_roundtrip(layer)


def test_patch_embedding_init_variance_is_xavier_of_flattened_kernel():
    layer = PatchEmbedding(4, 256)
    layer.build((None, 32, 32, 8))
    kernel = keras.ops.convert_to_numpy(layer.proj.kernel)
    fan_in, fan_out = 4 * 4 * 8, 256
    np.testing.assert_allclose(kernel.var(), 2.0 / (fan_in + fan_out), rtol=0.05)


def test_embedding_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbedding(3, 8)(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="patch_size=0"):
        PatchEmbedding(0, 8)
    with pytest.raises(ValueError, match="dim=0"):
        SinusoidalTimestepEmbedding(0)
    with pytest.raises(ValueError, match="freq_shift"):
        SinusoidalTimestepEmbedding(4, freq_shift=2)
