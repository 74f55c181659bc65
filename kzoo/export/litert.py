"""LiteRT (TFLite) conversion of kzoo SavedModels and a signature-runner helper.

Conversion keeps every signature and uses LiteRT builtin ops only: Flex
(SELECT_TF_OPS) kernels are not in the stock `ai_edge_litert` interpreter, so a model
that needs one fails here with the op named instead of at inference time.
`keras.ops.argmax`/`argmin` lower to such ops; `ops.top_k(-x, k=1)` does not.

Quantization variants (https://ai.google.dev/edge/litert/models/post_training_quantization):
`"none"` (float32), `"float16"` (float16 weights, float32 compute) and `"dynamic"`
(int8 weights, dynamic-range activations).
"""

import os
import re
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from kzoo import _startup
from kzoo.export import _core

QUANTIZE_MODES = ("none", "float16", "dynamic")
# File stem (and parity variant name) of each quantize mode.
VARIANT_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic"}


class LiteRTConversionError(RuntimeError):
    """A model needs TensorFlow ops that are not LiteRT builtins (Flex / SELECT_TF_OPS).

    Attributes:
        ops: names of the TensorFlow ops the converter could not lower.
    """

    def __init__(self, message, ops=()):
        super().__init__(message)
        self.ops = tuple(ops)


