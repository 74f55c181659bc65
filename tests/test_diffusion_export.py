"""Export of DiffusionModel: `generate`/`denoise` endpoints, serving-time limits, SavedModel
and LiteRT parity, and the `limits` / `export_parity_batch` extensions of kzoo.export."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo.diffusion import DiffusionModel
from kzoo.export import LiteRTConversionError, _core, export_all, export_litert, run_litert

sys.path.insert(0, os.path.dirname(__file__))
from test_diffusion_model import SHAPE, TinyDenoiser  # noqa: E402

NUM_CLASSES = 3
MAX_STEPS = 8
MAX_BATCH = 4


def make_model(export_sampler="ddim", num_classes=NUM_CLASSES):
    # v-prediction with small outputs keeps untrained samples inside [-1, 1], so the
    # parity check compares real values rather than clipped +-1.
    denoiser = TinyDenoiser(num_classes=num_classes, out_scale=0.1)
    return DiffusionModel(
        denoiser,
        schedule={"name": "linear", "num_train_timesteps": 100},
        prediction_type="v",
        max_generate_steps=MAX_STEPS,
        max_generate_batch=MAX_BATCH,
        export_sampler=export_sampler,
        seed=0,
        name="tiny_diffusion",
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = make_model()
    out_dir = str(tmp_path_factory.mktemp("exported"))
    results = export_all(model, out_dir, formats=("saved_model", "litert"), quantize=("none",))
    return model, results


def generate_request(model, **overrides):
    request = {k: tf.constant(v) for k, v in model.export_parity_batch()["generate"].items()}
    request.update({k: tf.constant(v) for k, v in overrides.items()})
    return request


def test_endpoint_contract_inputs_outputs_and_limits():
    endpoints = _core.get_endpoints(make_model())
    assert list(endpoints) == ["generate", "denoise"]
    generate, denoise = endpoints["generate"], endpoints["denoise"]
    assert generate.input_names == ["noise", "labels", "num_steps", "guidance_scale", "seed"]
    specs = {s.name: (s.shape.as_list(), s.dtype.name) for s in generate.tensor_specs}
    assert specs == {
        "noise": ([None, *SHAPE], "float32"),
        "labels": ([None], "int32"),
        "num_steps": ([None], "int32"),
        "guidance_scale": ([None], "float32"),
        "seed": ([None], "int32"),
    }
    assert generate.limits == {
        "num_steps": (1, MAX_STEPS),
        "batch": MAX_BATCH,
        "labels": (0, NUM_CLASSES),
    }
    assert denoise.input_names == ["x_t", "timesteps", "labels"] and denoise.limits == {}
    # Unconditional: no labels, no guidance scale.
    unconditional = _core.get_endpoints(make_model(num_classes=None))
    assert unconditional["generate"].input_names == ["noise", "num_steps", "seed"]
    assert unconditional["denoise"].input_names == ["x_t", "timesteps"]
    batch = make_model(num_classes=None).export_parity_batch()
    assert set(batch["generate"]) == {"noise", "num_steps", "seed"}


def test_saved_model_and_litert_parity_of_both_endpoints(exported):
    model, results = exported
    for fmt, variant in (("saved_model", "saved_model"), ("litert", "litert/float32")):
        parity = results[fmt].parity
        assert parity["ok"], parity
        # The model's own parity batch was used: 4 DDIM steps at guidance 3 on fixed noise.
        inputs = parity["batch"]["inputs"]
        assert inputs["generate"]["noise"] == {
            "shape": [2, *SHAPE],
            "dtype": "float32",
            "source": "given",
        }
        for signature, output in (("generate", "images"), ("denoise", "prediction")):
            assert parity["results"][variant][signature][output]["max_abs_error"] <= 1e-4
    assert results["saved_model"].parity["saved_model_runner"]["kzoo_modules_loaded"] == []
    batch = model.export_parity_batch()["generate"]
    endpoint = _core.get_endpoints(model)["generate"]
    reference = endpoint.fn(*[batch[name] for name in endpoint.input_names])["images"]
    # The parity batch exercises real values, not only clipped ones.
    assert np.mean(np.abs(np.asarray(reference)) < 0.99) > 0.5


def test_reloaded_saved_model_rejects_requests_outside_the_limits(exported):
    model, results = exported
    generate = tf.saved_model.load(results["saved_model"].path).signatures["generate"]
    expected = model.generate(labels=[0, 2], num_steps=4, guidance_scale=3.0, seed=0)
    np.testing.assert_allclose(generate(**generate_request(model))["images"], expected, atol=1e-5)
    # The caps themselves are accepted.
    at_cap = generate_request(
        model,
        num_steps=np.full(MAX_BATCH, MAX_STEPS, np.int32),
        noise=np.zeros((MAX_BATCH, *SHAPE), np.float32),
        labels=np.full((MAX_BATCH,), NUM_CLASSES, np.int32),
        guidance_scale=np.ones(MAX_BATCH, np.float32),
        seed=np.zeros(MAX_BATCH, np.int32),
    )
    assert generate(**at_cap)["images"].shape == (MAX_BATCH, *SHAPE)
    five = {name: np.zeros(5, np.int32) for name in ("labels", "num_steps", "seed")}
    bad_requests = [
        (
            dict(num_steps=np.array([4, 0], np.int32)),
            "num_steps must be in [1, 8]. Received: num_steps=[4 0]",
        ),
        (
            dict(num_steps=np.array([9, 1], np.int32)),
            "num_steps must be in [1, 8]. Received: num_steps=[9 1]",
        ),
        (
            dict(noise=np.zeros((5, *SHAPE), np.float32), **five),
            "The batch of noise must be at most 4. Received: batch=5",
        ),
        (
            dict(labels=np.array([0, 4], np.int32)),
            "labels must be in [0, 3]. Received: labels=[0 4]",
        ),
        # TF Serving batches along dimension 0: every input has one entry per example.
        (
            dict(seed=np.zeros(3, np.int32)),
            "seed must have one entry per example (2). Received: seed of batch 3",
        ),
    ]
    for overrides, message in bad_requests:
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            generate(**generate_request(model, **overrides))
        assert message in str(error.value)


def test_whole_generate_loop_runs_in_litert_with_builtins_only(exported):
    model, results = exported
    path = results["litert"].files["float32"]
    request = model.export_parity_batch()["generate"]
    images = run_litert(path, "generate", request)["images"]
    expected = model.generate(labels=[0, 2], num_steps=4, guidance_scale=3.0, seed=0)
    np.testing.assert_allclose(images, expected, atol=1e-4)
    # Another step count and batch in the same file: num_steps is a runtime input.
    three = {name: value[:1] for name, value in request.items()}
    three["num_steps"] = np.array([3], np.int32)
    np.testing.assert_allclose(
        run_litert(path, "generate", three)["images"],
        model.generate(labels=[0], num_steps=3, guidance_scale=3.0, seed=0),
        atol=1e-4,
    )
    # Documented limitation: the converter drops Assert ops, so LiteRT does not enforce
    # the limits; the sampler clamps num_steps to [1, num_train_timesteps] instead.
    zero = run_litert(path, "generate", {**request, "num_steps": np.zeros(2, np.int32)})
    one = run_litert(path, "generate", {**request, "num_steps": np.ones(2, np.int32)})
    np.testing.assert_array_equal(zero["images"], one["images"])


def test_generate_png_returns_the_generated_images_as_png(exported):
    model, results = exported
    assert results["saved_model"].signatures[-1] == "generate_png"  # SavedModel only
    assert "generate_png" not in results["litert"].signatures  # LiteRT has no PNG codec
    signatures = tf.saved_model.load(results["saved_model"].path).signatures
    request = generate_request(model)
    images = signatures["generate"](**request)["images"].numpy()
    png_bytes = signatures["generate_png"](**request)["png_bytes"].numpy()
    pixels = np.stack([tf.io.decode_png(p).numpy() for p in png_bytes])
    # The same graph on the same request gives the same floats, so the same uint8.
    expected = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)


# A mixed batch: other labels, step counts, guidance scales and seeds per example.
MIXED = {
    "labels": np.array([0, 2, 1], np.int32),
    "num_steps": np.array([4, 2, 7], np.int32),
    "guidance_scale": np.array([3.0, 1.0, 0.0], np.float32),
    "seed": np.array([5, 6, 7], np.int32),
}


def mixed_request():
    # Each example's noise from its own seed, as `generate(seed=[...])` draws it.
    noise = [np.random.default_rng(s).standard_normal(SHAPE) for s in MIXED["seed"]]
    return {"noise": np.stack(noise).astype(np.float32), **MIXED}


def rows(request, index):
    return {name: value[index : index + 1] for name, value in request.items()}


@pytest.fixture(scope="module")
def ddpm_saved_model(tmp_path_factory):
    model = make_model(export_sampler="ddpm")
    saved_model_dir = str(tmp_path_factory.mktemp("ddpm"))
    _core.write_saved_model(model, _core.get_endpoints(model), saved_model_dir)
    return model, saved_model_dir


def test_mixed_batch_generate_gives_each_example_its_image_alone(ddpm_saved_model):
    """DDPM (stochastic, so seeds matter): each row of a mixed batch is that example
    served alone, and the Python API's single-example (scalar) result."""
    model, saved_model_dir = ddpm_saved_model
    generate = tf.saved_model.load(saved_model_dir).signatures["generate"]
    request = mixed_request()
    mixed = generate(**request)["images"].numpy()
    # Tolerance: both sides run the same float32 graph; only the batch size differs,
    # and oneDNN's kernels may sum a convolution in another order for another batch
    # (~1e-7 relative per op), over at most 7 steps on images in [-1, 1].
    # Measured: at most 3e-8.
    for index in range(len(MIXED["seed"])):
        alone = generate(**rows(request, index))["images"].numpy()
        np.testing.assert_allclose(mixed[index : index + 1], alone, rtol=0, atol=1e-6)
        scalar = model.generate(
            labels=MIXED["labels"][index : index + 1],
            num_steps=int(MIXED["num_steps"][index]),
            guidance_scale=float(MIXED["guidance_scale"][index]),
            seed=int(MIXED["seed"][index]),
            sampler="ddpm",
        )
        np.testing.assert_allclose(mixed[index : index + 1], scalar, rtol=0, atol=1e-6)
    # The Python API takes the same per-example lists and gives the same batch.
    per_example = model.generate(
        labels=MIXED["labels"],
        num_steps=MIXED["num_steps"].tolist(),
        guidance_scale=MIXED["guidance_scale"].tolist(),
        seed=MIXED["seed"].tolist(),
        sampler="ddpm",
    )
    np.testing.assert_allclose(per_example, mixed, rtol=0, atol=1e-6)
    # Each example's own count matters: its image at 4 steps differs from the one at 7.
    four = generate(**{**rows(request, 2), "num_steps": np.array([4], np.int32)})
    assert np.abs(four["images"].numpy() - mixed[2:]).max() > 1e-2
    with pytest.raises(ValueError, match=r"one entry per image \(3\)"):
        model.generate(labels=MIXED["labels"], num_steps=[4, 2])
    with pytest.raises(ValueError, match=r"Received: num_steps=\[4, 0, 1\]|num_steps=0"):
        model.generate(labels=MIXED["labels"], num_steps=[4, 0, 1])


