"""Text-to-image DiffusionModel: text-conditioned UNet/DiT, caption dropout, guidance,
.keras round trip, the SavedModel `generate_from_text` endpoint, bad input, a short fit."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo.data.shapes import novel_combinations
from kzoo.data.tokenizer import Tokenizer
from kzoo.diffusion import DiffusionModel
from kzoo.export import _core, export_all
from kzoo.models import DiT, TextEncoder, UNet

SHAPE = (16, 16, 3)
LENGTH = 8  # tokens: shorter than a kzoo_shapes caption (12 words), so those truncate
WIDTH = 16
MAX_STEPS = 8
MAX_BATCH = 4
CAPTIONS = [
    "a small red circle at the top left on a blue background",
    "a large green square at the center on a white background",
]
LONG_CAPTION = " ".join(["a large white square"] * 10)


def make_unet(context_dim=WIDTH, **overrides):
    args = dict(
        image_shape=SHAPE,
        channels=(8, 16),
        num_res_blocks=1,
        attention_resolutions=(8,),
        norm_groups=4,
        time_embedding_dim=16,
        mid_attention=False,
        context_dim=context_dim,
    )
    return UNet(**{**args, **overrides})


def make_model(denoiser=None, text_encoder=None, tokenizer=None, **overrides):
    tokenizer = tokenizer or {"vocabulary": "kzoo_shapes", "sequence_length": LENGTH}
    if text_encoder is None:
        size = Tokenizer("kzoo_shapes").vocabulary_size
        text_encoder = TextEncoder(size, LENGTH, hidden_dim=WIDTH, num_layers=1, num_heads=2)
    args = dict(
        schedule={"name": "linear", "num_train_timesteps": 100},
        prediction_type="v",
        max_generate_steps=MAX_STEPS,
        max_generate_batch=MAX_BATCH,
        seed=0,
        name="tiny_text2image",
    )
    return DiffusionModel(
        denoiser or make_unet(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        **{**args, **overrides},
    )


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return make_model()


def randomize_zero_weights(layer, seed=0):
    """A fresh DiT predicts exactly zero (adaLN-Zero): give its zero kernels values."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = np.asarray(weight)
        if weight.trainable and not np.any(value):
            weight.assign(0.1 * rng.standard_normal(value.shape).astype(value.dtype))


def test_text_conditioned_denoisers_attend_to_real_tokens_only():
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((2, *SHAPE)).astype("float32")
    timesteps = np.array([10.0, 60.0], np.float32)
    context = rng.standard_normal((2, 5, WIDTH)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    pooled = rng.standard_normal((2, WIDTH)).astype("float32")
    dit = DiT(SHAPE, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=None,
              context_dim=WIDTH)  # fmt: skip
    randomize_zero_weights(dit)
    for denoiser in (make_unet(), dit):
        output = denoiser([x_t, timesteps, context, mask, pooled])
        assert output.shape == (2, *SHAPE) and output.dtype == "float32"
        # Padded tokens never matter; real tokens and the pooled vector do.
        padded = context.copy()
        padded[0, 2:] = 100.0
        np.testing.assert_allclose(
            denoiser([x_t, timesteps, padded, mask, pooled])[0], output[0], atol=1e-5
        )
        changed = context.copy()
        changed[0, 0] += 1.0
        assert np.abs(denoiser([x_t, timesteps, changed, mask, pooled])[0] - output[0]).max() > 1e-4
        assert np.abs(denoiser([x_t, timesteps, context, mask, -pooled]) - output).max() > 1e-4
        # Config round trip; unconditional configs stay as they were (no `context_dim`).
        rebuilt = type(denoiser).from_config(denoiser.get_config())
        assert rebuilt.context_dim == WIDTH and rebuilt.count_params() == denoiser.count_params()
    assert "context_dim" not in make_unet(context_dim=None).get_config()
    plain_dit = DiT(SHAPE, patch_size=4, hidden_size=16, depth=1, num_heads=2)
    assert "context_dim" not in plain_dit.get_config()


def test_caption_changes_the_prediction_and_captions_are_tokenized_in_the_graph(model):
    ids = np.asarray(model.tokenize([*CAPTIONS, "", LONG_CAPTION]))
    assert ids.shape == (4, LENGTH) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[2], 0)  # empty caption: padding only
    assert np.all(ids[3] > 0)  # truncated to LENGTH words
    x_t = np.random.default_rng(1).standard_normal((2, *SHAPE)).astype("float32")
    timesteps = np.array([30.0, 30.0], np.float32)
    first = np.asarray(model([x_t, timesteps, ids[[0, 0]]]))
    second = np.asarray(model([x_t, timesteps, ids[[0, 1]]]))
    np.testing.assert_allclose(first[0], second[0], atol=1e-6)
    assert np.abs(first[1] - second[1]).max() > 1e-3


