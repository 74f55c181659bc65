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
| `litert/int8`    | 0.5              | 0.8 (raw)          |

Full-integer (`litert/int8`) files compute in int8 activations, whose rounding moves
the searched vectors by far more than a near tie: at its float limit nearly every
differing code would count as one (tie-aware agreement 1.0 on the tiny VQ-VAE of
tests/test_export.py, raw 0.885). Its codes are therefore judged by their plain
agreement, and an output decoded from them is judged against Keras's decode of the
export's own codes (`tie_resolved_max_abs_error`) whichever codes differ; the
tie-aware agreement is still reported.

Discrete choices (nearest codes) need more than equality: a trained codebook has near
ties, and an export whose floats differ from Keras's by far less than its limit (another
summation order in a fresh process's optimised graph or another CPU's kernels; float16
weights) may pick the other code of a tie, which moves a decoded image by O(0.01-1). A
model declares its choices with `export_parity_choices()` (see `reference_outputs`):
- a code output (`{"search": fn}`, `fn(*inputs) -> (vectors, codebook)`) is judged by
  `tie_aware_agreement`: a differing code counts as agreeing when an export whose
  searched vectors and codes are within the variant's `max_abs_error` of Keras's could
  have picked it (`_near_ties` states the bound; `raw` = plain `index_agreement`);
- an output decoded from such codes (`{"codes": (endpoint, output), "decode":
  (endpoint, output)}`) is, where the export's codes (its `codes` endpoint run on the
  same inputs) differ from Keras's by near ties only, also compared with Keras's decode
  of the export's codes, under the same strict limit (`tie_resolved_max_abs_error`).
A wrong code, or a decoded output that matches neither, still fails. On the trained
`vqvae_shapes` (`make demo`, 8 test images, 2,048 codes) float16 LiteRT picks another
code at 105 positions (raw agreement 0.949), all near ties; its reconstruction is 0.017
from Keras's and 1.4e-3 from Keras's decode of its codes (as `decode`: 1.4e-3). The
rule is a worst-case bound: it would accept another code at 12% of those positions for
a 1e-4 tolerance and at 78% for 1e-2. A float32 export whose encoder's last kernel is
scaled by 1 + 0.01 N(0, 1) fails (tie-aware agreement 0.996), so does one with permuted
codes; at 1 + 0.001 N(0, 1) its 6 changed codes are near ties and it passes.

Measured on the tiny VQ test model of tests/test_export.py (4 images of 8x8): SavedModel
0 (bitwise), float32 ~1e-8, float16 ~2e-5, dynamic ~3e-4, all index agreements 1.0.
On an untrained `kzoo.models.VQVAE` (32x32, 512 codes, outputs of std ~0.8): SavedModel
and float32 ~1e-5 with index agreement 1.0; `decode` max error 4e-3 (float16) and 0.14
(dynamic); `encode` agreement 0.997 (float16) and 0.93 (dynamic).
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
    "litert/int8": 0.5,
}
MIN_INDEX_AGREEMENT = {
    "saved_model": 1.0,
    "litert/float32": 1.0,
    "litert/float16": 0.99,
    "litert/dynamic": 0.9,
    "litert/int8": 0.8,
}
# Variants whose code outputs are judged by their plain index agreement: int8
# activations move the searched vectors by up to the variant's (large) float limit, and
# at that size nearly every differing code would count as a near tie.
RAW_AGREEMENT_VARIANTS = ("litert/int8",)
# Unit roundoff of float32, the precision of the searches being compared.
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
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
    # `{signature: {output: {"search": {...}} or {"decoded": {...}}}}`: what the
    # near-tie judgement needs, from the model's `export_parity_choices()`.
    choices: dict = dataclasses.field(default_factory=dict)
    # `{run: (signature, {input_name: array})}`: extra runs of each export, e.g. its
    # `encode` on `serving_default`'s inputs, to learn the codes it decoded.
    probes: dict = dataclasses.field(default_factory=dict)


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

    A model may declare the discrete choices of its endpoints with
    `export_parity_choices() -> {endpoint: {output_name: spec}}`, spec one of
    - `{"search": fn}`: the (integer) output is a nearest-code search; `fn` takes the
      endpoint's inputs and returns `(vectors (*output_shape, D), codebook (K, D))`,
      what the search compares (e.g. `VectorQuantizer.search_vectors`);
    - `{"codes": (endpoint, output), "decode": (endpoint, output)}`: the (float) output
      decodes the codes that `codes` (an endpoint with the same inputs and a "search"
      spec) picks, as the one-input endpoint `decode` does.
    Their near ties are then judged as the module docstring says.

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
        outputs[signature] = run_endpoint(endpoint, inputs[signature])
    tolerances = (
        model.export_parity_tolerances() if hasattr(model, "export_parity_tolerances") else {}
    )
    choices, probes = _choice_references(model, endpoints, inputs, outputs)
    return ParityReference(
        inputs=inputs,
        outputs=outputs,
        batch_info=batch_info,
        tolerances=tolerances,
        choices=choices,
        probes=probes,
    )


