"""Tests for kzoo.export: TF Serving layout, LiteRT conversion, parity, failure cleanup."""

import hashlib
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from keras import layers, ops

import kzoo.data as kzoo_data
from kzoo import cli
from kzoo.export import (
    MAX_ABS_ERROR,
    MIN_INDEX_AGREEMENT,
    LiteRTConversionError,
    _core,
    check_parity,
    export_all,
    export_litert,
    export_saved_model,
    format_parity_table,
    litert_op_types,
    litert_signatures,
    make_parity_batch,
    reference_outputs,
    run_litert,
    saved_model_outputs,
)
from kzoo.export import parity as export_parity
from kzoo.testing import tiny_vqvae, write_workdir

IMAGE_SHAPE = (8, 8, 3)
GRID_SHAPE = (4, 4)
CODEBOOK_SIZE = 16


class TinyVQ(keras.Model):
    """A VQ-VAE-shaped model following the export contract: images <-> code indices."""

    codebook_size = CODEBOOK_SIZE

    def __init__(self, use_argmin=False, broken_endpoint=False, default_name=None, **kwargs):
        super().__init__(name=kwargs.pop("name", "tiny_vq"), **kwargs)
        self.use_argmin = use_argmin
        self.broken_endpoint = broken_endpoint
        self.default_name = default_name
        init = keras.initializers.GlorotUniform
        self.encoder_in = layers.Conv2D(
            16, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(1)
        )
        self.encoder_out = layers.Conv2D(8, 3, padding="same", kernel_initializer=init(2))
        self.codebook = layers.Embedding(
            CODEBOOK_SIZE, 8, embeddings_initializer=keras.initializers.RandomUniform(-1, 1, 3)
        )
        self.decoder_in = layers.Conv2D(
            16, 3, padding="same", activation="relu", kernel_initializer=init(4)
        )
        self.decoder_out = layers.Conv2DTranspose(
            3, 3, strides=2, padding="same", kernel_initializer=init(5)
        )

    def encode(self, images):
        latents = self.encoder_out(self.encoder_in(images))  # (B, 4, 4, 8)
        codes = self.codebook(ops.arange(CODEBOOK_SIZE))  # (K, 8)
        distances = (
            ops.sum(latents[..., None, :] ** 2, axis=-1)
            - 2 * ops.einsum("bhwc,kc->bhwk", latents, codes)
            + ops.sum(codes**2, axis=-1)
        )  # (B, 4, 4, K)
        if self.use_argmin:
            return ops.cast(ops.argmin(distances, axis=-1), "int32")
        _, indices = ops.top_k(-distances, k=1)
        return ops.cast(indices[..., 0], "int32")

    def decode(self, indices):
        return ops.tanh(self.decoder_out(self.decoder_in(self.codebook(indices))))

    def call(self, images):
        return self.decode(self.encode(images))

    def export_endpoints(self):
        images = keras.InputSpec(shape=(None, *IMAGE_SHAPE), dtype="float32", name="images")
        indices = keras.InputSpec(shape=(None, *GRID_SHAPE), dtype="int32", name="indices")
        endpoints = {
            self.default_name or "serving_default": (
                lambda x: {"reconstruction": self(x)},
                [images],
            ),
            "encode": (lambda x: {"indices": self.encode(x)}, [images]),
            "decode": (lambda i: {"images": self.decode(i)}, [indices]),
        }
        if self.broken_endpoint:

            def broken(x):
                raise RuntimeError("boom while tracing")

            endpoints["broken"] = (broken, [images])
        return endpoints


def make_model(cls=None, **kwargs):
    model = (cls or TinyVQ)(**kwargs)
    model(np.zeros((1, *IMAGE_SHAPE), "float32"))
    return model


def tree(path):
    return sorted(
        os.path.relpath(os.path.join(root, name), path)
        for root, dirs, files in os.walk(path)
        for name in dirs + files
    )


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("export") / "exported"
    results = export_all(model, out_dir, quantize=("none", "float16", "dynamic"))
    return out_dir, results


