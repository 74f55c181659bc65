"""The serving kit around exports: `kzoo evaluate` figures in model cards, presets from
`kzoo export`, encoded-image signatures, TF Serving warmup requests, the REST client
and its documented examples, the serving config. (`signatures.json` and the tokenizer
files beside LiteRT files are checked on exports other tests already make:
tests/test_export.py, tests/test_dual_encoder_export.py.)"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from kzoo.cli import main
from kzoo.export import export_all
from kzoo.models import VQVAE
from kzoo.serving import parse_rest_response, payload_tensors, rest_payload
from kzoo.testing import tiny_vqvae, write_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A `kzoo train`-like workdir holding an untrained tiny VQ-VAE, evaluated."""
    path = str(tmp_path_factory.mktemp("run"))
    keras.utils.set_random_seed(0)
    model = tiny_vqvae()
    model(np.zeros((1, 8, 8, 3), "float32"))
    write_workdir(path, model, {"recipe": "vqvae_shapes", "dataset": "kzoo_shapes"})
    assert main(["evaluate", path, "--num-examples", "8"]) == 0
    return path, model


def test_evaluate_keeps_its_figures_for_the_model_card(workdir, capsys):
    path, _ = workdir
    with open(os.path.join(path, "evaluation.json")) as f:
        figures = json.load(f)
    assert "psnr" in json.dumps(figures).lower()


def test_cli_exports_a_preset_with_a_model_card(workdir, tmp_path, capsys):
    path, model = workdir
    out = str(tmp_path / "exported")
    assert main(["export", path, "--format", "preset", "--out", out]) == 0
    assert "Exported to" in capsys.readouterr().out
    preset = os.path.join(out, "vqvae_shapes_preset", "1")
    for filename in ("config.json", "model.weights.h5", "metadata.json", "README.md"):
        assert os.path.isfile(os.path.join(preset, filename)), filename
    loaded = VQVAE.from_preset(preset)
    for before, after in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    # The card, next to the versions and inside the preset: what, how, how well.
    with open(os.path.join(out, "vqvae_shapes_preset", "README.md")) as f:
        card = f.read()
    with open(os.path.join(path, "evaluation.json")) as f:
        figures = json.load(f)
    assert card.startswith("# vqvae_shapes\n")
    assert f"kzoo train vqvae_shapes --workdir {path}" in card
    assert f"kzoo export {path} --format preset" in card
    assert json.dumps(figures, indent=2, sort_keys=True) in card
    for section in ("## Model", "## Intended use", "## Limits", "## Export parity"):
        assert section in card
    with open(os.path.join(preset, "README.md")) as f:
        assert f.read() == card
    assert main(["export", path, "--format", "preset", "--quantize", "float16"]) == 2
    assert "--quantize applies to LiteRT only" in capsys.readouterr().err


# --- encoded images, warmup requests, REST examples, serving config ------------------

TINY_IMAGE = (4, 4, 3)
DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "serving.md"
)
SIGNATURES = ["serving_default", "encode", "decode", "reconstruct_png", "encode_png"]


def tiny_vq():
    """The 4x4 VQ-VAE of docs/serving.md's REST examples (48 numbers per image)."""
    keras.utils.set_random_seed(0)
    model = tiny_vqvae(image_shape=TINY_IMAGE, name="tiny_vq")
    model(np.zeros((1, *TINY_IMAGE), "float32"))
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`(model, ExportResult, loaded SavedModel)`: the tiny VQ-VAE, exported once."""
    model = tiny_vq()
    out = tmp_path_factory.mktemp("served")
    result = export_all(model, out, formats=("saved_model",), check_parity=False)["saved_model"]
    return model, result, tf.saved_model.load(result.path)


def decode_pngs(pngs):
    return np.stack([tf.io.decode_png(p).numpy() for p in pngs])


def test_png_signatures_equal_the_float_ones_on_the_decoded_images(served):
    _, result, loaded = served
    assert result.signatures == SIGNATURES
    signatures = loaded.signatures
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, *TINY_IMAGE), dtype=np.uint8)
    pngs = tf.constant([tf.io.encode_png(p).numpy() for p in pixels])
    # What the graph computes from the decoded bytes, bitwise: a float32 division and
    # subtraction, correctly rounded in NumPy as in TF.
    floats = pixels.astype(np.float32) / 127.5 - 1
    # Same float inputs, same ops, same batch: the same codes and floats exactly.
    np.testing.assert_array_equal(
        signatures["encode_png"](image_bytes=pngs)["indices"],
        signatures["encode"](images=floats)["indices"],
    )
    reconstruction = signatures["serving_default"](images=floats)["reconstruction"].numpy()
    quantized = np.round((np.clip(reconstruction, -1, 1) + 1) * 127.5).astype(np.uint8)
    png_bytes = signatures["reconstruct_png"](image_bytes=pngs)["png_bytes"].numpy()
    assert png_bytes.shape == (3,) and all(p.startswith(b"\x89PNG") for p in png_bytes)
    np.testing.assert_array_equal(decode_pngs(png_bytes), quantized)
    # A JPEG of another size and a grey PNG: decoded to 3 channels and resized in the
    # graph, as tf.image does it here.
    photo = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 4, 1), dtype=np.uint8)
    encoded = tf.constant([tf.io.encode_jpeg(photo).numpy(), tf.io.encode_png(grey).numpy()])
    resized = tf.image.resize(
        tf.cast(tf.io.decode_jpeg(encoded[0]), tf.float32), (4, 4), antialias=True
    )
    expected = tf.stack(
        [
            resized / 127.5 - 1,
            tf.image.grayscale_to_rgb(tf.constant(grey.astype(np.float32) / 127.5 - 1)),
        ]
    )
    np.testing.assert_array_equal(
        signatures["encode_png"](image_bytes=encoded)["indices"],
        signatures["encode"](images=tf.cast(expected, tf.float32))["indices"],
    )
    with pytest.raises(tf.errors.InvalidArgumentError):
        signatures["encode_png"](image_bytes=tf.constant([b"not an image"]))


REPLAY = """
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