def run_endpoint(endpoint, named):
    """`{output: np.ndarray}` of an endpoint's function called in process on `named` arrays."""
    result = endpoint.fn(*_endpoint_args(endpoint, named))
    if not isinstance(result, dict):
        raise TypeError(
            f"Endpoint {endpoint.name!r} must return a dict of named output tensors. "
            f"Received: {type(result).__name__}"
        )
    return {name: _to_numpy(value) for name, value in result.items()}


def _endpoint_args(endpoint, named):
    return [ops.convert_to_tensor(named[name]) for name in endpoint.input_names]


def _choice_references(model, endpoints, inputs, outputs):
    """Validates `model.export_parity_choices()`; computes what judging its choices needs.

    Returns:
        `(choices, probes)` for `ParityReference`.
    """
    declare = getattr(model, "export_parity_choices", None)
    if not callable(declare):
        return {}, {}
    declared = declare()
    where = f"{type(model).__name__}.export_parity_choices()"
    if not isinstance(declared, dict):
        raise TypeError(f"{where} must return a dict. Received: {type(declared).__name__}")
    searches, decodes = {}, {}
    for signature, per_output in declared.items():
        if signature not in outputs or not isinstance(per_output, dict):
            raise ValueError(
                f"{where} must map endpoint names ({list(outputs)}) to dicts "
                f"{{output_name: spec}}. Received: {signature!r}: {per_output!r}"
            )
        for name, spec in per_output.items():
            if name not in outputs[signature]:
                raise ValueError(
                    f"{where}: endpoint {signature!r} has no output {name!r} (it has "
                    f"{list(outputs[signature])}). Received: {name!r}"
                )
            if isinstance(spec, dict) and set(spec) == {"search"} and callable(spec["search"]):
                if np.issubdtype(outputs[signature][name].dtype, np.floating):
                    raise ValueError(
                        f"{where}: a 'search' spec judges integer code outputs; "
                        f"{signature}/{name} is {outputs[signature][name].dtype.name}."
                    )
                searches[(signature, name)] = spec["search"]
            elif isinstance(spec, dict) and set(spec) == {"codes", "decode"}:
                decodes[(signature, name)] = (tuple(spec["codes"]), tuple(spec["decode"]))
            else:
                raise ValueError(
                    f"{where}: each spec must be {{'search': fn}} or {{'codes': (endpoint, "
                    f"output), 'decode': (endpoint, output)}}. Received: {signature}/{name}: "
                    f"{spec!r}"
                )

    choices, probes = {}, {}
    for (signature, name), search in searches.items():
        vectors, codebook = search(*_endpoint_args(endpoints[signature], inputs[signature]))
        choices.setdefault(signature, {})[name] = {
            "search": {"vectors": _to_numpy(vectors), "codebook": _to_numpy(codebook)}
        }
    for (signature, name), (codes, decode) in decodes.items():
        if codes not in searches:
            raise ValueError(
                f"{where}: {signature}/{name} decodes the codes of {codes[0]}/{codes[1]}, "
                f"which has no 'search' spec. Received: codes={codes!r}"
            )
        code_endpoint = endpoints[codes[0]]
        if sorted(code_endpoint.input_names) != sorted(inputs[signature]):
            raise ValueError(
                f"{where}: {signature}/{name} takes its codes from {codes[0]!r}, which must "
                f"have the same inputs. Received: {code_endpoint.input_names} vs "
                f"{sorted(inputs[signature])}"
            )
        if decode[0] not in endpoints or len(endpoints[decode[0]].tensor_specs) != 1:
            raise ValueError(
                f"{where}: {signature}/{name} must name a one-input decode endpoint. "
                f"Received: decode={decode!r}"
            )
        named = inputs[signature]
        probe = f"{signature}/{codes[0]}"  # never a signature name: those have no "/"
        probes[probe] = (codes[0], named)
        vectors, codebook = searches[codes](*_endpoint_args(code_endpoint, named))
        choices.setdefault(signature, {})[name] = {
            "decoded": {
                "probe": probe,
                "output": codes[1],
                "codes": run_endpoint(code_endpoint, named)[codes[1]],
                "vectors": _to_numpy(vectors),
                "codebook": _to_numpy(codebook),
                "decode": _decoder(endpoints[decode[0]], decode[1]),
            }
        }
    return choices, probes