def check_quantize(quantize):
    """Returns `quantize` if it is one of `QUANTIZE_MODES`, else raises ValueError."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {', '.join(repr(q) for q in QUANTIZE_MODES)}. "
            f"Received: quantize={quantize!r}"
        )
    return quantize


def export_litert(model_or_saved_model_dir, out_path, quantize="none", signature_keys=None):
    """Converts a kzoo model or a SavedModel directory to a `.tflite` file.

    Args:
        model_or_saved_model_dir: a model with `export_endpoints()` (exported to a temp
            SavedModel first) or the path of a SavedModel directory.
        out_path: the `.tflite` file to write; written to a temp name and renamed.
        quantize: `"none"` (float32), `"float16"` or `"dynamic"` (int8 weights).
        signature_keys: signatures to keep; default all of them.

    Returns:
        `out_path` as a string.

    Raises:
        LiteRTConversionError: the model needs non-builtin (Flex) ops; `.ops` names them.
        ValueError: unknown `quantize` or signature key, or `out_path` is a directory.
        TypeError: a model without `export_endpoints`.

    Example:
    ```python
    path = export_litert(model, "exported/vqvae_litert/1/float16.tflite", quantize="float16")
    run_litert(path, "encode", {"images": images})["indices"]
    ```
    """
    check_quantize(quantize)
    out_path = os.fspath(out_path)
    if os.path.isdir(out_path):
        raise ValueError(f"`out_path` must be a file path. Received: out_path={out_path!r}")
    if isinstance(model_or_saved_model_dir, (str, os.PathLike)):
        data = _convert(os.fspath(model_or_saved_model_dir), quantize, signature_keys)
    else:
        endpoints = _core.get_endpoints(model_or_saved_model_dir)
        with tempfile.TemporaryDirectory(prefix="kzoo-export-") as tmp:
            _core.write_saved_model(model_or_saved_model_dir, endpoints, tmp)
            data = _convert(tmp, quantize, signature_keys)
    _core.atomic_write_bytes(out_path, data)
    return out_path


def _convert(saved_model_dir, quantize, signature_keys):
    available = _core.saved_model_signature_names(saved_model_dir)
    if signature_keys is None:
        signature_keys = available
    signature_keys = list(signature_keys)
    unknown = [k for k in signature_keys if k not in available]
    if unknown or not signature_keys:
        raise ValueError(
            f"`signature_keys` must be a non-empty subset of {available}. "
            f"Received: signature_keys={signature_keys!r}"
        )
    reserved = [k for k in signature_keys if k in _core.RESERVED_ENDPOINT_NAMES]
    if reserved:
        raise ValueError(
            "A signature named 'serve' makes the TFLite converter drop the others. "
            f"Received: signature_keys={signature_keys!r}"
        )
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=signature_keys
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as error:
        ops = _non_builtin_ops(str(error))
        if not ops:
            raise
        raise LiteRTConversionError(
            f"LiteRT conversion needs TensorFlow ops that are not LiteRT builtins: "
            f"{', '.join(ops)}. kzoo converts with builtins only (no Flex / SELECT_TF_OPS, "
            "which the stock LiteRT interpreter cannot run); rewrite the endpoint without "
            "them (e.g. keras.ops.argmax/argmin -> ops.top_k(-x, k=1)).",
            ops=ops,
        ) from error


def _non_builtin_ops(message):
    ops = []
    for listed in re.findall(r"TF Select ops: ([^\n]+)", message):
        ops.extend(op.strip() for op in listed.split(","))
    ops.extend(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message))
    return sorted(set(op for op in ops if op))


def litert_signatures(path):
    """Lists a `.tflite` file's signatures with their inputs and outputs.

    Args:
        path: a `.tflite` file.

    Returns:
        `{signature: {"inputs": {name: {"shape": [...], "dtype": str}}, "outputs": {...}}}`,
        where a `-1` in a shape is a dynamic dimension.

    Example:
    ```python
    litert_signatures("exported/vqvae_litert/1/float32.tflite")["encode"]["inputs"]
    # {'images': {'shape': [-1, 32, 32, 3], 'dtype': 'float32'}}
    ```
    """
    interpreter = Interpreter(model_path=os.fspath(path))
    result = {}
    for signature in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(signature)
        result[signature] = {
            "inputs": _describe(runner.get_input_details()),
            "outputs": _describe(runner.get_output_details()),
        }
    return result


def _describe(details):
    return {
        name: {
            "shape": [int(d) for d in detail["shape_signature"]],
            "dtype": np.dtype(detail["dtype"]).name,
        }
        for name, detail in details.items()
    }


def run_litert(path, signature, inputs):
    """Runs one signature of a `.tflite` file on named NumPy inputs.

    The batch size may differ from the one used at conversion: the signature runner of
    `ai_edge_litert` resizes inputs whose shape differs (within the dynamic dims of the
    signature) before it runs.

    Args:
        path: a `.tflite` file.
        signature: the signature name, e.g. `"serving_default"`.
        inputs: `{input_name: array}`; arrays are cast to the input dtype when the cast
            is safe within the same kind (e.g. float64 -> float32).

    Returns:
        `{output_name: np.ndarray}`.

    Example:
    ```python
    run_litert("float32.tflite", "decode", {"indices": codes})["images"]
    ```
    """
    interpreter = Interpreter(model_path=os.fspath(path))
    available = list(interpreter.get_signature_list())
    if signature not in available:
        raise ValueError(
            f"`signature` must be one of {available}. Received: signature={signature!r}"
        )
    runner = interpreter.get_signature_runner(signature)
    details = runner.get_input_details()
    if set(inputs) != set(details):
        raise ValueError(
            f"Signature {signature!r} takes inputs {sorted(details)}. "
            f"Received: inputs with names {sorted(inputs)}"
        )
    feed = {}
    for name, value in inputs.items():
        detail = details[name]
        expected = np.dtype(detail["dtype"])
        value = np.asarray(value)
        if value.dtype != expected:
            if not np.can_cast(value.dtype, expected, casting="same_kind"):
                raise ValueError(
                    f"Input {name!r} of signature {signature!r} must be {expected.name}. "
                    f"Received: dtype={value.dtype.name}"
                )
            value = value.astype(expected)
        shape_signature = [int(d) for d in detail["shape_signature"]]
        if len(shape_signature) != value.ndim or any(
            d != -1 and d != s for d, s in zip(shape_signature, value.shape, strict=True)
        ):
            raise ValueError(
                f"Input {name!r} of signature {signature!r} must have shape {shape_signature} "
                f"(-1 = any). Received: shape={list(value.shape)}"
            )
        feed[name] = value
    with _startup.quiet_stderr(_startup.LITERT_NOISE):
        outputs = runner(**feed)
    return {name: np.array(value) for name, value in outputs.items()}


SIGNATURES_FILE = "signatures.json"
# Value ranges of kzoo's conventional input and output names (images are in [-1, 1]).
_NAMED_RANGES = {
    "images": "[-1, 1]",
    "reconstruction": "[-1, 1]",
    "noise": "standard normal",
    "x_t": "noised sample (standard normal scale)",
}


def describe_litert(path, endpoints, model):
    """What `signatures.json` holds for the `.tflite` file at `path`.

    Args:
        path: a converted `.tflite` file (its dtypes and shapes are read from it).
        endpoints: `{name: Endpoint}` the file was converted from (for the limits).
        model: the exported model (`codebook_size`, a tokenizer, for value ranges).

    Returns:
        `{signature: {"inputs": {name: {"dtype", "shape", "range"}}, "outputs": {...}}}`;
        `range` is text such as `"float32 in [-1, 1]"`, or null where kzoo states none.
    """
    described = {}
    for signature, io in litert_signatures(path).items():
        endpoint = endpoints.get(signature)
        limits = endpoint.limits if endpoint is not None else {}
        described[signature] = {
            kind: {
                name: {**spec, "range": _value_range(name, spec["dtype"], limits, model)}
                for name, spec in io[kind].items()
            }
            for kind in ("inputs", "outputs")
        }
    return described


def _value_range(name, dtype, limits, model):
    if name in limits:
        low, high = limits[name]
        return f"{dtype} in [{low}, {high}]"
    if name in _NAMED_RANGES:
        text = _NAMED_RANGES[name]
        return f"{dtype} in {text}" if text.startswith("[") else f"{dtype}, {text}"
    codebook_size = getattr(model, "codebook_size", None)
    if name in ("indices", "codes") and isinstance(codebook_size, int):
        return f"{dtype} in [0, {codebook_size - 1}]"
    if name == "token_ids":
        from kzoo import presets

        tokenizers = presets.find_tokenizers(model)
        if tokenizers:
            size = len(tokenizers[0].get_vocabulary())
            return f"{dtype} in [0, {size - 1}] (ids of vocabulary.txt)"
    return None