def test_layout_is_tf_serving_plus_litert_sibling(exported):
    out_dir, results = exported
    saved_model, litert = results["saved_model"], results["litert"]
    assert saved_model.path == os.path.join(out_dir, "tiny_vq", "1")
    assert litert.path == os.path.join(out_dir, "tiny_vq_litert", "1")
    assert saved_model.version == litert.version == 1
    assert sorted(os.listdir(out_dir)) == ["tiny_vq", "tiny_vq_litert"]
    assert sorted(os.listdir(out_dir / "tiny_vq")) == ["1", "README.md"]  # README: model card
    assert {"saved_model.pb", "variables", "parity.json"} <= set(os.listdir(saved_model.path))
    assert sorted(os.listdir(litert.path)) == [
        "dynamic.tflite",
        "float16.tflite",
        "float32.tflite",
        "parity.json",
        "signatures.json",
    ]
    assert litert.files["float16"] == os.path.join(litert.path, "float16.tflite")
    assert saved_model.signatures == ["serving_default", "encode", "decode"]
    for result in results.values():
        with open(os.path.join(result.path, "parity.json")) as f:
            assert json.load(f) == result.parity
    # Quantized weights are smaller than float32 ones.
    sizes = {k: os.path.getsize(v) for k, v in litert.files.items()}
    assert sizes["float16"] < sizes["float32"] and sizes["dynamic"] < sizes["float32"]


def test_litert_export_writes_signatures_json_and_a_card_with_parity(exported):
    out_dir, results = exported
    litert = results["litert"]
    with open(os.path.join(litert.path, "signatures.json")) as f:
        guide = json.load(f)
    assert guide["files"] == {
        "float32": "float32.tflite",
        "float16": "float16.tflite",
        "dynamic": "dynamic.tflite",
    }
    encode = guide["signatures"]["encode"]
    assert encode["inputs"]["images"] == {
        "shape": [-1, 8, 8, 3],
        "dtype": "float32",
        "range": "float32 in [-1, 1]",
    }
    indices = guide["signatures"]["decode"]["inputs"]["indices"]
    assert indices["dtype"] == "int32" and indices["range"] == "int32 in [0, 15]"
    assert "tokenizer" not in guide  # an image model has no vocabulary
    # The same card beside every format's versions: this export's parity table and
    # the signatures with their inputs.
    with open(os.path.join(out_dir, "tiny_vq_litert", "README.md")) as f:
        card = f.read()
    with open(os.path.join(out_dir, "tiny_vq", "README.md")) as f:
        assert f.read() == card
    table = format_parity_table([results["saved_model"].parity, litert.parity])
    assert table in card
    assert re.search(r"litert/float32\s+encode\s+indices\s+index_agreement", card)
    assert "- `decode`: `indices`" in card
    assert "No `evaluation.json`" in card  # exported from Python, no workdir


def test_saved_model_cli_lists_all_signatures(exported):
    _, results = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--all", "--dir", results["saved_model"].path],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    for signature in ("serving_default", "encode", "decode"):
        assert f"signature_def['{signature}']" in shown
    assert "signature_def['serve']" not in shown
    decode = shown.split("signature_def['decode']")[1].split("signature_def[")[0]
    assert "inputs['indices']" in decode and "DT_INT32" in decode and "(-1, 4, 4)" in decode
    assert "outputs['images']" in decode and "(-1, 8, 8, 3)" in decode
    encode = shown.split("signature_def['encode']")[1].split("signature_def[")[0]
    assert "inputs['images']" in encode and "outputs['indices']" in encode
    assert "outputs['reconstruction']" in shown


def test_saved_model_parity_in_fresh_process(exported):
    _, results = exported
    parity = results["saved_model"].parity
    assert parity["ok"]
    runner = parity["saved_model_runner"]
    assert runner["fresh_process"] and runner["kzoo_modules_loaded"] == []
    checked = parity["results"]["saved_model"]
    assert checked["serving_default"]["reconstruction"]["max_abs_error"] <= 1e-4
    assert checked["decode"]["images"]["max_abs_error"] <= 1e-4
    assert checked["encode"]["indices"]["index_agreement"] == 1.0
    assert parity["batch"]["inputs"]["decode"]["indices"] == {
        "shape": [4, *GRID_SHAPE],
        "dtype": "int32",
        "source": "generated",
    }


