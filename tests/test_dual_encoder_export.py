"""DualEncoder exports: SavedModel signatures on raw strings and pixels, LiteRT over token ids."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kzoo.export import (
    LiteRTConversionError,
    export_all,
    export_litert,
    litert_signatures,
    run_litert,
    saved_model_outputs,
)
from kzoo.models import DualEncoder

SHAPE = (16, 16, 3)
T = 8
TEXT = [
    "a small red circle at the top left on a blue background",
    "",
    "A LARGE cyan ring, at the center on a gray background!",
    " ".join(["a large white square"] * 10),  # longer than the context: truncated
]

pytestmark = pytest.mark.slow  # SavedModel writes, a fresh process, LiteRT conversion


@pytest.fixture(scope="module")
def model():
    return DualEncoder(
        text_encoder={"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
        image_encoder={
            "image_shape": SHAPE,
            "kind": "vit",
            "patch_size": 8,
            "hidden_dim": 16,
            "num_layers": 1,
            "num_heads": 2,
        },
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": T},
        embedding_dim=8,
        name="clip_tiny",
    )


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (3, *SHAPE)).astype("float32")


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    # String parity goes through `saved_model_outputs` below: the generic parity
    # check stores string inputs as NumPy object arrays, which the fresh-process
    # runner cannot load (allow_pickle=False).
    out = tmp_path_factory.mktemp("exported")
    result = export_all(model, out, formats=("saved_model",), check_parity=False)
    return out, result["saved_model"]


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(saved_model[1].path)


def test_saved_model_signatures_match_keras_in_a_fresh_process(model, images, saved_model):
    _, result = saved_model
    assert result.signatures == [
        "serving_default",
        "encode_image",
        "encode_text",
        "similarity",
        "encode_image_png",  # encode_image on encoded images (SavedModel only)
    ]
    text = np.array(TEXT, dtype=np.bytes_)  # bytes, so no pickling is needed
    inputs = {
        "serving_default": {"images": images},
        "encode_image": {"images": images},
        "encode_text": {"text": text},
        "similarity": {"images": images, "text": text},
    }
    outputs, checks = saved_model_outputs(result.path, inputs)
    assert checks["fresh_process"] and not checks["kzoo_modules_loaded"]
    image_embeddings = np.asarray(model.encode_image(images))
    text_embeddings = np.asarray(model.encode_text(TEXT))
    np.testing.assert_allclose(
        outputs["serving_default"]["embeddings"], image_embeddings, atol=1e-5
    )
    np.testing.assert_allclose(outputs["encode_image"]["embeddings"], image_embeddings, atol=1e-5)
    np.testing.assert_allclose(outputs["encode_text"]["embeddings"], text_embeddings, atol=1e-5)
    # Documented bad input: an empty caption embeds to zeros; a long one is truncated.
    np.testing.assert_array_equal(outputs["encode_text"]["embeddings"][1], 0.0)
    np.testing.assert_allclose(
        outputs["encode_text"]["embeddings"][3],
        np.asarray(model.encode_text([" ".join(TEXT[3].split()[:T])]))[0],
        atol=1e-5,
    )
    similarity = outputs["similarity"]["similarity"]
    np.testing.assert_allclose(similarity, image_embeddings @ text_embeddings.T, atol=1e-5)
    probabilities = outputs["similarity"]["probabilities"]
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "signature, inputs, match",
    [
        ("encode_image", {"images": np.zeros((1, 32, 32, 3), np.float32)}, r"\[1,32,32,3\]"),
        ("serving_default", {"images": np.zeros((1, 16, 16, 1), np.float32)}, r"\[\?,16,16,3\]"),
        ("encode_image", {"images": np.zeros((16, 16, 3), np.float32)}, "not compatible"),
        # (the tensor's name in the message depends on Grappler, off in tests)
        ("encode_text", {"text": np.array([["a ring"]], np.bytes_)}, r"\[1,1\] is not compatible"),
        ("encode_text", {"text": np.array([1, 2], np.int32)}, "string tensor"),
    ],
)
def test_signatures_reject_wrong_shapes_and_dtypes(loaded, signature, inputs, match):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})


def test_string_endpoints_cannot_become_litert(saved_model, tmp_path):
    _, result = saved_model
    with pytest.raises(LiteRTConversionError) as error:
        export_litert(result.path, tmp_path / "strings.tflite")
    assert "StringSplitV2" in error.value.ops


def test_litert_encoders_over_token_ids_match_keras(model, images, saved_model):
    out, saved = saved_model
    exportable = model.litert_exportable()
    results = export_all(
        exportable,
        out,
        name=saved.name,
        formats=("litert",),
        quantize=("none",),
        version=saved.version,
        parity_batch={
            "serving_default": {"images": images},
            "encode_image": {"images": images},
            "encode_text": {"token_ids": np.asarray(model.tokenize(TEXT))},
        },
    )
    litert = results["litert"]
    assert litert.path.endswith(f"clip_tiny_litert/{saved.version}")
    assert litert.parity["ok"], litert.parity
    float32 = litert.files["float32"]
    signatures = litert_signatures(float32)
    assert signatures["encode_text"]["inputs"] == {
        "token_ids": {"shape": [-1, T], "dtype": "int32"}
    }
    assert signatures["encode_image"]["inputs"]["images"]["shape"] == [-1, *SHAPE]
    # Host-side tokenization + LiteRT == the string SavedModel's encode_text.
    token_ids = np.asarray(model.tokenize(TEXT))
    got = run_litert(float32, "encode_text", {"token_ids": token_ids})["embeddings"]
    np.testing.assert_allclose(got, np.asarray(model.encode_text(TEXT)), atol=1e-5)
    np.testing.assert_array_equal(got[1], 0.0)  # the empty caption
    # An app needs no Python: the vocabulary, the tokenizer's description and each
    # input's range lie beside the .tflite file.
    with open(os.path.join(litert.path, "vocabulary.txt")) as f:
        vocabulary = f.read().splitlines()
    assert vocabulary == [str(t) for t in model.tokenizer.get_vocabulary()]
    with open(os.path.join(litert.path, "signatures.json")) as f:
        guide = json.load(f)
    assert guide["tokenizer"] == {"vocabulary": "vocabulary.txt", "description": "tokenizer.json"}
    token_ids = guide["signatures"]["encode_text"]["inputs"]["token_ids"]
    assert token_ids["range"] == f"int32 in [0, {len(vocabulary) - 1}] (ids of vocabulary.txt)"
    with open(os.path.join(litert.path, "tokenizer.json")) as f:
        description = json.load(f)
    assert description["special_tokens"] == {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    assert description["sequence_length"] == T


def test_encode_image_png_embeds_the_decoded_image(loaded):
    pixels = np.random.default_rng(2).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    pngs = tf.constant([tf.io.encode_png(p).numpy() for p in pixels])
    # The floats the graph decodes the PNGs to, bitwise: same inputs, same ops, same batch.
    floats = pixels.astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(
        loaded.signatures["encode_image_png"](image_bytes=pngs)["embeddings"],
        loaded.signatures["encode_image"](images=floats)["embeddings"],
    )
