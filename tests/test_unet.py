"""UNet denoiser: call contract, parameter parity with diffusers, training, saving, errors."""

import keras
import numpy as np
import pytest

from kzoo.layers.resblocks import ResBlock
from kzoo.models import UNet
from kzoo.testing import assert_config_roundtrip, assert_keras_roundtrip, dtype_policy, gradients

TINY = dict(
    image_shape=(8, 8, 3),
    channels=(8, 16),
    num_res_blocks=1,
    attention_resolutions=(4,),
    norm_groups=4,
    time_embedding_dim=16,
)


def batch(size=4, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, 8, 8, 3)).astype("float32")
    t = rng.integers(0, 1000, size=(size,)).astype("int32")
    y = rng.integers(0, num_classes + 1, size=(size,)).astype("int32")  # includes the null id
    return x, t, y


def test_benchmark_config_has_the_diffusers_parameter_count():
    # diffusers UNet2DModel of benchmarks/WORKLOADS.md `unet_train`: 8,952,067 parameters.
    # Same layout (resnets, attention, skips, time MLP), so the count is exact.
    assert UNet().count_params() == 8_952_067


def test_class_conditioning_adds_a_table_with_the_null_row():
    plain = UNet(**TINY).count_params()
    conditional = UNet(**TINY, num_classes=3)
    assert conditional.count_params() - plain == (3 + 1) * 16
    assert conditional.get_layer("class_embedding").input_dim == 4


def test_label_embedding_starts_as_strong_as_the_time_embedding():
    # diffusers' and ADM's U-Nets draw class rows from torch's nn.Embedding, N(0, 1).
    # Keras' default (uniform +-0.05) started the label ~8x weaker than the time
    # embedding, and the ddpm_unet_shapes recipe then never used it.
    keras.utils.set_random_seed(0)
    model = UNet(**TINY, num_classes=3)
    rows = keras.ops.convert_to_numpy(model.get_layer("class_embedding").embeddings)
    assert 0.8 < rows.std() < 1.2
    time_embedding = keras.Model(model.inputs, model.get_layer("time_embedding_2").output)
    x, t, y = batch()
    times = keras.ops.convert_to_numpy(time_embedding([x, t, y]))
    assert rows.std() > 2 * times.std()


def test_output_shape_dtype_and_labels_change_the_output():
    model = UNet(**TINY, num_classes=3)
    x, t, y = batch()
    out = model([x, t, y])
    assert tuple(out.shape) == x.shape
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    other = model([x, t, (y + 1) % 4])
    assert not np.allclose(keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(other))
    assert [i.name for i in model.inputs] == ["noisy_images", "timesteps", "labels"]
    predicted = model.predict([x, t, y], verbose=0, batch_size=2)
    np.testing.assert_allclose(predicted, keras.ops.convert_to_numpy(out), atol=1e-5)


def test_int_and_float_timesteps_agree_and_timesteps_matter():
    model = UNet(**TINY)
    x, t, _ = batch()
    from_int = keras.ops.convert_to_numpy(model([x, t]))
    from_float = keras.ops.convert_to_numpy(model([x, t.astype("float32")]))
    np.testing.assert_array_equal(from_int, from_float)
    shifted = keras.ops.convert_to_numpy(model([x, t + 100]))
    assert not np.allclose(from_int, shifted)
    # A trailing None label is accepted by an unconditional model (uniform wrapper code),
    # and dict inputs keyed by input name work.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model([x, t, None])), from_int)
    by_name = model({"noisy_images": x, "timesteps": t})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(by_name), from_int)


def test_gradients_reach_every_trainable_weight():
    model = UNet(**TINY, num_classes=3)
    x, t, y = batch()
    grads = gradients(lambda: keras.ops.mean(model([x, t, y]) ** 2), model.trainable_variables)
    missing = [
        v.path
        for v, g in zip(model.trainable_variables, grads, strict=True)
        if g is None or not np.any(keras.ops.convert_to_numpy(g))
    ]
    assert not missing, missing