def test_mixed_batch_runs_in_the_litert_generate_loop(exported):
    model, results = exported
    path = results["litert"].files["float32"]
    request = mixed_request()
    mixed = run_litert(path, "generate", request)["images"]
    for index in range(len(MIXED["seed"])):
        alone = run_litert(path, "generate", rows(request, index))["images"]
        # Same float32 graph, another batch size (see the SavedModel test above).
        np.testing.assert_allclose(mixed[index : index + 1], alone, rtol=0, atol=1e-6)
    expected = model.generate(
        labels=MIXED["labels"],
        num_steps=MIXED["num_steps"].tolist(),
        guidance_scale=MIXED["guidance_scale"].tolist(),
        seed=MIXED["seed"].tolist(),
    )
    # The export parity report's float32 LiteRT limit.
    np.testing.assert_allclose(mixed, expected, rtol=0, atol=1e-4)


def test_stochastic_export_sampler_serves_but_needs_flex_ops_in_litert(ddpm_saved_model, tmp_path):
    model, saved_model_dir = ddpm_saved_model
    generate = tf.saved_model.load(saved_model_dir).signatures["generate"]
    first = generate(**generate_request(model))["images"].numpy()
    np.testing.assert_array_equal(first, generate(**generate_request(model))["images"].numpy())
    other_seed = generate(**generate_request(model, seed=np.array([2, 3], np.int32)))
    other_seed = other_seed["images"].numpy()
    assert np.abs(first - other_seed).max() > 1e-3
    # DDPM draws noise in the loop: stateless random ops are not LiteRT builtins.
    with pytest.raises(LiteRTConversionError) as error:
        export_litert(
            saved_model_dir, os.path.join(tmp_path, "g.tflite"), signature_keys=["generate"]
        )
    assert "StatelessRandomNormalV2" in error.value.ops
    # The denoiser alone converts, for clients running their own loop.
    path = export_litert(
        saved_model_dir, os.path.join(tmp_path, "d.tflite"), signature_keys=["denoise"]
    )
    batch = model.export_parity_batch()["denoise"]
    expected = model.denoiser([batch["x_t"], batch["timesteps"], batch["labels"]])
    np.testing.assert_allclose(
        run_litert(path, "denoise", batch)["prediction"], expected, atol=1e-5
    )


