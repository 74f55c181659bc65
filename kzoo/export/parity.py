"""Export parity: do the exported SavedModel and LiteRT files compute what Keras computes?

On one fixed batch per endpoint, the Keras outputs (the endpoint fns called in this
process) are compared with
- the SavedModel's signatures, run in a fresh Python process that imports only
  TensorFlow and NumPy (`_saved_model_runner.py`), as TF Serving would load it, and
- each LiteRT file's signatures, run with `ai_edge_litert`.

Float outputs report `max_abs_error` (checked against the limit) and `mean_abs_error`;
integer (and bool) outputs report `index_agreement`, the fraction of equal entries.
Tolerances are absolute, for outputs of order 1 (images in [-1, 1]); float16 and
dynamic-range LiteRT quantize the weights, so their limits are looser:

| variant          | max_abs_error <= | index_agreement >= |
|------------------|------------------|--------------------|
| `saved_model`    | 1e-4             | 1.0                |
| `litert/float32` | 1e-4             | 1.0                |
| `litert/float16` | 1e-2             | 0.99               |
| `litert/dynamic` | 0.1              | 0.9                |

Measured on the tiny VQ test model of tests/test_export.py (4 images of 8x8): SavedModel
0 (bitwise), float32 ~1e-8, float16 ~2e-5, dynamic ~3e-4, all index agreements 1.0.
On an untrained `kzoo.models.VQVAE` (32x32, 512 codes, outputs of std ~0.8): SavedModel
and float32 ~1e-5 with index agreement 1.0; `decode` max error 4e-3 (float16) and 0.14
(dynamic); `encode` agreement 0.997 (float16) and 0.93 (dynamic). An output downstream
of a code choice (a VQ reconstruction) jumps where a code flips, so its max error under
float16/dynamic is O(1) even when `mean_abs_error` is small (0.03 for float16): judge
quantized variants by `decode` error and `encode` agreement.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
from keras import ops

from kzoo.export import _core
from kzoo.export.litert import run_litert

PARITY_SEED = 0
PARITY_BATCH_SIZE = 4
PARITY_FILENAME = "parity.json"
MAX_ABS_ERROR = {
    "saved_model": 1e-4,
    "litert/float32": 1e-4,
    "litert/float16": 1e-2,
    "litert/dynamic": 0.1,
}
MIN_INDEX_AGREEMENT = {
    "saved_model": 1.0,
    "litert/float32": 1.0,
    "litert/float16": 0.99,
    "litert/dynamic": 0.9,
}
_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_saved_model_runner.py")
_RUNNER_TIMEOUT_S = 600


@dataclasses.dataclass
class ParityReference:
    """The fixed parity batch and the Keras outputs on it.

    Attributes:
        inputs: `{signature: {input_name: np.ndarray}}`.
        outputs: `{signature: {output_name: np.ndarray}}` computed by the endpoint fns.
        batch_info: JSON-ready description of the batch (shapes, dtypes, source, seed).
    """

    inputs: dict
    outputs: dict
    batch_info: dict
    # `{variant: {signature: {"max_abs_error": x, "min_index_agreement": y}}}` from
    # the model's `export_parity_tolerances()`, overriding the per-variant limits.
    tolerances: dict = dataclasses.field(default_factory=dict)


def make_parity_batch(model, parity_batch=None, seed=PARITY_SEED, batch_size=PARITY_BATCH_SIZE):
    """Builds the deterministic parity inputs for every endpoint of `model`.

    Args:
        model: a model with `export_endpoints()`.
        parity_batch: optional `{endpoint: {input_name: array}}`; endpoints left out are
            generated.
        seed: seed of the generated inputs.
        batch_size: batch size of the generated inputs (replaces the `None` batch dim).

    Returns:
        `(inputs, batch_info)`: `{endpoint: {input_name: np.ndarray}}` and a JSON-ready
        description. Generated float inputs are uniform in [-1, 1]; integer inputs are
        uniform in [0, model.codebook_size) if the model has `codebook_size`, else [0, 2).

    Example:
    ```python
    inputs, info = make_parity_batch(model)
    inputs["encode"]["images"].shape  # (4, 32, 32, 3)
    ```
    """
    endpoints = _core.get_endpoints(model)
    return _make_batch(model, endpoints, parity_batch, seed, batch_size)


def _make_batch(model, endpoints, parity_batch, seed, batch_size):
    parity_batch = {} if parity_batch is None else parity_batch
    if not isinstance(parity_batch, dict):
        raise TypeError(
            "`parity_batch` must be a dict {endpoint: {input_name: array}}. "
            f"Received: parity_batch={type(parity_batch).__name__}"
        )
    unknown = sorted(set(parity_batch) - set(endpoints))
    if unknown:
        raise ValueError(
            f"`parity_batch` names endpoints the model does not have (it has "
            f"{list(endpoints)}). Received: parity_batch keys={sorted(parity_batch)}"
        )
    high = _int_input_high(model)
    inputs, info = {}, {}
    for index, (signature, endpoint) in enumerate(endpoints.items()):
        given = parity_batch.get(signature)
        if given is None:
            rng = np.random.default_rng([seed, index])
            arrays = {
                spec.name: _generate(rng, spec, batch_size, high) for spec in endpoint.tensor_specs
            }
            source = "generated"
        else:
            arrays = _check_given(signature, endpoint, given)
            source = "given"
        inputs[signature] = arrays
        info[signature] = {
            name: {"shape": list(a.shape), "dtype": a.dtype.name, "source": source}
            for name, a in arrays.items()
        }
    batch_info = {
        "seed": seed,
        "float_range": [-1.0, 1.0],
        "int_range": [0, high],
        "inputs": info,
    }
    return inputs, batch_info


def _int_input_high(model):
    codebook_size = getattr(model, "codebook_size", None)
    if codebook_size is None:
        return 2
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(
            f"`model.codebook_size` must be a positive int to draw parity indices. "
            f"Received: codebook_size={codebook_size!r}"
        )
    return codebook_size


def _generate(rng, spec, batch_size, high):
    dims = spec.shape.as_list()
    if dims and dims[0] is None:
        dims[0] = batch_size
    if any(d is None for d in dims):
        raise ValueError(
            f"Cannot generate parity inputs for {spec.name!r}: only the batch dim may be "
            f"None; pass `parity_batch` for this endpoint. Received: shape={spec.shape}"
        )
    dtype = spec.dtype
    if dtype.is_floating:
        return rng.uniform(-1.0, 1.0, size=dims).astype(dtype.as_numpy_dtype)
    if dtype.is_integer or dtype.is_bool:
        upper = 2 if dtype.is_bool else high
        return rng.integers(0, upper, size=dims).astype(dtype.as_numpy_dtype)
    raise ValueError(
        f"Cannot generate parity inputs of dtype {dtype.name} for {spec.name!r}; pass "
        f"`parity_batch`. Received: dtype={dtype.name}"
    )


def _check_given(signature, endpoint, given):
    names = [spec.name for spec in endpoint.tensor_specs]
    if not isinstance(given, dict) or set(given) != set(names):
        raise ValueError(
            f"`parity_batch[{signature!r}]` must map the input names {names} to arrays. "
            f"Received: {sorted(given) if isinstance(given, dict) else type(given).__name__}"
        )
    arrays = {}
    for spec in endpoint.tensor_specs:
        value = np.asarray(given[spec.name])
        if not spec.shape.is_compatible_with(value.shape):
            raise ValueError(
                f"`parity_batch[{signature!r}][{spec.name!r}]` must have shape {spec.shape}. "
                f"Received: shape={value.shape}"
            )
        expected = np.dtype(spec.dtype.as_numpy_dtype)
        if not np.can_cast(value.dtype, expected, casting="same_kind"):
            raise ValueError(
                f"`parity_batch[{signature!r}][{spec.name!r}]` must be {expected.name}. "
                f"Received: dtype={value.dtype.name}"
            )
        # Strings stay fixed-width bytes (not object arrays): the fresh-process
        # runner loads its inputs without pickling.
        arrays[spec.name] = value.astype(np.bytes_ if spec.dtype.name == "string" else expected)
    return arrays


def reference_outputs(model, parity_batch=None):
    """Computes the Keras outputs of every endpoint on the parity batch, in process.

    Args:
        model: a model with `export_endpoints()`.
        parity_batch: optional `{endpoint: {input_name: array}}` (see `make_parity_batch`).

    Returns:
        A `ParityReference`.

    Example:
    ```python
    reference = reference_outputs(model)
    parity = check_parity(reference, saved_model_dir="exported/vqvae/1")
    ```
    """
    endpoints = _core.get_endpoints(model)
    inputs, batch_info = _make_batch(model, endpoints, parity_batch, PARITY_SEED, PARITY_BATCH_SIZE)
    outputs = {}
    for signature, endpoint in endpoints.items():
        args = [ops.convert_to_tensor(inputs[signature][name]) for name in endpoint.input_names]
        result = endpoint.fn(*args)
        if not isinstance(result, dict):
            raise TypeError(
                f"Endpoint {signature!r} must return a dict of named output tensors. "
                f"Received: {type(result).__name__}"
            )
        outputs[signature] = {name: _to_numpy(value) for name, value in result.items()}
    tolerances = (
        model.export_parity_tolerances() if hasattr(model, "export_parity_tolerances") else {}
    )
    return ParityReference(
        inputs=inputs, outputs=outputs, batch_info=batch_info, tolerances=tolerances
    )


def _to_numpy(value):
    # bfloat16/float16 outputs (mixed precision) are compared in float32.
    if "float" in keras.backend.standardize_dtype(value.dtype):
        value = ops.cast(value, "float32")
    return np.asarray(ops.convert_to_numpy(value))


def saved_model_outputs(saved_model_dir, inputs):
    """Runs a SavedModel's signatures in a fresh process importing only TF and NumPy.

    Args:
        saved_model_dir: the SavedModel version directory.
        inputs: `{signature: {input_name: np.ndarray}}`.

    Returns:
        `(outputs, checks)`: `{signature: {output_name: np.ndarray}}` and what the
        subprocess checked about its imports.

    Example:
    ```python
    outputs, checks = saved_model_outputs("exported/vqvae/1", reference.inputs)
    ```
    """
    with tempfile.TemporaryDirectory(prefix="kzoo-parity-") as tmp:
        arrays, keys = {}, {}
        for signature, named in inputs.items():
            keys[signature] = {}
            for name, value in named.items():
                key = f"in_{len(arrays)}"
                arrays[key] = value
                keys[signature][name] = key
        request = {
            "saved_model_dir": os.path.abspath(saved_model_dir),
            "inputs_npz": os.path.join(tmp, "inputs.npz"),
            "outputs_npz": os.path.join(tmp, "outputs.npz"),
            "result_json": os.path.join(tmp, "result.json"),
            "signatures": keys,
        }
        np.savez(request["inputs_npz"], **arrays)
        request_path = os.path.join(tmp, "request.json")
        with open(request_path, "w") as f:
            json.dump(request, f)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        completed = subprocess.run(
            [sys.executable, "-P", _RUNNER, request_path],
            capture_output=True,
            text=True,
            env=env,
            timeout=_RUNNER_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"The SavedModel parity runner failed (exit {completed.returncode}) on "
                f"{saved_model_dir!r}:\n{completed.stderr[-4000:]}"
            )
        with open(request["result_json"]) as f:
            result = json.load(f)
        with np.load(request["outputs_npz"]) as npz:
            outputs = {
                signature: {name: npz[key] for name, key in named.items()}
                for signature, named in result["outputs"].items()
            }
    return outputs, result["checks"]


def check_parity(reference, saved_model_dir=None, litert_files=None):
    """Compares a SavedModel and/or LiteRT files with the Keras reference outputs.

    Args:
        reference: a `ParityReference` from `reference_outputs`.
        saved_model_dir: a SavedModel version directory, or None.
        litert_files: `{variant: path}` with variant in `"float32"`, `"float16"`,
            `"dynamic"`, or None.

    Returns:
        The parity dict: `{"batch", "tolerances", "results": {variant: {signature:
        {output: {...}}}}, "ok"}`, plus `"saved_model_runner"` when a SavedModel was
        checked. Each output entry holds `max_abs_error` (float outputs) or
        `index_agreement` (integer outputs), its limit and `ok`.

    Example:
    ```python
    parity = check_parity(reference_outputs(model), litert_files={"float32": "m.tflite"})
    print(format_parity_table(parity))
    ```
    """
    results = {}
    parity = {"batch": reference.batch_info}
    if saved_model_dir is not None:
        outputs, checks = saved_model_outputs(saved_model_dir, reference.inputs)
        parity["saved_model_runner"] = checks
        results["saved_model"] = _compare(
            reference.outputs, outputs, "saved_model", reference.tolerances
        )
    for variant, path in (litert_files or {}).items():
        key = f"litert/{variant}"
        if key not in MAX_ABS_ERROR:
            raise ValueError(
                "`litert_files` keys must be 'float32', 'float16' or 'dynamic'. "
                f"Received: variant={variant!r}"
            )
        outputs = {
            signature: run_litert(path, signature, named)
            for signature, named in reference.inputs.items()
        }
        results[key] = _compare(reference.outputs, outputs, key, reference.tolerances)
    parity["tolerances"] = {
        variant: {
            "max_abs_error": MAX_ABS_ERROR[variant],
            "min_index_agreement": MIN_INDEX_AGREEMENT[variant],
        }
        for variant in results
    }
    parity["results"] = results
    parity["ok"] = all(
        entry["ok"]
        for per_signature in results.values()
        for per_output in per_signature.values()
        for entry in per_output.values()
    )
    return parity


def compute_parity(model, saved_model_dir=None, litert_files=None, parity_batch=None):
    """Runs `reference_outputs` then `check_parity`; see those for the arguments.

    Returns:
        The parity dict of `check_parity`.

    Example:
    ```python
    parity = compute_parity(model, saved_model_dir="exported/vqvae/1")
    assert parity["ok"]
    ```
    """
    return check_parity(reference_outputs(model, parity_batch), saved_model_dir, litert_files)


def _compare(expected, actual, variant, tolerances=None):
    results = {}
    for signature, named in expected.items():
        results[signature] = {}
        override = (tolerances or {}).get(variant, {}).get(signature, {})
        got = actual.get(signature, {})
        for name, ref in named.items():
            entry = {"dtype": ref.dtype.name, "shape": list(ref.shape)}
            candidate = got.get(name)
            if candidate is None:
                entry.update(error="output missing from the export", ok=False)
            elif candidate.shape != ref.shape:
                entry.update(error=f"shape {list(candidate.shape)} differs", ok=False)
            elif np.issubdtype(ref.dtype, np.floating):
                diff = np.abs(ref.astype(np.float64) - candidate.astype(np.float64))
                error = float(diff.max()) if diff.size else 0.0
                mean_error = float(diff.mean()) if diff.size else 0.0
                limit = override.get("max_abs_error", MAX_ABS_ERROR[variant])
                finite = math.isfinite(error)
                entry.update(
                    max_abs_error=error if finite else None,
                    mean_abs_error=mean_error if finite else None,
                    tolerance=limit,
                    ok=finite and error <= limit,
                )
            else:
                agreement = float(np.mean(ref == candidate)) if ref.size else 1.0
                limit = override.get("min_index_agreement", MIN_INDEX_AGREEMENT[variant])
                entry.update(index_agreement=agreement, min_agreement=limit, ok=agreement >= limit)
            results[signature][name] = entry
    return results


def write_parity_json(parity, directory):
    """Writes `parity` as `<directory>/parity.json` atomically; returns the path."""
    path = os.path.join(directory, PARITY_FILENAME)
    _core.atomic_write_bytes(path, (json.dumps(parity, indent=2) + "\n").encode("utf-8"))
    return path


def format_parity_table(parity):
    """Formats one parity dict (or a list of them) as an aligned text table.

    Args:
        parity: a dict from `check_parity`, or a list/tuple of such dicts.

    Returns:
        A string with one row per (variant, signature, output).

    Example:
    ```python
    print(format_parity_table(parity))
    # variant      signature  output   metric           value  limit  mean_abs  ok
    # saved_model  encode     indices  index_agreement  1      1      -         yes
    ```
    """
    parities = [parity] if isinstance(parity, dict) else list(parity)
    header = ("variant", "signature", "output", "metric", "value", "limit", "mean_abs", "ok")
    rows = []
    for one in parities:
        for variant, per_signature in one["results"].items():
            for signature, per_output in per_signature.items():
                for output, entry in per_output.items():
                    if "index_agreement" in entry:
                        metric = "index_agreement"
                        value, limit = entry["index_agreement"], entry["min_agreement"]
                    elif "tolerance" in entry:
                        metric = "max_abs_error"
                        value, limit = entry["max_abs_error"], entry["tolerance"]
                    else:
                        metric, value, limit = "error", entry.get("error", "?"), None
                    rows.append(
                        (
                            variant,
                            signature,
                            output,
                            metric,
                            _number(value),
                            _number(limit),
                            _number(entry.get("mean_abs_error")),
                            "yes" if entry["ok"] else "NO",
                        )
                    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _number(value):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.3g}"
