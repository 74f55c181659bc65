"""kzoo.convert: diffusers checkpoints become kzoo models with PyTorch's outputs; CLI; errors.

The fixtures under tests/fixtures/diffusers/ are tiny random-weight diffusers
models with the PyTorch outputs on fixed inputs (tests/fixtures/
make_diffusers_fixtures.py wrote them with torch 2.13 and diffusers 0.42.1).
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

import kzoo.convert
import kzoo.convert.dit
import kzoo.convert.unet
from kzoo.cli import main
from kzoo.convert import from_diffusers
from kzoo.convert._common import WEIGHTS_FILE
from kzoo.diffusion import DiffusionModel
from kzoo.models import VQVAE, DiT, UNet

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "diffusers")
# The bar for float32 parity. PyTorch and TF sum convolutions and matmuls in
# different orders: the fixtures measure 4.9e-7 to 1.3e-6 on outputs up to 1.6-3.1,
# while a weight loaded in the wrong place or layout moves the output by 1e-2 or more
# (test_each_layout_option_changes_the_output).
TOLERANCE = 1e-4


def fixture(name):
    return os.path.join(FIXTURES, name)


def parity_case(name):
    """`(inputs, expected)` of a fixture: `[x, t(, labels)]` NHWC and PyTorch's output."""
    arrays = np.load(os.path.join(fixture(name), "parity.npz"))
    inputs = [arrays["x"], arrays["timesteps"]]
    if "labels" in arrays:
        inputs.append(arrays["labels"])
    return inputs, arrays["output"]


def max_error(model, name):
    inputs, expected = parity_case(name)
    return float(np.max(np.abs(np.asarray(model(inputs)) - expected)))