class _LimitedModel(keras.Model):
    def __init__(self, limits, **kwargs):
        super().__init__(**kwargs)
        self.limits = limits
        self.built = True

    def export_endpoints(self):
        spec = keras.InputSpec(shape=(None,), dtype="int32", name="steps")
        return {"count": (lambda steps: {"out": steps * 2}, [spec], self.limits)}

    def export_parity_batch(self):
        return {"count": {"steps": np.array([3, 4], np.int32)}}


def test_limits_are_validated():
    cases = [
        ({"size": (1, 2)}, "Received: limits key='size'"),
        ({"batch": 0}, r"Received: limits\['batch'\]=0"),
        ({"steps": (5, 1)}, r"Received: limits\['steps'\]=\(5, 1\)"),
        ({"steps": 3}, r"Received: limits\['steps'\]=3"),
        ({"same_batch": 1}, r"Received: limits\['same_batch'\]=1"),
    ]
    for limits, message in cases:
        with pytest.raises(ValueError, match=message):
            _core.get_endpoints(_LimitedModel(limits))
    with pytest.raises(TypeError, match="limits"):
        _core.get_endpoints(_LimitedModel([1, 2]))
    endpoint = _core.get_endpoints(_LimitedModel({"steps": (0, 9), "batch": 2}))["count"]
    assert endpoint.limits == {"steps": (0, 9), "batch": 2}
    same = _core.get_endpoints(_LimitedModel({"same_batch": True}))["count"]
    assert same.limits == {"same_batch": True}