def test_saved_model_runner_fails_if_kzoo_gets_imported(exported, tmp_path, monkeypatch):
    # A sitecustomize that imports kzoo must trip the runner's check: proof it is live.
    (tmp_path / "sitecustomize.py").write_text("import kzoo\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    _, results = exported
    inputs = {"decode": {"indices": np.zeros((1, *GRID_SHAPE), "int32")}}
    with pytest.raises(RuntimeError, match=r"imported kzoo modules: \['kzoo'"):
        saved_model_outputs(results["saved_model"].path, inputs)


def test_litert_parity_per_variant(exported):
    _, results = exported
    parity = results["litert"].parity
    assert parity["ok"]
    res = parity["results"]
    assert set(res) == {"litert/float32", "litert/float16", "litert/dynamic"}
    for variant in res:
        assert res[variant]["encode"]["indices"]["index_agreement"] == 1.0
    float32 = res["litert/float32"]["serving_default"]["reconstruction"]["max_abs_error"]
    float16 = res["litert/float16"]["serving_default"]["reconstruction"]["max_abs_error"]
    dynamic = res["litert/dynamic"]["serving_default"]["reconstruction"]["max_abs_error"]
    assert float32 <= 1e-6
    # Non-zero errors show the weights really were quantized; the bounds are what this
    # tiny model reaches (measured ~2e-5 and ~3e-4), well inside the documented limits.
    assert 1e-7 < float16 <= 1e-3 <= MAX_ABS_ERROR["litert/float16"]
    assert float16 < dynamic <= 1e-2 <= MAX_ABS_ERROR["litert/dynamic"]
    assert res["litert/dynamic"]["decode"]["images"]["max_abs_error"] <= 1e-2


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_run_litert_any_batch_size(model, exported, batch_size):
    _, results = exported
    path = results["litert"].files["float32"]
    images = np.random.default_rng(batch_size).uniform(-1, 1, (batch_size, *IMAGE_SHAPE))
    images = images.astype("float32")
    encoded = run_litert(path, "encode", {"images": images})
    np.testing.assert_array_equal(encoded["indices"], ops.convert_to_numpy(model.encode(images)))
    decoded = run_litert(path, "decode", {"indices": encoded["indices"]})
    np.testing.assert_allclose(decoded["images"], ops.convert_to_numpy(model(images)), atol=1e-5)
    assert decoded["images"].shape == (batch_size, *IMAGE_SHAPE)


def test_run_litert_rejects_bad_inputs(exported):
    _, results = exported
    path = results["litert"].files["float32"]
    images = np.zeros((2, *IMAGE_SHAPE), "float32")
    with pytest.raises(ValueError, match="Received: signature='serve'"):
        run_litert(path, "serve", {"images": images})
    with pytest.raises(ValueError, match=r"takes inputs \['images'\]"):
        run_litert(path, "encode", {"image": images})
    with pytest.raises(ValueError, match=r"Received: shape=\[2, 8, 8\]"):
        run_litert(path, "encode", {"images": images[..., 0]})
    with pytest.raises(ValueError, match="must be int32. Received: dtype=float32"):
        run_litert(path, "decode", {"indices": np.zeros((2, *GRID_SHAPE), "float32")})
    # float64 -> float32 is a safe cast and is accepted.
    out = run_litert(path, "encode", {"images": images.astype("float64")})
    assert out["indices"].dtype == np.int32


def test_litert_signatures_lists_names_shapes_dtypes(exported):
    _, results = exported
    signatures = litert_signatures(results["litert"].files["dynamic"])
    assert set(signatures) == {"serving_default", "encode", "decode"}
    assert signatures["decode"] == {
        "inputs": {"indices": {"shape": [-1, 4, 4], "dtype": "int32"}},
        "outputs": {"images": {"shape": [-1, 8, 8, 3], "dtype": "float32"}},
    }
    assert signatures["encode"]["outputs"] == {"indices": {"shape": [-1, 4, 4], "dtype": "int32"}}


def test_parity_batch_generated_is_deterministic(model):
    first, info = make_parity_batch(model)
    second, _ = make_parity_batch(model)
    for signature in first:
        for name in first[signature]:
            np.testing.assert_array_equal(first[signature][name], second[signature][name])
    images, indices = first["encode"]["images"], first["decode"]["indices"]
    assert images.shape == (4, *IMAGE_SHAPE) and images.dtype == np.float32
    assert -1 <= images.min() < -0.9 and 0.9 < images.max() <= 1
    assert indices.dtype == np.int32 and indices.min() == 0 and indices.max() == CODEBOOK_SIZE - 1
    assert info["int_range"] == [0, CODEBOOK_SIZE] and info["seed"] == 0


def test_given_parity_batch_is_used_and_checked(model, exported):
    _, results = exported
    given = {"decode": {"indices": np.full((2, *GRID_SHAPE), 5, "int64")}}
    reference = reference_outputs(model, parity_batch=given)
    assert reference.batch_info["inputs"]["decode"]["indices"]["source"] == "given"
    assert reference.batch_info["inputs"]["encode"]["images"]["source"] == "generated"
    assert reference.inputs["decode"]["indices"].dtype == np.int32
    expected = ops.convert_to_numpy(model.decode(np.full((2, *GRID_SHAPE), 5, "int32")))
    np.testing.assert_allclose(reference.outputs["decode"]["images"], expected, atol=1e-6)
    parity = check_parity(reference, litert_files={"float32": results["litert"].files["float32"]})
    assert parity["ok"] and list(parity["results"]) == ["litert/float32"]
    with pytest.raises(ValueError, match="input names"):
        reference_outputs(model, parity_batch={"decode": {"codes": given["decode"]["indices"]}})
    with pytest.raises(ValueError, match="endpoints the model does not have"):
        reference_outputs(model, parity_batch={"sample": {}})
    with pytest.raises(ValueError, match=r"Received: shape=\(2, 3\)"):
        reference_outputs(model, parity_batch={"decode": {"indices": np.zeros((2, 3), "int32")}})


def test_format_parity_table(exported):
    _, results = exported
    table = format_parity_table([r.parity for r in results.values()])
    lines = table.splitlines()
    assert lines[0].split() == [
        "variant",
        "signature",
        "output",
        "metric",
        "value",
        "limit",
        "raw",
        "mean_abs",
        "ok",
    ]
    assert len(lines) == 1 + 4 * 3  # header + 4 variants x 3 outputs
    assert all(line.split()[-1] == "yes" for line in lines[1:])
    ok_column = lines[0].index("ok")
    assert all(line[ok_column:].strip() == "yes" for line in lines[1:])
    row = next(line for line in lines if line.startswith("litert/float16") and "indices" in line)
    assert row.split()[3:] == ["index_agreement", "1", "0.99", "-", "-", "yes"]
    row = next(line for line in lines if line.startswith("saved_model") and "decode" in line)
    metric, value, limit, raw, mean, ok = row.split()[3:]
    assert (metric, limit, raw, ok) == ("max_abs_error", "0.0001", "-", "yes")
    assert 0 <= float(mean) <= float(value) <= 1e-4
    failing = {
        "results": {
            "litert/dynamic": {
                "encode": {"indices": {"index_agreement": 0.5, "min_agreement": 0.9, "ok": False}}
            }
        }
    }
    assert format_parity_table(failing).splitlines()[1].split()[-5:] == [
        "0.5",
        "0.9",
        "-",
        "-",
        "NO",
    ]


def test_versions_increment_and_existing_version_is_rejected(model, tmp_path):
    first = export_saved_model(model, tmp_path, check_parity=False)
    second = export_saved_model(model, tmp_path, check_parity=False)
    assert (first.version, second.version) == (1, 2)
    assert first.parity is None
    # LiteRT shares the numbering: the next export_all takes 3 for both formats.
    results = export_all(model, tmp_path, quantize="none", check_parity=False)
    assert results["litert"].version == results["saved_model"].version == 3
    os.makedirs(tmp_path / "tiny_vq" / "not_a_version")
    os.makedirs(tmp_path / "tiny_vq" / "10")
    assert export_saved_model(model, tmp_path, check_parity=False).version == 11
    with pytest.raises(ValueError, match="Received: version=3"):
        export_saved_model(model, tmp_path, version=3, check_parity=False)
    for bad in (0, -1, "4", True):
        with pytest.raises(ValueError, match="Received: version="):
            export_saved_model(model, tmp_path, version=bad, check_parity=False)
    named = export_saved_model(model, tmp_path, name="other", version=7, check_parity=False)
    assert named.path == os.path.join(tmp_path, "other", "7")


def test_bad_arguments(model, tmp_path):
    with pytest.raises(TypeError, match="Sequential"):
        export_saved_model(keras.Sequential([layers.Dense(2)]), tmp_path)
    with pytest.raises(ValueError, match="Received: quantize='int4'"):
        export_all(model, tmp_path, quantize=("none", "int4"))
    with pytest.raises(ValueError, match="Received: quantize='int4'"):
        export_litert(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="Received: formats="):
        export_all(model, tmp_path, formats=("onnx",))
    with pytest.raises(ValueError, match="Received: name='../x'"):
        export_saved_model(model, tmp_path, name="../x")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="out_dir"):
        export_saved_model(model, a_file)

    class ServeModel(TinyVQ):
        def export_endpoints(self):
            return {"serve": super().export_endpoints()["encode"]}

    with pytest.raises(ValueError, match="endpoint name='serve'"):
        export_saved_model(make_model(ServeModel), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.fixture
def temp_dirs_made(monkeypatch):
    """Records the `.tmp-*` dirs an export creates, to check they existed and are gone."""
    made = []
    make = _core.make_temp_dir

    def spy(parent):
        made.append(make(parent))
        return made[-1]

    monkeypatch.setattr(_core, "make_temp_dir", spy)
    return made


def test_tracing_failure_leaves_older_version_untouched(model, tmp_path, temp_dirs_made):
    good = export_saved_model(model, tmp_path, check_parity=False)
    before = {p: sha256(os.path.join(good.path, p)) for p in ("saved_model.pb",)}
    before_tree = tree(tmp_path)
    with pytest.raises(RuntimeError, match="boom while tracing"):
        export_all(make_model(broken_endpoint=True), tmp_path, check_parity=False)
    assert len(temp_dirs_made) == 2  # the v1 export's and the failed one's
    assert os.path.basename(temp_dirs_made[1]).startswith(".tmp-")
    assert not os.path.exists(temp_dirs_made[1])
    assert tree(tmp_path) == before_tree
    assert {p: sha256(os.path.join(good.path, p)) for p in before} == before
    assert not any(".tmp-" in p for p in tree(tmp_path))


def test_flex_op_fails_clearly_after_savedmodel_was_written(tmp_path, temp_dirs_made):
    # argmin lowers to ops outside LiteRT's builtins; the SavedModel temp dir was already
    # written when conversion fails, and must be removed along with the LiteRT one.
    with pytest.raises(LiteRTConversionError) as raised:
        export_all(make_model(use_argmin=True), tmp_path, check_parity=False)
    assert raised.value.ops
    assert all(op in str(raised.value) for op in raised.value.ops)
    assert "SELECT_TF_OPS" in str(raised.value)
    assert tree(tmp_path) == []  # the model dirs this export created are gone too
    assert [os.path.dirname(p) for p in temp_dirs_made] == [
        os.path.join(tmp_path, "tiny_vq"),
        os.path.join(tmp_path, "tiny_vq_litert"),
    ]


def test_export_litert_from_model_with_custom_default_and_subset(tmp_path):
    model = make_model(default_name="reconstruct")
    path = export_litert(model, tmp_path / "all.tflite")
    assert set(litert_signatures(path)) == {"serving_default", "reconstruct", "encode", "decode"}
    images = make_parity_batch(model)[0]["encode"]["images"]
    np.testing.assert_allclose(
        run_litert(path, "serving_default", {"images": images})["reconstruction"],
        run_litert(path, "reconstruct", {"images": images})["reconstruction"],
    )
    subset = export_litert(model, tmp_path / "enc.tflite", signature_keys=["encode"])
    assert list(litert_signatures(subset)) == ["encode"]
    with pytest.raises(ValueError, match="Received: signature_keys=\\['nope'\\]"):
        export_litert(model, tmp_path / "bad.tflite", signature_keys=["nope"])
    assert sorted(os.listdir(tmp_path)) == ["all.tflite", "enc.tflite"]


def test_parity_outside_tolerance_warns_and_is_recorded(model, tmp_path, monkeypatch):
    monkeypatch.setitem(export_parity.MAX_ABS_ERROR, "litert/float16", 0.0)
    with pytest.warns(UserWarning, match="outside the parity tolerances"):
        results = export_all(model, tmp_path, formats="litert", quantize="float16")
    parity = results["litert"].parity
    assert not parity["ok"]
    entry = parity["results"]["litert/float16"]["decode"]["images"]
    assert entry["ok"] is False and entry["max_abs_error"] > 0 and entry["tolerance"] == 0.0
    assert parity["results"]["litert/float16"]["encode"]["indices"]["ok"] is True
    assert "NO" in format_parity_table(parity)
    # LiteRT alone still converts from a SavedModel, written outside out_dir.
    assert tree(tmp_path) == [
        "tiny_vq_litert",
        os.path.join("tiny_vq_litert", "1"),
        os.path.join("tiny_vq_litert", "1", "float16.tflite"),
        os.path.join("tiny_vq_litert", "1", "parity.json"),
        os.path.join("tiny_vq_litert", "1", "signatures.json"),
        os.path.join("tiny_vq_litert", "README.md"),
    ]


# --- full-integer (int8) LiteRT ---------------------------------------------------------

# Measured on the untrained tiny VQ-VAE below through `kzoo export` (4 calibration
# batches of 8 kzoo_shapes training images, parity on 8 test images = 128 codes): raw
# code agreement 0.922, `decode` max error 0.323, reconstruction 0.456 from Keras's
# decode of the file's own codes (2.0 from Keras's: other codes); TinyVQ's `decode`
# with int8 inputs and outputs stays within the same bound.
INT8_MIN_AGREEMENT = 0.85
INT8_MAX_ERROR = 0.5


def shapes_images(num, seed):
    """`num` kzoo_shapes images of 8x8 in [-1, 1] (rendered in memory, no download)."""
    images = kzoo_data.generate(num, image_size=8, seed=seed)["image"]
    return (images.astype("float32") / 127.5 - 1.0).astype("float32")


@pytest.fixture(scope="module")
def vqvae():
    keras.utils.set_random_seed(0)
    model = tiny_vqvae(name="tiny_vqvae")
    model(np.zeros((1, 8, 8, 3), "float32"))
    return model


@pytest.fixture(scope="module")
def int8_cli_export(vqvae, tmp_path_factory):
    """`kzoo export --quantize int8` of a workdir: calibration from the recipe's pipeline."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = {"recipe": "vqvae_shapes", "dataset": "kzoo_shapes", "batch_size": 8, "seed": 0}
    write_workdir(workdir, vqvae, config)
    out = str(tmp_path_factory.mktemp("int8") / "exported")
    argv = ["export", workdir, "--format", "litert", "--quantize", "int8", "--out", out]
    assert cli.main([*argv, "--representative-batches", "4"]) == 0
    return workdir, os.path.join(out, "vqvae_shapes_litert", "1")


def test_int8_cli_export_writes_int8_ops_and_parity(vqvae, int8_cli_export, capsys):
    _, path = int8_cli_export
    assert sorted(os.listdir(path)) == ["int8.tflite", "parity.json", "signatures.json"]
    int8_file = os.path.join(path, "int8.tflite")
    interpreter = Interpreter(model_path=int8_file)
    dtypes, subgraph = set(), 0
    while subgraph < 16:  # every subgraph (one per signature) until the index runs out
        try:
            details = interpreter.get_tensor_details(subgraph)
        except ValueError:
            break
        dtypes |= {np.dtype(detail["dtype"]).name for detail in details}
        subgraph += 1
    assert "int8" in dtypes and "float32" in dtypes  # int8 inside, float at the edges
    op_types = litert_op_types(int8_file)
    assert "CONV_2D" in op_types["encode"]["int8"] and op_types["encode"]["conversions"] > 0
    # Float inputs and outputs by default: what an app feeding float images expects.
    signatures = litert_signatures(int8_file)
    assert signatures["encode"]["inputs"]["images"] == {"shape": [-1, 8, 8, 3], "dtype": "float32"}
    assert signatures["decode"]["outputs"]["images"]["dtype"] == "float32"
    with open(os.path.join(path, "signatures.json")) as f:
        guide = json.load(f)
    assert guide["int8"]["io"] == "float" and guide["int8"]["representative_batches"] == 4
    assert guide["int8"]["op_types"] == op_types
    with open(os.path.join(path, "parity.json")) as f:
        parity = json.load(f)
    assert parity["ok"], format_parity_table(parity)
    results = parity["results"]["litert/int8"]
    # Codes are judged by their raw agreement (the tie-aware one, at int8's float limit,
    # would accept nearly every code) ...
    indices = results["encode"]["indices"]
    assert indices["judged_by"] == "index_agreement" and indices["ok"]
    assert MIN_INDEX_AGREEMENT["litert/int8"] <= INT8_MIN_AGREEMENT <= indices["index_agreement"]
    assert indices["index_agreement"] <= indices["tie_aware_agreement"]
    decode_error = results["decode"]["images"]["max_abs_error"]
    assert 0 < decode_error <= INT8_MAX_ERROR <= MAX_ABS_ERROR["litert/int8"]
    # ... and the reconstruction against Keras's decode of the file's own codes.
    reconstruction = results["serving_default"]["reconstruction"]
    assert reconstruction["codes_differing"] > 0 and reconstruction["ok"]
    assert 0 < reconstruction["tie_resolved_max_abs_error"] <= INT8_MAX_ERROR
    # The parity batch is the recipe's test images, not the training batches calibrated on.
    assert parity["batch"]["inputs"]["encode"]["images"]["source"] == "given"


def test_int8_io_when_asked(model, tmp_path):
    # TinyVQ (no GroupNorm): a smaller graph converts faster than the tiny VQ-VAE.
    images = shapes_images(8, seed=2)
    codes = ops.convert_to_numpy(model.encode(images))
    path = export_litert(
        model,
        tmp_path / "int8.tflite",
        quantize="int8",
        signature_keys=["encode", "decode"],  # two of three conversions: test time
        io="int8",
        representative_data=[{"images": images}, {"decode": {"indices": codes}}],
    )
    signatures = litert_signatures(path)
    images_in = signatures["encode"]["inputs"]["images"]
    assert images_in["dtype"] == "int8" and images_in["quantization"]["scale"] > 0
    images_out = signatures["decode"]["outputs"]["images"]
    assert images_out["dtype"] == "int8" and images_out["quantization"]["scale"] > 0
    # Code indices are integers already: they keep int32.
    assert signatures["decode"]["inputs"]["indices"] == {"shape": [-1, 4, 4], "dtype": "int32"}
    assert signatures["encode"]["outputs"]["indices"]["dtype"] == "int32"
    # run_litert quantizes float inputs with the input's scale; dequantize=True reads back.
    test = shapes_images(4, seed=3)
    test_codes = run_litert(path, "encode", {"images": test})["indices"]
    assert test_codes.dtype == np.int32 and test_codes.shape == (4, 4, 4)
    quantized = run_litert(path, "decode", {"indices": test_codes})["images"]
    assert quantized.dtype == np.int8
    decoded = run_litert(path, "decode", {"indices": test_codes}, dequantize=True)["images"]
    error = np.abs(decoded - ops.convert_to_numpy(model.decode(test_codes))).max()
    assert 0 < error <= INT8_MAX_ERROR


def test_int8_bad_arguments(vqvae, tmp_path, capsys):
    images = shapes_images(4, seed=4)
    with pytest.raises(ValueError, match="Received: quantize='int8', representative_data=None"):
        export_litert(vqvae, tmp_path / "a.tflite", quantize="int8")
    with pytest.raises(ValueError, match="Received: quantize='int8', representative_data=None"):
        export_all(vqvae, tmp_path, formats="litert", quantize=("none", "int8"))
    with pytest.raises(ValueError, match="Received: quantize='float16', io='int8'"):
        export_litert(vqvae, tmp_path / "a.tflite", quantize="float16", io="int8")
    with pytest.raises(ValueError, match="Received: io='int4'"):
        export_all(vqvae, tmp_path, quantize="int8", io="int4", representative_data=[images])
    with pytest.raises(ValueError, match="Received: quantize='none'"):
        export_litert(vqvae, tmp_path / "a.tflite", representative_data=[images])
    # Every converted signature is calibrated on its own inputs: decode takes codes.
    with pytest.raises(ValueError, match=r"no batch for the signatures \['decode'\]"):
        export_litert(vqvae, tmp_path / "a.tflite", quantize="int8", representative_data=[images])
    with pytest.raises(ValueError, match=r"must be int32. Received: dtype=float32"):
        export_litert(
            vqvae,
            tmp_path / "a.tflite",
            quantize="int8",
            representative_data=[{"decode": {"indices": np.zeros((2, 4, 4), "float32")}}],
        )
    assert os.listdir(tmp_path) == []
    argv = ["export", str(tmp_path), "--format", "litert"]
    assert cli.main([*argv, "--representative-batches", "4"]) == 2
    assert "--representative-batches applies to --quantize int8 only" in capsys.readouterr().err