def _fit_one_step(run_eagerly):
    model = UNet(**TINY, num_classes=3)
    x, t, y = batch(8)
    eps = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss="mse",
        run_eagerly=run_eagerly,
        jit_compile=False,
    )
    history = model.fit([x, t, y], eps, batch_size=8, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and 0.5 < loss < 5.0  # eps-MSE of an untrained net is O(1)
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_fit_one_step_on_eps_mse_updates_weights():
    # Eagerly: tracing the train step of even this tiny U-Net costs ~12 s on this CPU.
    _fit_one_step(run_eagerly=True)


def test_config_roundtrip_and_keras_save_load(tmp_path):
    model = UNet(**TINY, num_classes=3, num_heads=2, dropout=0.1, mid_attention=False)
    clone = assert_config_roundtrip(model)
    assert clone.count_params() == model.count_params()
    reloaded = assert_keras_roundtrip(model, list(batch()), str(tmp_path))
    assert isinstance(reloaded, UNet) and reloaded.num_classes == 3


def test_scale_shift_norm_roundtrip_and_save_load(tmp_path):
    model = UNet(**TINY, num_classes=3, scale_shift_norm=True)
    # ADM's AdaGN: the embedding projection gives a scale and a shift per channel.
    assert model.get_layer("down1_res0").embedding_proj.units == 2 * 16
    clone = assert_config_roundtrip(model)
    assert clone.scale_shift_norm and clone.count_params() == model.count_params()
    assert "scale_shift_norm" not in UNet(**TINY).get_config()  # old configs unchanged
    reloaded = assert_keras_roundtrip(model, list(batch()), str(tmp_path))
    assert reloaded.scale_shift_norm


@pytest.mark.parametrize("scale_shift", [False, True])
def test_groupnorm_erases_an_added_embedding_but_not_a_scale_shift(scale_shift):
    # One channel per group: GroupNorm removes each channel's mean over H, W, so a
    # per-channel bias added before it (DDPM's injection) cannot reach the output;
    # the scale and shift applied after it (AdaGN) do.
    block = ResBlock(4, groups=4, scale_shift=scale_shift)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    embeddings = rng.normal(size=(2, 2, 8)).astype("float32")
    outputs = [keras.ops.convert_to_numpy(block(x, embedding=e)) for e in embeddings]
    difference = np.abs(outputs[0] - outputs[1]).max()
    if scale_shift:
        assert difference > 1e-2
    else:
        assert difference < 1e-5


def test_mixed_float16_forward_is_finite_and_close_to_float32():
    x, t, y = batch()
    reference = UNet(**TINY, num_classes=3)
    with dtype_policy("mixed_float16"):
        model = UNet(**TINY, num_classes=3)
    model.set_weights(reference.get_weights())
    assert model.get_layer("down1_res0").compute_dtype == "float16"
    # Large inputs: GroupNorm statistics (sums of squares ~1e6) would overflow float16.
    for scale in (1.0, 300.0):
        out = model([x * scale, t, y])
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        out = keras.ops.convert_to_numpy(out)
        assert np.all(np.isfinite(out))
        want = keras.ops.convert_to_numpy(reference([x * scale, t, y]))
        np.testing.assert_allclose(out, want, atol=0.05 * np.abs(want).max())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=()), "channels"),
        (dict(channels=(8, 10)), "norm_groups"),
        (dict(norm_groups=3), "norm_groups=3"),
        (dict(image_shape=(6, 6, 3), channels=(8, 16, 16)), "image_shape"),
        (dict(attention_resolutions=(3,)), "attention_resolutions"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(num_res_blocks=0), "num_res_blocks=0"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(scale_shift_norm=1), "Received: scale_shift_norm=1"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY, **kwargs})


def test_labels_without_num_classes_and_missing_labels_are_clear_errors():
    x, t, y = batch()
    with pytest.raises(ValueError, match="num_classes=None.*`labels`"):
        UNet(**TINY)([x, t, y])
    with pytest.raises(ValueError, match="`labels`.*num_classes=None"):
        UNet(**TINY)({"noisy_images": x, "timesteps": t, "labels": y})
    with pytest.raises(ValueError, match="num_classes=3.*labels"):
        UNet(**TINY, num_classes=3)([x, t])