def test_model_parity_batch_is_the_default(tmp_path):
    model = _LimitedModel({"steps": (0, 9), "batch": 2})
    default = _core.default_parity_batch(model)
    np.testing.assert_array_equal(default["count"]["steps"], [3, 4])
    given = {"count": {"steps": np.array([1], np.int32)}}
    assert _core.default_parity_batch(model, given) is given
    assert _core.default_parity_batch(keras.Sequential()) is None
    result = export_all(
        model, str(tmp_path), name="limited", formats=("litert",), quantize=("none",)
    )
    inputs = result["litert"].parity["batch"]["inputs"]["count"]["steps"]
    assert inputs == {"shape": [2], "dtype": "int32", "source": "given"}
    assert result["litert"].parity["ok"]


# DDIM's loop is exported by `exported` above; the other deterministic samplers here.
@pytest.mark.slow  # a SavedModel write and a LiteRT conversion per sampler
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler", "heun"])
def test_generate_loop_of_each_deterministic_sampler_runs_in_litert(sampler, exported, tmp_path):
    keras.utils.set_random_seed(0)  # the weights of `exported`'s DDIM model
    model = make_model(export_sampler=sampler)
    # Builtin ops only: a Flex op would raise LiteRTConversionError here.
    path = export_litert(model, tmp_path / f"{sampler}.tflite", signature_keys=["generate"])
    images = run_litert(path, "generate", model.export_parity_batch()["generate"])["images"]
    expected = model.generate(
        labels=[0, 2], num_steps=4, sampler=sampler, guidance_scale=3.0, seed=0
    )
    # Both sides compute in float32; LiteRT's kernels sum the convolutions in
    # another order (~1e-7 relative per op) over 4 steps (Heun: 7 denoiser calls,
    # each twice for guidance), on images in [-1, 1]. Measured: at most 7e-7. The
    # limit is the export parity report's float32 limit.
    np.testing.assert_allclose(images, expected, atol=1e-4)
    # The file runs this sampler's loop: DPM-Solver++ and Heun land well away from
    # DDIM's images. Euler's step on the discrete sigmas is DDIM's exactly
    # (tests/test_samplers.py), so its images are DDIM's up to rounding.
    ddim_model, _ = exported
    ddim = ddim_model.generate(labels=[0, 2], num_steps=4, guidance_scale=3.0, seed=0)
    difference = np.abs(expected - ddim).max()
    assert difference < 1e-5 if sampler == "euler" else difference > 1e-2


def test_int8_refuses_the_sampling_loop_and_names_the_signatures_that_convert(tmp_path):
    # TF 2.21's int8 calibrator crashes the process on generate's fori_loop (measured):
    # the export stops before calibrating, naming what converts (denoise did, alone).
    message = r"while loop .*\['serving_default', 'generate'\].* with signature_keys=\['denoise'\]"
    with pytest.raises(ValueError, match=message):
        export_litert(make_model(), tmp_path / "model.tflite", quantize="int8")
    assert os.listdir(tmp_path) == []