def _decoder(endpoint, output):
    (spec,) = endpoint.tensor_specs
    return lambda codes: run_endpoint(endpoint, {spec.name: codes})[output]


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
    runs = {signature: (signature, named) for signature, named in inputs.items()}
    return _saved_model_runs(saved_model_dir, runs)


def _saved_model_runs(saved_model_dir, runs):
    """`saved_model_outputs` for `{run: (signature, {input_name: array})}`, keyed by run."""
    with tempfile.TemporaryDirectory(prefix="kzoo-parity-") as tmp:
        arrays, keys = {}, {}
        for run, (signature, named) in runs.items():
            keys[run] = {"signature": signature, "inputs": {}}
            for name, value in named.items():
                key = f"in_{len(arrays)}"
                arrays[key] = value
                keys[run]["inputs"][name] = key
        request = {
            "saved_model_dir": os.path.abspath(saved_model_dir),
            "inputs_npz": os.path.join(tmp, "inputs.npz"),
            "outputs_npz": os.path.join(tmp, "outputs.npz"),
            "result_json": os.path.join(tmp, "result.json"),
            "runs": keys,
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
                run: {name: npz[key] for name, key in named.items()}
                for run, named in result["outputs"].items()
            }
    return outputs, result["checks"]


def check_parity(reference, saved_model_dir=None, litert_files=None):
    """Compares a SavedModel and/or LiteRT files with the Keras reference outputs.

    Args:
        reference: a `ParityReference` from `reference_outputs`.
        saved_model_dir: a SavedModel version directory, or None.
        litert_files: `{variant: path}` with variant in `"float32"`, `"float16"`,
            `"dynamic"`, `"int8"`, or None. Quantized inputs and outputs of an int8
            file (`io="int8"`) are quantized and dequantized with their own scales.

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
    runs = {signature: (signature, named) for signature, named in reference.inputs.items()}
    runs.update(reference.probes)
    if saved_model_dir is not None:
        outputs, checks = _saved_model_runs(saved_model_dir, runs)
        parity["saved_model_runner"] = checks
        results["saved_model"] = _compare(reference, outputs, "saved_model")
    for variant, path in (litert_files or {}).items():
        key = f"litert/{variant}"
        if key not in MAX_ABS_ERROR:
            raise ValueError(
                "`litert_files` keys must be 'float32', 'float16', 'dynamic' or 'int8'. "
                f"Received: variant={variant!r}"
            )
        outputs = {
            run: run_litert(path, signature, named, dequantize=True)
            for run, (signature, named) in runs.items()
        }
        results[key] = _compare(reference, outputs, key)
    parity["tolerances"] = {
        variant: {
            "max_abs_error": MAX_ABS_ERROR[variant],
            "min_index_agreement": MIN_INDEX_AGREEMENT[variant],
        }
        for variant in results
    }
    if reference.choices:
        for variant, limits in parity["tolerances"].items():
            # What `_near_ties` lets the export's searched vectors and codes differ by.
            limits["near_tie_float_error"] = MAX_ABS_ERROR[variant]
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


def _compare(reference, actual, variant):
    results = {}
    for signature, named in reference.outputs.items():
        results[signature] = {}
        override = reference.tolerances.get(variant, {}).get(signature, {})
        choices = reference.choices.get(signature, {})
        got = actual.get(signature, {})
        for name, ref in named.items():
            entry = {"dtype": ref.dtype.name, "shape": list(ref.shape)}
            candidate = got.get(name)
            if candidate is None:
                entry.update(error="output missing from the export", ok=False)
            elif candidate.shape != ref.shape:
                entry.update(error=f"shape {list(candidate.shape)} differs", ok=False)
            elif np.issubdtype(ref.dtype, np.floating):
                limit = override.get("max_abs_error", MAX_ABS_ERROR[variant])
                entry.update(_float_entry(ref, candidate, limit))
                if "decoded" in choices.get(name, {}):
                    entry.update(
                        _decoded_entry(choices[name]["decoded"], candidate, actual, variant, limit)
                    )
            else:
                limit = override.get("min_index_agreement", MIN_INDEX_AGREEMENT[variant])
                agreement = float(np.mean(ref == candidate)) if ref.size else 1.0
                entry.update(index_agreement=agreement, min_agreement=limit, ok=agreement >= limit)
                if "search" in choices.get(name, {}):
                    search = choices[name]["search"]
                    ties = _near_ties(
                        search["vectors"],
                        search["codebook"],
                        ref,
                        candidate,
                        MAX_ABS_ERROR[variant],
                    )
                    judged = float(np.mean((ref == candidate) | ties)) if ref.size else 1.0
                    entry.update(
                        differing=int(np.sum(ref != candidate)),
                        near_ties=int(np.sum(ties)),
                        tie_aware_agreement=judged,
                    )
                    if variant in RAW_AGREEMENT_VARIANTS:
                        entry["judged_by"] = "index_agreement"
                    else:
                        entry["ok"] = judged >= limit
            results[signature][name] = entry
    return results


def _float_entry(ref, candidate, limit):
    diff = np.abs(ref.astype(np.float64) - candidate.astype(np.float64))
    error = float(diff.max()) if diff.size else 0.0
    mean_error = float(diff.mean()) if diff.size else 0.0
    finite = math.isfinite(error)
    return {
        "max_abs_error": error if finite else None,
        "mean_abs_error": mean_error if finite else None,
        "tolerance": limit,
        "ok": finite and error <= limit,
    }


def _decoded_entry(decoded, candidate, actual, variant, limit):
    """Judges an output decoded from codes by Keras's decoding of the export's own codes.

    Where the export's codes differ from Keras's only by near ties, its output is
    compared (strictly) with Keras's decode of the export's codes as well, and passes
    if it matches either.
    """
    codes = actual.get(decoded["probe"], {}).get(decoded["output"])
    if codes is None or codes.shape != decoded["codes"].shape:
        return {"codes_error": "the export's codes could not be read"}
    ties = _near_ties(
        decoded["vectors"], decoded["codebook"], decoded["codes"], codes, MAX_ABS_ERROR[variant]
    )
    differing = codes != decoded["codes"]
    entry = {"codes_differing": int(np.sum(differing)), "codes_near_ties": int(np.sum(ties))}
    # A variant judged by raw agreement has had its codes judged already: its decoder
    # is judged on whatever codes it picked.
    judged_codes = variant in RAW_AGREEMENT_VARIANTS
    if not differing.any() or not (judged_codes or np.all(ties | ~differing)):
        return entry  # same codes (nothing to resolve), or a wrong code (judged as is)
    resolved = _float_entry(decoded["decode"](codes), candidate, limit)
    entry["tie_resolved_max_abs_error"] = resolved["max_abs_error"]
    if resolved["ok"]:
        entry["ok"] = True
    return entry


def _near_ties(vectors, codebook, reference, candidate, float_error):
    """Where the export's code differs from Keras's by a near tie an honest export can make.

    An export within its float tolerance searched vectors `x + d` among codes `c + h`,
    `|d_i|, |h_i| <= float_error` (float16 LiteRT stores the codebook in float16), and
    evaluated squared distances in float32, in any order. With `z = x - c`, each of its
    distances is `|z|^2 + 2 z.(d - h) + |d - h|^2`, so the gap
    `g = |x - c_e|^2 - |x - c_r|^2` between its code `e` and Keras's `r` moves by at most
    `2 eps ||c_r - c_e||_1 + 2 eps (||z_e||_1 + ||z_r||_1) + 4 D eps^2` (Hoelder, with
    `eps = float_error` and `D` dims). Float32 rounding moves each distance by at most
    `gamma_n sum_i (|x_i| + |c_i| + 2 eps)^2`, n = 3 D + 2 terms of
    `sum x^2 - 2 x c + c^2`, `gamma_n = n u / (1 - n u)`, u = 2^-24 (Higham, Accuracy and
    Stability of Numerical Algorithms, Eq. 3.5). The export can pick `e` only if `g` is
    within the sum of these; a larger gap is a wrong choice. `g` is computed in float64
    from Keras's vectors and codes.

    Args:
        vectors: Keras's searched vectors, `(*index_shape, D)`.
        codebook: `(K, D)` codes.
        reference: Keras's codes, int `index_shape`.
        candidate: the export's codes, int `index_shape`.
        float_error: the largest difference of any vector or code component the export
            may have (the variant's float tolerance).

    Returns:
        bool array of `index_shape`: True where the codes differ by a near tie.
    """
    codebook = np.asarray(codebook, np.float64)
    num_codes, dim = codebook.shape
    x = np.asarray(vectors, np.float64).reshape(-1, dim)
    r = np.asarray(reference).astype(np.int64).reshape(-1)
    e = np.asarray(candidate).astype(np.int64).reshape(-1)
    differs = (e != r) & (e >= 0) & (e < num_codes)  # an out-of-range code is never a tie
    e = np.where(differs, e, r)
    c_r, c_e = codebook[r], codebook[e]
    gap = np.sum((x - c_e) ** 2, axis=-1) - np.sum((x - c_r) ** 2, axis=-1)
    eps = float_error
    moved = 2.0 * eps * np.sum(np.abs(c_r - c_e), axis=-1)
    moved += 2.0 * eps * (np.sum(np.abs(x - c_e), axis=-1) + np.sum(np.abs(x - c_r), axis=-1))
    moved += 4.0 * dim * eps**2
    terms = 3 * dim + 2
    gamma = terms * _FLOAT32_UNIT_ROUNDOFF / (1.0 - terms * _FLOAT32_UNIT_ROUNDOFF)

    def rounding(codes):
        return gamma * np.sum((np.abs(x) + np.abs(codes) + 2.0 * eps) ** 2, axis=-1)

    allowed = moved + rounding(c_e) + rounding(c_r)
    return (differs & (gap <= allowed)).reshape(np.shape(reference))


def write_parity_json(parity, directory):
    """Writes `parity` as `<directory>/parity.json` atomically; returns the path."""
    path = os.path.join(directory, PARITY_FILENAME)
    _core.atomic_write_bytes(path, (json.dumps(parity, indent=2) + "\n").encode("utf-8"))
    return path


def format_parity_table(parity):
    """Formats one parity dict (or a list of them) as an aligned text table.

    `value` is what `ok` judges: the tie-aware agreement of a code output that has
    one, and for an output decoded from codes the smaller error against Keras's
    output or against Keras's decoding of the export's near-tied codes. `raw` is then
    the plain agreement or error against Keras's output.

    Args:
        parity: a dict from `check_parity`, or a list/tuple of such dicts.

    Returns:
        A string with one row per (variant, signature, output).

    Example:
    ```python
    print(format_parity_table(parity))
    # variant      signature  output   metric           value  limit  raw  mean_abs  ok
    # saved_model  encode     indices  index_agreement  1      1      -    -         yes
    ```
    """
    parities = [parity] if isinstance(parity, dict) else list(parity)
    header = ("variant", "signature", "output", "metric", "value", "limit", "raw", "mean_abs", "ok")
    rows = []
    for one in parities:
        for variant, per_signature in one["results"].items():
            for signature, per_output in per_signature.items():
                for output, entry in per_output.items():
                    raw = None
                    if "index_agreement" in entry:
                        metric = "index_agreement"
                        value, limit = entry["index_agreement"], entry["min_agreement"]
                        if "tie_aware_agreement" in entry and "judged_by" not in entry:
                            metric, raw = "tie_aware_agreement", value
                            value = entry["tie_aware_agreement"]
                    elif "tolerance" in entry:
                        metric = "max_abs_error"
                        value, limit = entry["max_abs_error"], entry["tolerance"]
                        resolved = entry.get("tie_resolved_max_abs_error")
                        if resolved is not None and value is not None and resolved < value:
                            metric, raw, value = "tie_resolved_error", value, resolved
                    else:
                        metric, value, limit = "error", entry.get("error", "?"), None
                    rows.append(
                        (
                            variant,
                            signature,
                            output,
                            metric,
                            _number(value, limit),
                            _number(limit),
                            _number(raw, limit),
                            _number(entry.get("mean_abs_error")),
                            "yes" if entry["ok"] else "NO",
                        )
                    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _number(value, limit=None):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = f"{value:.3g}"
    if isinstance(limit, float | int) and value != limit and text == f"{limit:.3g}":
        # A failing 0.9995 must not read as its limit 1.
        text = f"{value:.6g}"
    return text