warmup_file, version_dir = sys.argv[1:]
loaded = tf.saved_model.load(version_dir)
records = []
for raw in tf.data.TFRecordDataset(warmup_file).as_numpy_iterator():
    log = prediction_log_pb2.PredictionLog.FromString(raw)
    request, response = log.predict_log.request, log.predict_log.response
    served = loaded.signatures[request.model_spec.signature_name](
        **{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    )
    errors = {}
    for name, proto in response.outputs.items():
        recorded, got = tf.make_ndarray(proto), served[name].numpy()
        if recorded.dtype == object:  # PNG bytes: compare the pixels
            recorded, got = ([tf.io.decode_png(p).numpy() for p in a] for a in (recorded, got))
        errors[name] = float(np.abs(np.asarray(recorded, float) - np.asarray(got, float)).max())
    records.append([request.model_spec.name, request.model_spec.signature_name, errors])
kzoo = sorted(m for m in sys.modules if m.split(".")[0] == "kzoo")
print(json.dumps({"records": records, "kzoo_modules": kzoo}))
"""


def test_warmup_requests_replay_in_a_fresh_process(served, tmp_path):
    _, result, _ = served
    path = os.path.join(result.path, "assets.extra", "tf_serving_warmup_requests")
    # A process that imports TensorFlow and the serving API's protos only (-P: no
    # working directory on sys.path), as TF Serving sees the version directory.
    run = subprocess.run(
        [sys.executable, "-P", "-c", REPLAY, path, result.path],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    replay = json.loads(run.stdout.strip().splitlines()[-1])
    assert replay["kzoo_modules"] == []
    assert [r[1] for r in replay["records"]] == SIGNATURES  # one request per signature
    assert {r[0] for r in replay["records"]} == {"tiny_vq"}
    for _, signature, errors in replay["records"]:
        assert errors, signature  # every record holds the Keras outputs
        for name, error in errors.items():
            # Floats: the SavedModel against Keras in process (the parity limit is 1e-4;
            # measured 0). Codes: equal. PNG pixels: a value within float noise of a
            # rounding boundary may land one level off.
            limit = {"png_bytes": 1, "indices": 0}.get(name, 1e-5)
            assert error <= limit, (signature, name, error)


def rest_examples():
    """The request bodies of docs/serving.md (its ```json blocks naming a signature)."""
    with open(DOC, encoding="utf-8") as f:
        blocks = re.findall(r"```json\n(.*?)```", f.read(), flags=re.S)
    return [json.loads(block) for block in blocks if '"signature_name"' in block]


def tf_serving_response(outputs, row_format):
    """The JSON TF Serving answers with (https://www.tensorflow.org/tfx/serving/api_rest):
    one unnamed value per example for a single output, `_bytes` outputs as b64."""
    columns = {}
    for name, value in outputs.items():
        if value.dtype == object:
            assert name.endswith("_bytes"), name
            columns[name] = [{"b64": base64.b64encode(v).decode()} for v in value]
        else:
            columns[name] = value.tolist()
    if not row_format:
        return json.dumps({"outputs": columns if len(columns) > 1 else columns[name]})
    rows = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    if len(columns) == 1:
        rows = [row[name] for row in rows]
    return json.dumps({"predictions": rows})


def test_docs_rest_examples_run_through_their_signatures(served):
    _, _, loaded = served
    examples = rest_examples()
    assert sorted(e["signature_name"] for e in examples) == sorted(SIGNATURES)
    for example in examples:
        fn = loaded.signatures[example["signature_name"]]
        specs = fn.structured_input_signature[1]
        dtypes = {name: spec.dtype.as_numpy_dtype for name, spec in specs.items()}
        signature, inputs = payload_tensors(json.dumps(example), dtypes)
        assert signature == example["signature_name"]
        # The documented client writes exactly the documented body.
        assert rest_payload(inputs, signature) == example
        assert "instances" in example  # every input batched: row format
        outputs = {k: v.numpy() for k, v in fn(**inputs).items()}
        parsed = parse_rest_response(tf_serving_response(outputs, True), list(outputs))
        assert parsed.keys() == outputs.keys()
        for name, value in outputs.items():
            np.testing.assert_array_equal(parsed[name], value)


def test_rest_payload_row_and_columnar_formats_b64_and_responses():
    row = rest_payload({"labels": np.array([0, 2], np.int32), "seed": [5, 6]}, "generate")
    assert row == {
        "signature_name": "generate",
        "instances": [{"labels": 0, "seed": 5}, {"labels": 2, "seed": 6}],
    }
    # Inputs of other batch sizes (CLIP's `similarity`) or a scalar: columnar.
    images = np.full((1, 1, 1, 1), 0.12, np.float32)
    columnar = rest_payload({"images": images, "text": ["a red circle", "a ring"]}, "similarity")
    assert columnar == {
        "signature_name": "similarity",
        "inputs": {"images": [[[[0.12]]]], "text": ["a red circle", "a ring"]},
    }
    _, tensors = payload_tensors(columnar)
    assert tensors["images"].dtype == np.float32 and tensors["images"][0, 0, 0, 0] == images.item()
    assert tensors["text"].tolist() == [b"a red circle", b"a ring"]
    assert rest_payload({"n": np.int32(3)}) == {"inputs": {"n": 3}}
    binary = b"\x89PNG\r\n\x1a\n\x00"  # ends in a NUL that fixed-width NumPy bytes would drop
    body = rest_payload({"image_bytes": [binary]})
    assert body == {"instances": [{"image_bytes": {"b64": base64.b64encode(binary).decode()}}]}
    assert payload_tensors(json.dumps(body))[1]["image_bytes"].tolist() == [binary]
    # Responses: one unnamed output per example, named outputs, columnar, errors.
    indices = parse_rest_response('{"predictions": [[1, 2], [3, 4]]}', ["indices"])["indices"]
    assert indices.tolist() == [[1, 2], [3, 4]] and indices.dtype == np.int32
    named = parse_rest_response(
        {"predictions": [{"captions": "a ring", "token_ids": [5, 3]}]}, ["captions", "token_ids"]
    )
    assert named["captions"].tolist() == [b"a ring"] and named["token_ids"].tolist() == [[5, 3]]
    png = parse_rest_response({"outputs": [{"b64": "iVBORw=="}]}, ["png_bytes"])["png_bytes"]
    assert png.tolist() == [b"\x89PNG"]
    with pytest.raises(ValueError, match="answered with an error"):
        parse_rest_response('{"error": "seed must have one entry per example"}', ["images"])
    with pytest.raises(ValueError, match="exactly one of"):
        payload_tensors({"inputs": {}, "instances": []})
    with pytest.raises(ValueError, match="non-empty dict"):
        rest_payload({})


def test_cli_writes_a_serving_config_for_every_saved_model(workdir, served, tmp_path, capsys):
    path, _ = workdir
    _, result, _ = served
    out = tmp_path / "exported"
    for name in ("tiny_vq", "other_model"):  # two SavedModel folders to serve
        shutil.copytree(os.path.dirname(result.path), out / name)
    argv = ["export", path, "--format", "preset", "--out", str(out), "--serving-config"]
    assert main(argv) == 0
    assert f"Wrote {out / 'models.config'}" in capsys.readouterr().out
    config = text_format.Parse(
        (out / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] == [
        ("other_model", str(out.resolve() / "other_model"), "tensorflow"),
        ("tiny_vq", str(out.resolve() / "tiny_vq"), "tensorflow"),
    ]  # absolute base paths; the preset folder is not a SavedModel
    batching = (out / "batching_parameters.txt").read_text()
    assert "max_batch_size { value: 64 }" in batching
    assert "batch_timeout_micros { value: 2000 }" in batching