def test_caption_dropout_replaces_captions_by_the_empty_caption(model):
    dropping = make_model(caption_dropout_prob=0.5)
    images = np.zeros((400, *SHAPE), np.float32)
    captions = tf.constant([CAPTIONS[i % 2] for i in range(400)])
    tokens = np.asarray(dropping.tokenize(captions))
    _, _, dropped, _ = dropping._noised_batch((images, captions), training=True)
    dropped = np.asarray(dropped)
    is_null = np.all(dropped == 0, axis=1)
    assert abs(is_null.mean() - 0.5) < 0.08
    np.testing.assert_array_equal(dropped[~is_null], tokens[~is_null])
    _, _, kept, _ = dropping._noised_batch((images, captions), training=False)
    np.testing.assert_array_equal(np.asarray(kept), tokens)
    # The dropped caption encodes exactly as the empty string: the guidance null condition.
    null = model.encode_text(np.zeros((1, LENGTH), np.int32))
    empty = model.encode_text(model.tokenize([""]))
    for key in ("context_mask", "pooled"):
        np.testing.assert_array_equal(np.asarray(null[key]), np.asarray(empty[key]))
    np.testing.assert_array_equal(np.asarray(null["pooled"]), 0.0)


def test_guidance_scales_one_and_zero_are_the_conditional_and_null_samples(model):
    def gen(captions, scale):
        return model.generate_from_text(captions, num_steps=2, guidance_scale=scale, seed=3)

    conditional = gen(CAPTIONS, None)
    assert conditional.shape == (2, *SHAPE) and conditional.dtype == np.float32
    assert np.all(np.abs(conditional) <= 1.0)
    np.testing.assert_allclose(gen(CAPTIONS, 1.0), conditional, atol=1e-5)
    unconditional = gen(["", ""], None)
    np.testing.assert_allclose(gen(CAPTIONS, 0.0), unconditional, atol=1e-5)
    assert np.abs(gen(CAPTIONS, 3.0) - conditional).max() > 1e-4
    # Same seed, same noise: the caption alone changes the image.
    assert np.abs(conditional - unconditional).max() > 1e-4
    np.testing.assert_array_equal(gen(CAPTIONS, None), conditional)
    # `generate(num_images)` of a text model draws empty-caption samples.
    np.testing.assert_allclose(
        model.generate(num_images=2, num_steps=2, seed=3), unconditional, atol=1e-6
    )


