"""Runs a SavedModel's signatures in a process that imports TensorFlow and NumPy only.

Started by `kzoo.export.parity` as `python -P <this file> <request.json>` (run as a
file, not with `-m`, so the `kzoo` package is never imported; `-P` keeps this file's
directory off `sys.path`). This checks what TF Serving sees: the SavedModel alone,
without the Python code that built it. `import tensorflow` loads some `keras.src`
modules on its own, so the check asserts only that no `kzoo` module was imported, and
reports the rest.

Request JSON: `{"saved_model_dir", "inputs_npz", "outputs_npz", "result_json",
"runs": {run: {"signature": name, "inputs": {input_name: npz_key}}}}` (a signature may
run more than once, on other inputs). Result JSON:
`{"outputs": {run: {output_name: npz_key}}, "checks": {...}}`.
"""

import json
import sys

import numpy as np
import tensorflow as tf


def _kzoo_modules():
    modules = sorted(m for m in sys.modules if m == "kzoo" or m.startswith("kzoo."))
    if modules:
        raise SystemExit(f"SavedModel runner imported kzoo modules: {modules}")
    return modules


def main(argv):
    _kzoo_modules()  # fail fast; checked again after the SavedModel ran
    with open(argv[1]) as f:
        request = json.load(f)
    loaded = tf.saved_model.load(request["saved_model_dir"])
    outputs, manifest = {}, {}
    with np.load(request["inputs_npz"]) as inputs:
        for run, spec in request["runs"].items():
            fn = loaded.signatures[spec["signature"]]
            feed = {name: tf.constant(inputs[key]) for name, key in spec["inputs"].items()}
            manifest[run] = {}
            for name, tensor in fn(**feed).items():
                key = f"out_{len(outputs)}"
                value = tensor.numpy()
                if value.dtype == object:  # tf.string: bytes, loadable without pickling
                    value = value.astype(np.bytes_)
                outputs[key] = value
                manifest[run][name] = key
    kzoo_modules = _kzoo_modules()
    np.savez(request["outputs_npz"], **outputs)
    checks = {
        "fresh_process": True,
        "imports": ["json", "sys", "numpy", "tensorflow"],
        "kzoo_modules_loaded": kzoo_modules,
        # Loaded by `import tensorflow` itself, not by this runner; reported for the record.
        "keras_modules_loaded_by_tensorflow": sum(
            m == "keras" or m.startswith("keras.") for m in sys.modules
        ),
        "tensorflow_version": tf.__version__,
    }
    with open(request["result_json"], "w") as f:
        json.dump({"outputs": manifest, "checks": checks}, f)


if __name__ == "__main__":
    main(sys.argv)