@pytest.fixture(scope="module")
def converted():
    """Each fixture converted once for the module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = from_diffusers(fixture(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["unet_attention", "unet_class", "unet_docs"])
def test_unet2dmodel_matches_pytorch(converted, name):
    model = converted(name)
    assert isinstance(model, UNet)
    assert max_error(model, name) < TOLERANCE


def test_dit_transformer_matches_pytorch(converted):
    # DiT-XL/2's layout, tiny: per-block embedders, learned sigma, labels incl. the null id.
    model = converted("dit")
    assert isinstance(model, DiT) and model.learn_sigma and model.num_classes == 3
    assert max_error(model, "dit") < TOLERANCE


def test_vqmodel_matches_pytorch(converted):
    # Encoder latents, the codes chosen, the decoder and the whole autoencoder.
    model = converted("vqmodel")
    assert isinstance(model, VQVAE)
    arrays = np.load(os.path.join(fixture("vqmodel"), "parity.npz"))
    latents = np.asarray(model.encoder(arrays["x"]))
    assert np.abs(latents - arrays["latents"]).max() < TOLERANCE
    np.testing.assert_array_equal(np.asarray(model.encode(arrays["x"])), arrays["indices"])
    decoded = np.asarray(model.decode(arrays["indices"]))
    assert np.abs(decoded - arrays["output"]).max() < TOLERANCE
    assert np.abs(np.asarray(model(arrays["x"])) - arrays["output"]).max() < TOLERANCE


def test_converted_layouts_are_the_diffusers_ones(converted):
    attention = converted("unet_attention")
    # attention_head_dim=4 at 8 channels: 2 heads; torch's padding=1 on stride-2 convs.
    assert attention.get_layer("down1_attn0").num_heads == 2
    assert attention.get_layer("down0_downsample").padding == "symmetric"
    assert attention.get_layer("down0_res0").norm_epsilon == 1e-5  # diffusers' default
    conditional = converted("unet_class")
    # num_class_embeds=3 rows plus kzoo's null row, which starts at zero (no label).
    table = conditional.get_layer("class_embedding").embeddings.numpy()
    assert table.shape == (4, 16)
    np.testing.assert_array_equal(table[3], 0.0)
    assert conditional.get_layer("down0_downsample").padding == "same"


@pytest.mark.parametrize(
    "name, option, value",
    [
        ("unet_attention", "downsample_padding", "same"),
        ("unet_attention", "attention_head_dim", None),
        ("unet_class", "flip_sin_to_cos", True),
        ("unet_class", "freq_shift", 0),
        ("dit", "freq_shift", 0),
    ],
)
def test_each_layout_option_changes_the_output(monkeypatch, name, option, value):
    # Each conversion choice matters: set one back to kzoo's default and the same
    # weights give a different output. (norm_eps does not show at this size:
    # 1e-5 vs 1e-6 against variances of ~1 moves outputs by ~1e-6.)
    module, function = (kzoo.convert.dit, "dit_kwargs") if name == "dit" else (
        kzoo.convert.unet, "unet_kwargs"
    )  # fmt: skip
    right_kwargs = getattr(module, function)

    def wrong_kwargs(config, image_size=None):
        return {**right_kwargs(config, image_size), option: value}

    monkeypatch.setattr(module, function, wrong_kwargs)
    assert max_error(from_diffusers(fixture(name)), name) > 1e-2


def test_old_attention_names_convert(tmp_path):
    # Checkpoints of diffusers' deprecated AttentionBlock (google/ddpm-*) name the
    # projections query/key/value/proj_attn.
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "old"
    shutil.copytree(fixture("unet_attention"), folder)
    path = folder / WEIGHTS_FILE
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    tensors = {}
    for name, value in load_file(str(path)).items():
        for new, old in renames.items():
            name = name.replace(new, old)
        tensors[name] = value
    assert any(".query." in name for name in tensors)
    save_file(tensors, str(path))
    assert max_error(from_diffusers(str(folder)), "unet_attention") < TOLERANCE


def test_default_configs_are_unchanged():
    # Models saved before the layout options load and describe themselves as before.
    config = UNet(
        image_shape=(8, 8, 3), channels=(4,), num_res_blocks=1, attention_resolutions=(),
        norm_groups=2, time_embedding_dim=8,
    ).get_config()  # fmt: skip
    for key in ("norm_epsilon", "attention_head_dim", "downsample_padding", "freq_shift"):
        assert key not in config
    config = DiT(input_shape=(4, 4, 2), hidden_size=8, depth=1, num_heads=2).get_config()
    for key in ("freq_shift", "mlp_norm_epsilon", "per_block_conditioning"):
        assert key not in config


def test_converted_dit_config_roundtrips(converted):
    model = converted("dit")
    config = model.get_config()
    assert config["per_block_conditioning"] and config["freq_shift"] == 1
    clone = DiT.from_config(config)
    clone.set_weights(model.get_weights())
    assert max_error(clone, "dit") < TOLERANCE


def test_converted_unet_fits_and_generates():
    # A converted model is an ordinary kzoo model: fine-tune one step, then sample.
    # The one-level unet_docs: tracing fit and generate of the deeper fixtures costs
    # ~40 s more on 2 cores (class labels are covered by the parity test above).
    model = DiffusionModel(from_diffusers(fixture("unet_docs")), seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    before = [w.numpy().copy() for w in model.denoiser.trainable_weights]
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(4, 8, 8, 3)).astype("float32")
    history = model.fit(images, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.denoiser.trainable_weights
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True))
    samples = np.asarray(model.generate(num_images=2, num_steps=2))
    assert samples.shape == (2, 8, 8, 3)
    assert np.all(np.isfinite(samples)) and np.abs(samples).max() <= 1.0


def test_cli_convert_writes_a_diffusion_model_with_the_scheduler(tmp_path, capsys):
    out = str(tmp_path / "ddpm.keras")
    assert main(["convert", fixture("unet_docs"), "--out", out]) == 0
    assert "scheduler_config.json" in capsys.readouterr().out
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    model = keras.saving.load_model(out)
    assert isinstance(model, DiffusionModel)
    assert model.schedule.name == "linear" and model.schedule.num_train_timesteps == 1000
    assert model.prediction_type == "eps"
    # The saved denoiser keeps the layout options and the weights.
    assert max_error(model.denoiser, "unet_docs") < TOLERANCE


def test_cli_convert_of_dit_and_vqmodel(tmp_path, capsys):
    # A DiT that also predicts the variance has no DiffusionModel form: a clear error,
    # and --denoiser-only saves the network; a VQModel is saved as the VQVAE itself.
    out = str(tmp_path / "dit.keras")
    assert main(["convert", fixture("dit"), "--out", out]) == 2
    assert "--denoiser-only" in capsys.readouterr().err
    assert main(["convert", fixture("dit"), "--out", out, "--denoiser-only"]) == 0
    assert max_error(keras.saving.load_model(out), "dit") < TOLERANCE
    out = str(tmp_path / "vq.keras")
    assert main(["convert", fixture("vqmodel"), "--out", out]) == 0
    assert isinstance(keras.saving.load_model(out), VQVAE)


def test_scheduler_config_maps_schedule_and_prediction(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(
        json.dumps(
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "num_train_timesteps": 500, "prediction_type": "v_prediction"}
        )
    )  # fmt: skip
    kwargs = kzoo.convert.schedule_from_diffusers(str(path))
    assert kwargs["prediction_type"] == "v"
    assert kwargs["schedule"]["name"] == "scaled_linear"
    assert kwargs["schedule"]["num_train_timesteps"] == 500
    path.write_text(json.dumps({"beta_schedule": "squaredcos_cap_v2"}))
    with pytest.raises(ValueError, match="beta_schedule"):
        kzoo.convert.schedule_from_diffusers(str(path))


def edited_folder(tmp_path, base="unet_docs", **changes):
    """A copy of the `base` fixture whose config.json has `changes` applied."""
    folder = tmp_path / "edited"
    shutil.copytree(fixture(base), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"base": "dit", "norm_type": "ada_norm_single"}, "'norm_type' must be one of"),
        ({"base": "dit", "out_channels": 5}, "`out_channels` must be 4 or 8"),
        ({"base": "vqmodel", "norm_type": "spatial"}, "'norm_type' must be one of"),
        ({"base": "vqmodel", "vq_embed_dim": 8}, "`vq_embed_dim` must be"),
        (
            {"base": "vqmodel", "down_block_types": ["AttnDownEncoderBlock2D"] * 2},
            "'AttnDownEncoderBlock2D' is not supported",
        ),
        ({"some_new_key": 1}, "'some_new_key' is not supported"),
        ({"time_embedding_type": "fourier"}, "'time_embedding_type' must be one of"),
        ({"class_embed_type": "timestep"}, "'class_embed_type'"),
        ({"center_input_sample": True}, "'center_input_sample'"),
        ({"down_block_types": ["CrossAttnDownBlock2D"]}, "'CrossAttnDownBlock2D' is not"),
        ({"up_block_types": ["AttnUpBlock2D"]}, "must mirror"),
        ({"out_channels": 6}, "`in_channels` must equal"),
        ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
    ],
)
def test_unsupported_configs_name_the_key(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        from_diffusers(edited_folder(tmp_path, **changes))


def test_weights_the_config_does_not_account_for_are_an_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = edited_folder(tmp_path)
    path = os.path.join(folder, WEIGHTS_FILE)
    tensors = load_file(path)
    save_file({**tensors, "extra.weight": np.zeros(3, np.float32)}, path)
    with pytest.raises(ValueError, match="extra.weight"):
        from_diffusers(folder)
    del tensors["conv_out.bias"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="conv_out.bias"):
        from_diffusers(folder)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_convert(tmp_path, dtype):
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    folder = edited_folder(tmp_path)
    path = os.path.join(folder, WEIGHTS_FILE)
    half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    save_file({name: value.astype(half) for name, value in load_file(path).items()}, path)
    model = from_diffusers(folder)
    assert all(w.dtype == "float32" for w in model.weights)
    # The weights rounded to float16 / bfloat16 (relative 5e-4 / 4e-3) move the
    # outputs (up to 1.6) by 1.0e-3 / 5.8e-3 (measured); a layout error by ~1.
    assert max_error(model, "unet_docs") < 5e-2


def test_unreadable_weights_are_a_clear_error(tmp_path):
    folder = edited_folder(tmp_path)
    with open(os.path.join(folder, WEIGHTS_FILE), "wb") as f:
        f.write(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be read with safetensors"):
        from_diffusers(folder)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "m.keras")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["convert", fixture("unet_docs"), "--out", str(tmp_path / "m.h5")]) == 2
    assert "ending in .keras" in capsys.readouterr().err