def test_keras_round_trip_keeps_tokenizer_text_encoder_and_weights(model, tmp_path):
    path = os.path.join(tmp_path, "text2image.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.text_conditional and loaded.caption_dropout_prob == model.caption_dropout_prob
    assert loaded.tokenizer.get_config() == model.tokenizer.get_config()
    config = model.get_config()
    assert {"text_encoder", "tokenizer", "caption_dropout_prob"} <= set(config)
    x_t = np.random.default_rng(2).standard_normal((2, *SHAPE)).astype("float32")
    inputs = [x_t, np.array([5.0, 50.0], np.float32), model.tokenize(CAPTIONS)]
    np.testing.assert_allclose(np.asarray(loaded(inputs)), np.asarray(model(inputs)), atol=1e-6)
    # Class-conditional and unconditional configs carry no text keys.
    plain = DiffusionModel(make_unet(context_dim=None), schedule="linear")
    assert not {"text_encoder", "tokenizer", "caption_dropout_prob"} & set(plain.get_config())


def test_a_text_encoder_built_frozen_stays_frozen_in_training_and_after_reload(tmp_path):
    """`TextEncoder(..., trainable=False)`, as a recipe config or a `.keras` file builds it.

    Keras 3.15's Functional sets the flag before it tracks its layers, so without
    `kzoo.layers._trainable` the parent still listed the encoder's variables and
    `fit` changed them.
    """
    size = Tokenizer("kzoo_shapes").vocabulary_size
    frozen = TextEncoder(size, LENGTH, hidden_dim=WIDTH, num_layers=1, trainable=False)
    model = make_model(text_encoder=frozen)
    x_t = np.random.default_rng(3).standard_normal((2, *SHAPE)).astype("float32")
    model([x_t, np.array([5.0, 50.0], np.float32), model.tokenize(CAPTIONS)])
    frozen_ids = {id(v) for v in frozen.weights}
    assert frozen.weights and not frozen_ids & {id(v) for v in model.trainable_variables}
    assert model.trainable_variables  # the denoiser still trains

    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    before_text = [np.array(w) for w in frozen.weights]
    before_unet = [np.array(w) for w in model.denoiser.trainable_weights]
    model.fit(tf.data.Dataset.from_tensors((x_t, tf.constant(CAPTIONS))), verbose=0)
    for weight, value in zip(frozen.weights, before_text, strict=True):
        np.testing.assert_array_equal(np.array(weight), value)
    assert any(
        np.abs(np.array(w) - b).max() > 0
        for w, b in zip(model.denoiser.trainable_weights, before_unet, strict=True)
    )

    path = os.path.join(tmp_path, "frozen_text.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert not loaded.text_encoder.trainable
    loaded_ids = {id(v) for v in loaded.text_encoder.weights}
    assert not loaded_ids & {id(v) for v in loaded.trainable_variables}


def test_a_users_functional_text_encoder_built_frozen_stays_out_of_training():
    """Any Functional model passed with `trainable=False` (not only kzoo's) stays frozen."""
    size = Tokenizer("kzoo_shapes").vocabulary_size
    tokens = keras.Input((LENGTH,), dtype="int32")
    sequence = keras.layers.Embedding(size, WIDTH)(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(sequence)
    user_encoder = keras.Model(tokens, {"sequence": sequence, "pooled": pooled}, trainable=False)
    # Keras 3.15 leaves its Embedding's variable trainable here.
    model = make_model(text_encoder=user_encoder)
    assert not any(v.trainable for v in user_encoder.weights)
    x_t = np.zeros((2, *SHAPE), np.float32)
    model([x_t, np.array([5.0, 50.0], np.float32), model.tokenize(CAPTIONS)])
    assert model.trainable_variables
    assert not {id(v) for v in user_encoder.weights} & {id(v) for v in model.trainable_variables}


@pytest.mark.parametrize("kind", ["image_encoder", "unet", "dit"])
def test_other_functional_models_built_frozen_have_no_trainable_variable(kind):
    from kzoo.models import ImageEncoder

    build = {
        "image_encoder": lambda: ImageEncoder(SHAPE, patch_size=4, hidden_dim=16, num_layers=1),
        "unet": lambda: make_unet(context_dim=None),
        "dit": lambda: DiT(
            SHAPE, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=None
        ),
    }[kind]
    model = build()
    assert any(v.trainable for v in model.weights)
    frozen = type(model).from_config({**model.get_config(), "trainable": False})
    assert frozen.weights and not any(v.trainable for v in frozen.weights)


@pytest.mark.slow  # export, a fresh-process parity run and a reload: about a minute
def test_saved_model_generate_from_text_equals_keras_and_enforces_limits(model, tmp_path):
    endpoints = _core.get_endpoints(model)
    assert list(endpoints) == ["generate_from_text", "denoise"]
    generate = endpoints["generate_from_text"]
    assert generate.input_names == ["captions", "num_steps", "guidance_scale", "seed"]
    assert generate.limits == {"num_steps": (1, MAX_STEPS), "batch": MAX_BATCH}
    result = export_all(model, tmp_path, formats=("saved_model",))
    saved = result["saved_model"]
    assert saved.signatures == [
        "serving_default",
        "generate_from_text",
        "denoise",
        "generate_from_text_png",
    ]
    # The parity check ran the model's own batch (captions with an empty and an
    # over-long one) through the SavedModel in a fresh process without kzoo.
    parity = saved.parity
    assert parity["ok"], parity
    assert parity["saved_model_runner"]["kzoo_modules_loaded"] == []
    for signature, name in (("generate_from_text", "images"), ("denoise", "prediction")):
        assert parity["results"]["saved_model"][signature][name]["max_abs_error"] <= 1e-4
    captions = model.export_parity_batch()["generate_from_text"]["captions"]
    assert captions.dtype.kind == "S" and b"" in captions.tolist()
    serve = tf.saved_model.load(saved.path).signatures["generate_from_text"]

    def request(captions=("a red circle",), num_steps=2):
        # Every input is per-example (TF Serving batches along dimension 0).
        batch = np.shape(captions)[0]
        return serve(
            captions=tf.constant(captions),
            num_steps=tf.fill([batch], tf.constant(num_steps, tf.int32)),
            guidance_scale=tf.fill([batch], 3.0),
            seed=tf.range(batch, dtype=tf.int32),
        )

    seeds = list(range(len(captions)))
    keras_images = model.generate_from_text(
        [c.decode() for c in captions], num_steps=4, guidance_scale=3.0, seed=seeds
    )
    served = request(captions=captions, num_steps=4)["images"]
    np.testing.assert_allclose(served, keras_images, atol=1e-4)
    # An over-long caption is its first LENGTH words; alone, with its own seed, it
    # gives the image it gave inside the batch.
    truncated = " ".join(LONG_CAPTION.split()[:LENGTH])
    np.testing.assert_allclose(
        model.generate_from_text([truncated], num_steps=4, guidance_scale=3.0, seed=seeds[-1:]),
        keras_images[-1:],
        atol=1e-5,
    )
    assert request(captions=("", "", "", ""))["images"].shape == (MAX_BATCH, *SHAPE)
    for kwargs, match in (
        (dict(num_steps=9), r"num_steps must be in \[1, 8\]. Received: num_steps=\[9\]"),
        (dict(captions=("a",) * 5), "batch of captions must be at most 4"),
        (dict(captions=[["a ring"]]), r"\[1,1\] is not compatible with expected shape \[\?\]"),
    ):
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=match):
            request(**kwargs)


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="wrap one caption in a list"):
        model.generate_from_text("a red circle")
    for captions in ([], [1, 2], None):
        with pytest.raises(ValueError, match="non-empty list of strings"):
            model.generate_from_text(captions)
    with pytest.raises(ValueError, match="generate_from_text"):
        model.generate(labels=[0, 1])
    with pytest.raises(ValueError, match="caption_dropout_prob=0"):
        make_model(caption_dropout_prob=0.0).generate_from_text(["a"], guidance_scale=2.0)
    with pytest.raises(ValueError, match="text_encoder=None"):
        DiffusionModel(make_unet(context_dim=None), schedule="linear").generate_from_text(["a"])
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        DiffusionModel(make_unet(), text_encoder=TextEncoder(33, LENGTH, hidden_dim=WIDTH))
    with pytest.raises(ValueError, match="num_classes=None"):
        make_model(num_classes=3)
    with pytest.raises(ValueError, match="tokenizer emits 33 ids"):
        make_model(text_encoder=TextEncoder(10, LENGTH, hidden_dim=WIDTH))
    with pytest.raises(ValueError, match="takes 12 tokens"):
        make_model(text_encoder=TextEncoder(33, 12, hidden_dim=WIDTH))
    with pytest.raises(ValueError, match="classes or on text, not both"):
        make_unet(num_classes=3)
    with pytest.raises(ValueError, match="context_dim"):
        make_unet(context_dim=0)
    with pytest.raises(ValueError, match=r"context, context_mask, pooled\]"):
        make_unet()([np.zeros((1, *SHAPE), "float32"), np.zeros((1,), "float32")])
    with pytest.raises(ValueError, match="failed on a zeros batch"):  # width mismatch
        make_model(denoiser=make_unet(context_dim=8))
    with pytest.raises(ValueError, match="images only"):
        model._noised_batch(np.zeros((2, *SHAPE), np.float32), training=True)
    with pytest.raises(ValueError, match="token ids"):
        model._noised_batch((np.zeros((2, *SHAPE), np.float32), np.zeros(2, np.float32)), True)


@pytest.mark.slow  # a 300-step fit and one guided sampling graph, about a minute
def test_short_fit_draws_the_captioned_background_well_above_chance():
    """A short fit lowers the loss, trains the text encoder jointly, and the generated
    background then follows the caption's background word.

    Scored without a classifier: the mean colour of an image's 1-pixel border is
    matched to the nearest of the four background colours of the kzoo_shapes
    palette (chance 1/4; on real test images this reads the label every time).
    Shape, colour and position need minutes of training: `recipes/text2image_shapes.py`
    measures all five attributes with a classifier (README.md).
    """
    import kzoo.data
    from kzoo.data.shapes import RGB

    def border_background(images):
        palette = np.array([RGB[name] for name in kzoo.data.BACKGROUNDS], np.float32) / 127.5 - 1
        border = np.concatenate(
            [images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1]], axis=1
        ).mean(axis=1)  # (N, 3)
        return np.argmin(((border[:, None] - palette[None]) ** 2).sum(-1), axis=1)

    train, train_labels = kzoo.data.load_arrays("kzoo_shapes", split="train", image_size=SHAPE[0])
    test, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split="test", num_examples=MAX_BATCH * 8, image_size=SHAPE[0]
    )
    np.testing.assert_array_equal(border_background(test), labels["background"])
    length = 16  # whole captions: the background word is the last one
    keras.utils.set_random_seed(0)
    text_encoder = TextEncoder(
        Tokenizer("kzoo_shapes").vocabulary_size, length, hidden_dim=WIDTH, num_layers=1,
        num_heads=2,
    )  # fmt: skip
    model = make_model(
        text_encoder=text_encoder,
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": length},
        schedule="cosine",
        max_generate_batch=len(test),
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((train, [str(c) for c in train_labels["caption"]]))
        .shuffle(len(train), seed=0)
        .repeat()
        .batch(32)
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    text_before = [np.array(w) for w in model.text_encoder.trainable_weights]
    losses = model.fit(dataset, steps_per_epoch=100, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.85 * losses[0], losses
    # The text encoder trains jointly with the denoiser.
    assert any(
        np.abs(np.array(w) - b).max() > 0
        for w, b in zip(model.text_encoder.trainable_weights, text_before, strict=True)
    )
    generated = model.generate_from_text(
        [str(c) for c in labels["caption"]], num_steps=MAX_STEPS, guidance_scale=3.0, seed=0
    )
    agreement = np.mean(border_background(generated) == labels["background"])
    assert agreement > 0.8, agreement  # measured 1.0 (32 of 32); chance 0.25


def save_tiny_clip(workdir, length):
    """An untrained tiny DualEncoder saved as `workdir`'s checkpoint (text width `WIDTH`)."""
    from kzoo.models import DualEncoder
    from kzoo.training import checkpoint

    clip = DualEncoder(
        text_encoder={"hidden_dim": WIDTH, "num_layers": 1, "num_heads": 2},
        image_encoder={"image_shape": SHAPE, "patch_size": 4, "hidden_dim": 16, "num_layers": 1},
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": length},
        embedding_dim=8,
    )
    clip.compile(optimizer="adam")
    clip.optimizer.build(clip.trainable_variables)
    os.makedirs(workdir)
    checkpoint.save_checkpoint(clip, workdir, epoch=1, step=1)
    return clip


def test_text_encoder_workdir_gives_the_trained_dual_encoders_text_tower_frozen(tmp_path):
    """`text_encoder_workdir` in a recipe: the trainer conditions on a trained CLIP text tower."""
    from kzoo.testing import tiny_vqvae
    from kzoo.training import checkpoint, trainer

    clip_dir = os.path.join(tmp_path, "clip")
    clip = save_tiny_clip(clip_dir, LENGTH)
    text_encoder = trainer._frozen_text_encoder(clip_dir)
    assert not text_encoder.trainable and not any(v.trainable for v in text_encoder.weights)
    model = make_model(text_encoder=text_encoder)
    tokens = model.tokenize(CAPTIONS)
    np.testing.assert_allclose(
        np.asarray(text_encoder(tokens)["sequence"]),
        np.asarray(clip.text_encoder(tokens)["sequence"]),
        atol=1e-6,
    )
    x_t = np.zeros((2, *SHAPE), np.float32)
    model([x_t, np.array([5.0, 50.0], np.float32), tokens])
    assert model.trainable_variables
    assert not {id(v) for v in text_encoder.weights} & {id(v) for v in model.trainable_variables}

    vq_dir = os.path.join(tmp_path, "vqvae")
    os.makedirs(vq_dir)
    vqvae = tiny_vqvae()
    vqvae.compile(optimizer="adam")
    vqvae.optimizer.build(vqvae.trainable_variables)
    checkpoint.save_checkpoint(vqvae, vq_dir, epoch=1, step=1)
    with pytest.raises(ValueError, match="`text_encoder_workdir` must hold a model with a"):
        trainer._frozen_text_encoder(vq_dir)
    with pytest.raises(
        ValueError, match="kzoo train clip_shapes .* Received: text_encoder_workdir="
    ):
        trainer._frozen_text_encoder(os.path.join(tmp_path, "missing"))
    os.makedirs(os.path.join(tmp_path, "empty"))  # no checkpoint yet
    with pytest.raises(
        ValueError, match="kzoo train clip_shapes .* Received: text_encoder_workdir="
    ):
        trainer._frozen_text_encoder(os.path.join(tmp_path, "empty"))


@pytest.mark.slow  # builds the recipe's 32x32 model and traces its train step
def test_recipe_trains_two_steps_on_a_frozen_clip_text_tower_and_evaluates(tmp_path):
    import recipes
    import recipes.text2image_shapes as recipe
    from kzoo.metrics.features import ShapesClassifier
    from kzoo.training import trainer

    config = recipes.get_recipe(
        "text2image_shapes",
        [
            "model.denoiser.channels=(8, 16, 16)",
            "model.denoiser.norm_groups=4",
            "model.denoiser.time_embedding_dim=16",
            f"model.denoiser.context_dim={WIDTH}",
            "batch_size=8",
            "steps_per_epoch=2",
        ],
    )
    assert config["outputs"] == ("image", "caption")
    assert config["text_encoder_workdir"] == "runs/clip_shapes"
    clip_dir = os.path.join(tmp_path, "clip")
    clip = save_tiny_clip(clip_dir, recipe.SEQUENCE_LENGTH)
    config["text_encoder_workdir"] = clip_dir
    built = trainer.train(config, os.path.join(tmp_path, "t2i"), steps=2, verbose=0)
    assert built.text_conditional and built.image_shape == (32, 32, 3)
    assert isinstance(built.denoiser, UNet) and built.denoiser.context_dim == WIDTH
    assert int(built.optimizer.iterations.numpy()) == 2
    # The CLIP text tower conditioned the model and did not train.
    assert not built.text_encoder.trainable
    for weight, original in zip(built.text_encoder.weights, clip.text_encoder.weights, strict=True):
        np.testing.assert_array_equal(np.array(weight), np.array(original))
    results = recipe.evaluate(
        built, num_examples=4, num_steps=1, classifier=ShapesClassifier(image_size=32)
    )
    for name in ("shape", "color"):
        assert 0.0 <= results[f"{name}_agreement"] <= 1.0
        assert 0.0 <= results["novel"][f"{name}_agreement"] <= 1.0
    assert results["shape_chance"] == round(1 / 6, 4)
    assert results["novel"]["num_examples"] == novel_combinations("test", num_examples=4).sum()


@pytest.mark.slow  # a checkpoint round trip and two sampling graphs
def test_cli_sample_takes_captions_for_a_text_to_image_model(model, tmp_path, capsys):
    import json

    from PIL import Image

    from kzoo.cli import main
    from kzoo.training.checkpoint import save_checkpoint

    workdir = str(tmp_path / "text2image")
    os.makedirs(workdir)
    save_checkpoint(model, workdir, epoch=1, step=1)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"dataset": "kzoo_shapes"}, f)
    png = str(tmp_path / "samples.png")
    argv = ["sample", workdir, "--out", png, "--num", "3", "--steps", "2"]
    captions = ["--caption", "a red circle", "--caption", "", "--guidance-scale", "3"]
    assert main([*argv, *captions]) == 0
    size = Image.open(png).size
    assert main(argv) == 0  # no caption: empty-caption (unconditional) samples
    assert Image.open(png).size == size
    capsys.readouterr()
