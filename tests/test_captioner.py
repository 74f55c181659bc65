"""Captioner: teacher forcing, causal decoding, bounded greedy/top-k loops, exports, a short fit."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import kzoo.data
from kzoo.data.shapes import novel_combinations
from kzoo.data.tokenizer import Tokenizer
from kzoo.metrics.captions import caption_words, word_accuracy
from kzoo.models import Captioner
from kzoo.models.captioner import EOS_ID, PAD_ID, caption_loss

SHAPE = (16, 16, 3)
L = 14  # decoder positions: the 13 words of a kzoo_shapes caption and [EOS]
CAPTIONS = [
    "a small red circle at the top left on a blue background",
    "",
    "A LARGE cyan ring, at the center on a gray background!",
    " ".join(["a large white square"] * 10),  # longer than max_length: truncated
]
ENCODER = {
    "image_shape": SHAPE,
    "kind": "conv",
    "channels": (16, 32),
    "norm_groups": 8,
    "hidden_dim": 32,
}


def _tiny(**kwargs):
    args = {
        "image_encoder": ENCODER,
        "vocabulary": "kzoo_shapes",
        "max_length": L,
        "hidden_dim": 32,
        "num_layers": 1,
        "num_heads": 2,
        **kwargs,
    }
    return Captioner(**args)


def _images(n=4, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def trained():
    """A tiny captioner after 320 steps of batch 64 on 16x16 kzoo_shapes (~45 s, 2 busy cores)."""
    import keras

    keras.utils.set_random_seed(0)
    images, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split="train", num_examples=4096, image_size=16
    )
    model = _tiny()
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    history = model.fit(images, np.asarray(labels["caption"]), batch_size=64, epochs=5, verbose=0)
    return model, history.history


def test_teacher_forcing_generation_and_caption_shapes(model):
    images = _images()
    outputs = model((images, CAPTIONS))
    assert outputs["logits"].shape == (4, L, model.vocabulary_size)
    assert outputs["targets"].shape == (4, L)
    ids = _np(model.tokenize(CAPTIONS))
    assert ids.shape == (4, L + 1)
    np.testing.assert_array_equal(_np(outputs["targets"]), ids[:, 1:])
    # Token ids and strings give the same logits.
    np.testing.assert_allclose(
        _np(model((images, ids))["logits"]), _np(outputs["logits"]), atol=1e-6
    )
    generated = model.generate(images)
    assert generated.shape == (4, L) and generated.dtype == "int32"
    captions = model.caption(images)
    assert captions.shape == (4,) and captions.dtype == tf.string
    np.testing.assert_array_equal(_np(captions), _np(model.detokenize(generated)))


def test_decoder_is_causal(model):
    features = model.encode_images(_images(2))
    ids = _np(model.tokenize(CAPTIONS[:1] * 2))[:, :-1]
    changed = ids.copy()
    changed[:, 6:] = np.random.default_rng(1).integers(4, model.vocabulary_size, (2, L - 6))
    before = _np(model.decode(features, ids))
    after = _np(model.decode(features, changed))
    np.testing.assert_allclose(after[:, :6], before[:, :6], atol=1e-6)
    assert np.abs(after[:, 6:] - before[:, 6:]).max() > 1e-4
    # The image reaches every position through cross-attention.
    other = _np(model.decode(model.encode_images(_images(2, seed=5)), ids))
    assert np.abs(other[:, 0] - before[:, 0]).max() > 1e-4


def test_loss_ignores_padding_and_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype("float32")
    targets = np.array([[4, 5, 3, 0, 0], [6, 3, 0, 0, 0]], "int32")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = -picked[targets != 0].mean()
    np.testing.assert_allclose(float(_np(caption_loss(logits, targets))), expected, rtol=1e-5)
    noisy = logits.copy()
    noisy[targets == 0] = rng.normal(size=noisy[targets == 0].shape) * 100
    np.testing.assert_allclose(float(_np(caption_loss(noisy, targets))), expected, rtol=1e-5)
    assert float(_np(caption_loss(logits, np.zeros_like(targets)))) == 0.0


def test_fit_loss_masks_padding_of_short_captions(model):
    # The same words with more trailing padding (a longer max_length) give the same loss.
    images = _images(2)
    outputs = model((images, CAPTIONS[:2]))
    loss = model.compute_loss(y_pred=outputs)
    targets = _np(outputs["targets"])
    assert (targets == PAD_ID).any()
    np.testing.assert_allclose(
        float(_np(loss)), float(_np(caption_loss(outputs["logits"], targets))), rtol=1e-6
    )


def test_greedy_equals_top_k_1_and_sampling_is_seeded(model):
    images = _images()
    greedy = _np(model.generate(images))
    for seed in (0, 7):
        np.testing.assert_array_equal(
            _np(model.generate(images, method="top_k", top_k=1, seed=seed)), greedy
        )
    sampled = _np(model.generate(images, method="top_k", top_k=8, temperature=2.0, seed=3))
    np.testing.assert_array_equal(
        _np(model.generate(images, method="top_k", top_k=8, temperature=2.0, seed=3)), sampled
    )
    assert (sampled != greedy).any()
    # [PAD] and [BOS] are never picked before an [EOS].
    for row in sampled:
        words = row[: list(row).index(EOS_ID)] if EOS_ID in row else row
        assert not np.isin(words, [PAD_ID, 2]).any()


def test_loop_is_bounded_and_stops_at_eos():
    model = _tiny()
    bias = model.head.bias
    never = np.zeros(model.vocabulary_size, "float32")
    never[EOS_ID] = -1e4
    bias.assign(never)  # [EOS] never wins: the loop still ends after max_length tokens
    ids = _np(model.generate(_images(2)))
    assert ids.shape == (2, L) and (ids != PAD_ID).all()
    assert len(_np(model.caption(_images(2)))[0].split()) == L
    always = np.zeros(model.vocabulary_size, "float32")
    always[EOS_ID] = 1e4
    bias.assign(always)  # [EOS] first: then only [PAD]
    ids = _np(model.generate(_images(2), method="top_k", top_k=3, seed=0))
    np.testing.assert_array_equal(ids, np.array([[EOS_ID] + [PAD_ID] * (L - 1)] * 2))
    assert _np(model.caption(_images(2))).tolist() == [b"", b""]


def test_tokenizer_truncates_long_captions_and_keeps_eos(model):
    ids = _np(model.tokenize(CAPTIONS))
    assert ids[3, -1] == EOS_ID and (ids[3] != PAD_ID).all()
    assert ids[1, :3].tolist() == [2, EOS_ID, PAD_ID]  # empty caption: [BOS] [EOS]


def test_short_fit_names_colour_and_shape_well_above_chance(trained):
    model, history = trained
    assert history["token_accuracy"][-1] > history["token_accuracy"][0]
    images, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split="test", num_examples=400, image_size=16
    )
    novel = novel_combinations("test", num_examples=400)
    scores = word_accuracy(
        model, images, labels, batch_size=200, subsets={"novel": novel, "seen": ~novel}
    )
    assert scores["num_examples"] == 400
    # The subsets are scored from the same captions: they partition the whole.
    assert scores["novel"]["num_examples"] == novel.sum() > 0
    assert scores["seen"]["num_examples"] == 400 - novel.sum()
    for key in ("shape_accuracy", "color_accuracy", "both_accuracy", "caption_exact_match"):
        parts = scores["novel"][key] * novel.sum() + scores["seen"][key] * (400 - novel.sum())
        assert abs(parts / 400 - scores[key]) < 1e-3, key  # rounding to 4 digits
    with pytest.raises(ValueError, match=r"subsets\['novel'\].*one entry per image \(400\)"):
        word_accuracy(model, images, labels, subsets={"novel": novel[:10]})
    # Measured 1.0 and 0.28 (chance 1/8 and 1/6; 0.22 is ~3 standard errors above 1/6
    # on 400 images): colour is learnt first, shape needs longer runs (the recipe).
    assert scores["color_accuracy"] > 0.6, scores
    assert scores["shape_accuracy"] > 0.22, scores
    # Captions follow the template: the shape word, its colour just before it.
    captions = _np(model.caption(images[:8])).tolist()
    assert all(shape is not None for shape, _ in caption_words(captions)), captions


def test_config_and_keras_round_trip(trained, tmp_path):
    import keras

    model, _ = trained
    config = model.get_config()
    assert config["vocabulary"] == Tokenizer("kzoo_shapes").vocabulary
    assert config["max_length"] == L and config["image_encoder"]["class_name"] == "ImageEncoder"
    clone = Captioner.from_config(config)
    assert clone.get_config() == config
    path = str(tmp_path / "captioner.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = _images()
    np.testing.assert_allclose(
        _np(loaded((images, CAPTIONS))["logits"]),
        _np(model((images, CAPTIONS))["logits"]),
        atol=1e-5,
    )
    np.testing.assert_array_equal(_np(loaded.caption(images)), _np(model.caption(images)))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"max_length": 1}, "max_length=1"),
        ({"hidden_dim": 30, "num_heads": 4}, "num_heads=4"),
        ({"vocabulary": "imagenet"}, "vocabulary='imagenet'"),
        ({"image_encoder": "vit"}, "image_encoder='vit'"),
        ({"num_layers": 0}, "num_layers=0"),
    ],
)
def test_bad_constructor_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**overrides)


def test_bad_images_and_decoding_arguments(model):
    with pytest.raises(ValueError, match=r"images.shape=\(1, 32, 32, 3\)"):
        model.caption(_images(1, shape=(32, 32, 3)))
    with pytest.raises(ValueError, match=r"images.shape=\(1, 16, 16, 1\)"):
        model.generate(_images(1, shape=(16, 16, 1)))
    with pytest.raises(ValueError, match=r"images.shape=\(16, 16, 3\)"):
        model.caption(_images(1)[0])
    with pytest.raises(ValueError, match=r"\(batch, 16, 16, 3\)"):
        model.caption(["a red circle"])
    with pytest.raises(ValueError, match="method='beam'"):
        model.generate(_images(1), method="beam")
    with pytest.raises(ValueError, match="top_k=0"):
        model.generate(_images(1), method="top_k", top_k=0)
    with pytest.raises(ValueError, match="top_k=None"):
        model.generate(_images(1), method="top_k")
    with pytest.raises(ValueError, match="temperature=0"):
        model.generate(_images(1), method="top_k", top_k=2, temperature=0)
    with pytest.raises(ValueError, match="images.shape"):
        model((_images(1, shape=(8, 8, 3)), ["a red circle"]))
    with pytest.raises(ValueError, match=r"captions.shape=\(1, 4\)"):
        model((_images(1), np.ones((1, 4), "int32")))
    with pytest.raises(ValueError, match="captions.dtype=float32"):
        model((_images(1), np.ones((1, L + 1), "float32")))
    with pytest.raises(ValueError, match="`\\(images, captions\\)` pair"):
        model(_images(1))


@pytest.mark.slow  # SavedModel write, a fresh process, LiteRT conversion
def test_saved_model_caption_matches_keras_and_litert_step_parity(trained, tmp_path):
    from kzoo.export import export_all, run_litert

    model, _ = trained
    images, _ = kzoo.data.load_arrays("kzoo_shapes", split="test", num_examples=6, image_size=16)
    parity_batch = {**model.export_parity_batch(), "caption": {"images": images}}
    saved = export_all(
        model, tmp_path, name="cap", formats=("saved_model",), parity_batch=parity_batch
    )["saved_model"]
    assert saved.signatures == [
        "serving_default",
        "caption",
        "encode_image",
        "next_token_logits",
        "caption_png",  # the same on encoded images (SavedModel only)
        "encode_image_png",
    ]
    # The parity check ran the SavedModel in a fresh process (TF and NumPy only): its
    # caption strings and token ids equal the Keras ones on real test images.
    assert saved.parity["ok"], saved.parity
    assert not saved.parity["saved_model_runner"]["kzoo_modules_loaded"]
    caption_parity = saved.parity["results"]["saved_model"]["caption"]
    assert caption_parity["captions"]["index_agreement"] == 1.0
    assert caption_parity["captions"]["shape"] == [6]
    assert caption_parity["token_ids"]["index_agreement"] == 1.0

    # Bad requests fail with the shape in the message, not inside the network.
    loaded = tf.saved_model.load(saved.path)
    # PNG bytes in: the captions of the floats the graph decodes them to (bitwise
    # `uint8 / 127.5 - 1`), so the same captions.
    pixels = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)
    pngs = tf.constant([tf.io.encode_png(p).numpy() for p in pixels])
    np.testing.assert_array_equal(
        loaded.signatures["caption_png"](image_bytes=pngs)["captions"],
        loaded.signatures["caption"](images=pixels.astype(np.float32) / 127.5 - 1)["captions"],
    )
    for bad, match in (
        (_images(1, shape=(32, 32, 3)), r"\[1,32,32,3\]"),
        (_images(1, shape=(16, 16, 1)), r"\[\?,16,16,3\]"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            loaded.signatures["caption"](images=tf.constant(bad))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 256"):
        loaded.signatures["caption"](images=tf.zeros((257, *SHAPE)))

    litert = export_all(
        model.litert_exportable(),
        tmp_path,
        name="cap",
        formats=("litert",),
        quantize=("none",),
        version=saved.version,
    )["litert"]
    assert litert.parity["ok"], litert.parity
    # A host loop over the LiteRT step reproduces the greedy captions, with nothing
    # but the files beside the .tflite: the special ids from tokenizer.json, the
    # words from vocabulary.txt (line i is id i).
    with open(os.path.join(litert.path, "tokenizer.json")) as f:
        special = json.load(f)["special_tokens"]
    with open(os.path.join(litert.path, "vocabulary.txt"), encoding="utf-8") as f:
        vocabulary = f.read().splitlines()
    pad, bos, eos = special["[PAD]"], special["[BOS]"], special["[EOS]"]
    path = litert.files["float32"]
    features = run_litert(path, "encode_image", {"images": images})["image_features"]
    ids = np.full((len(images), L), pad, "int32")
    ids[:, 0] = bos
    done = np.zeros(len(images), bool)
    picked = []
    for position in range(L):
        logits = run_litert(
            path, "next_token_logits", {"image_features": features, "token_ids": ids}
        )["logits"]
        logits[:, [pad, bos]] = -np.inf
        token = np.where(done, pad, logits.argmax(-1))
        picked.append(token)
        done |= token == eos
        if position + 1 < L:
            ids[:, position + 1] = token
    picked = np.stack(picked, 1)
    np.testing.assert_array_equal(picked, _np(model.generate(images)))
    # Words up to [EOS] (a row without one is all words), joined by single spaces:
    # the SavedModel's `caption` strings.
    host_captions = []
    for row in picked.tolist():
        words = row[: row.index(eos)] if eos in row else row
        host_captions.append(" ".join(vocabulary[i] for i in words))
    served = loaded.signatures["caption"](images=tf.constant(images))["captions"]
    assert host_captions == [c.decode() for c in served.numpy()]
