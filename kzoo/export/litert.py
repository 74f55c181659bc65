"""LiteRT (TFLite) conversion of kzoo SavedModels and a signature-runner helper.

Conversion keeps every signature and uses LiteRT builtin ops only: Flex
(SELECT_TF_OPS) kernels are not in the stock `ai_edge_litert` interpreter, so a model
that needs one fails here with the op named instead of at inference time.
`keras.ops.argmax`/`argmin` lower to such ops; `ops.top_k(-x, k=1)` does not.

Quantization variants (https://ai.google.dev/edge/litert/models/post_training_quantization):
`"none"` (float32), `"float16"` (float16 weights, float32 compute), `"dynamic"`
(int8 weights, dynamic-range activations) and `"int8"` (full-integer: int8 weights
and activations whose ranges are calibrated on representative data,
`kzoo.export.calibration`). An int8 file keeps float32 inputs and outputs unless
`io="int8"` (`export_litert`); an op without an int8 LiteRT kernel stays float
(`litert_op_types` lists which).
"""

import os
import re
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from kzoo import _startup
from kzoo.export import _core, calibration
from kzoo.layers import normalization
from kzoo.layers.quantizers import NEAREST_CODE_SCOPE

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
# File stem (and parity variant name) of each quantize mode.
VARIANT_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}
# Input/output types of an int8 file: "float" (float32, quantized inside the file: what
# an app feeding float images expects) or "int8" (the app quantizes with each tensor's
# scale and zero point). Integer inputs and outputs (code indices) keep their dtype.
IO_TYPES = ("float", "int8")
# Name scopes whose ops an int8 file keeps in float32: the nearest-code search
# (`kzoo.layers.quantizers`) and the GroupNorm statistics (`kzoo.layers.normalization`).
# On the trained 32x32 VQGAN of vqgan_shapes (64 test images) plain int8 kept 22% of
# Keras's codes and decoded 2.1 (max) from Keras; with these in float, 63% and 0.80.
# Keeping attention or whole GroupNorm layers float as well changed neither.
INT8_FLOAT_SCOPES = (NEAREST_CODE_SCOPE, normalization.STATISTICS_SCOPE)


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


def check_int8_options(modes, io, representative_data):
    """Checks `io` and `representative_data` against the quantize `modes` (a tuple).

    Raises:
        ValueError: unknown `io`, or `io="int8"` / `representative_data` without
            `"int8"` among `modes`.
    """
    if io not in IO_TYPES:
        raise ValueError(f"`io` must be one of {IO_TYPES}. Received: io={io!r}")
    if "int8" in modes:
        return
    if io != "float":
        raise ValueError(
            "`io='int8'` applies to full-integer files only: add quantize='int8'. "
            f"Received: quantize={modes if len(modes) > 1 else modes[0]!r}, io={io!r}"
        )
    if representative_data is not None:
        raise ValueError(
            "`representative_data` calibrates full-integer files only: add quantize='int8'. "
            f"Received: quantize={modes if len(modes) > 1 else modes[0]!r}"
        )


def default_representative_data(model, representative_data, quantize="int8"):
    """`representative_data`, or one batch of the model's own `export_parity_batch()`.

    Raises:
        ValueError: neither is there.
    """
    if representative_data is not None:
        return representative_data
    make_batch = getattr(model, "export_parity_batch", None)
    if callable(make_batch):
        return [make_batch()]
    raise ValueError(
        "Full-integer LiteRT calibrates each tensor's int8 range on representative "
        "inputs: pass `representative_data` (batches of {signature: {input_name: array}}; "
        "`kzoo export --quantize int8` draws them from the recipe's training pipeline). "
        f"Received: quantize={quantize!r}, representative_data=None"
    )


def export_litert(
    model_or_saved_model_dir,
    out_path,
    quantize="none",
    signature_keys=None,
    representative_data=None,
    io="float",
):
    """Converts a kzoo model or a SavedModel directory to a `.tflite` file.

    Args:
        model_or_saved_model_dir: a model with `export_endpoints()` (exported to a temp
            SavedModel first) or the path of a SavedModel directory.
        out_path: the `.tflite` file to write; written to a temp name and renamed.
        quantize: `"none"` (float32), `"float16"`, `"dynamic"` (int8 weights) or
            `"int8"` (full-integer, calibrated on `representative_data`).
        signature_keys: signatures to keep; default all of them.
        representative_data: for `"int8"`: an iterable of batches (or a callable
            returning one) in a form of `kzoo.export.calibration`, e.g.
            `[{"encode": {"images": x}, "decode": {"indices": codes}}, ...]`. Default:
            one batch of the model's `export_parity_batch()`, where it has one.
        io: for `"int8"`: `"float"` (default; float32 inputs and outputs, quantized
            inside the file, as an app feeding float images expects) or `"int8"`
            (int8 inputs and outputs; their scale and zero point are in
            `litert_signatures`). Integer inputs and outputs keep their dtype.

    Returns:
        `out_path` as a string.

    Raises:
        LiteRTConversionError: the model needs non-builtin (Flex) ops, or a signature
            fails full-integer conversion (the message names the signatures that
            convert alone); `.ops` names the ops.
        ValueError: unknown `quantize`, `io` or signature key, `"int8"` without
            representative data (or data that fits no signature), `"int8"` of a
            signature with a while loop (a diffusion `generate`), or `out_path` is a
            directory.
        TypeError: a model without `export_endpoints`.

    Example:
    ```python
    path = export_litert(model, "exported/vqvae_litert/1/float16.tflite", quantize="float16")
    run_litert(path, "encode", {"images": images})["indices"]
    int8 = export_litert(model, "int8.tflite", quantize="int8",
                         representative_data=[{"images": x} for x in image_batches])
    ```
    """
    check_quantize(quantize)
    check_int8_options((quantize,), io, representative_data)
    out_path = os.fspath(out_path)
    if os.path.isdir(out_path):
        raise ValueError(f"`out_path` must be a file path. Received: out_path={out_path!r}")
    batches = None
    if quantize == "int8":
        batches = calibration.materialize(
            default_representative_data(model_or_saved_model_dir, representative_data)
        )
    if isinstance(model_or_saved_model_dir, (str, os.PathLike)):
        data = _convert(os.fspath(model_or_saved_model_dir), quantize, signature_keys, batches, io)
    else:
        endpoints = _core.get_endpoints(model_or_saved_model_dir)
        if batches is not None:
            batches = calibration.checked_batches(batches, endpoints, signature_keys)
        with tempfile.TemporaryDirectory(prefix="kzoo-export-") as tmp:
            _core.write_saved_model(model_or_saved_model_dir, endpoints, tmp)
            data = _convert(tmp, quantize, signature_keys, batches, io)
    _core.atomic_write_bytes(out_path, data)
    return out_path


def _convert(saved_model_dir, quantize, signature_keys, batches=None, io="float"):
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
    grouped = None
    if quantize == "int8":
        # TF 2.21's calibrator ends the process (a segmentation fault, no Python error)
        # on a while loop: measured on a DiffusionModel's `generate` (its fori_loop).
        with_loops = _core.saved_model_loop_signatures(saved_model_dir)
        looping = [k for k in signature_keys if k in with_loops]
        if looping:
            kept = [k for k in signature_keys if k not in looping]
            raise ValueError(
                "Full-integer conversion cannot calibrate signatures with a while loop (a "
                f"fori_loop sampler): {looping} (TF 2.21's calibrator crashes on them). "
                f"Export {kept} as int8 with signature_keys={kept}, and {looping} as float16 "
                f"or dynamic. Received: quantize='int8', signature_keys={signature_keys}"
            )
        grouped = calibration.representative_batches(
            batches, _core.saved_model_signature_inputs(saved_model_dir), signature_keys
        )
    try:
        converter = _converter(saved_model_dir, quantize, signature_keys, grouped, io)
        return _convert_int8(converter, io) if quantize == "int8" else converter.convert()
    except Exception as error:
        ops = _non_builtin_ops(str(error))
        if ops:
            raise LiteRTConversionError(
                f"LiteRT conversion needs TensorFlow ops that are not LiteRT builtins: "
                f"{', '.join(ops)}. kzoo converts with builtins only (no Flex / "
                "SELECT_TF_OPS, which the stock LiteRT interpreter cannot run); rewrite the "
                "endpoint without them (e.g. keras.ops.argmax/argmin -> ops.top_k(-x, k=1)).",
                ops=ops,
            ) from error
        if quantize != "int8" or len(signature_keys) == 1:
            raise
        failing = _failing_alone(saved_model_dir, signature_keys, grouped, io)
        converting = [key for key in signature_keys if key not in failing]
        raise LiteRTConversionError(
            f"Full-integer conversion failed for signatures {failing or signature_keys} "
            f"({_first_line(error)}); {converting} convert alone: export those with "
            f"signature_keys={converting}, and the others as float16 or dynamic. "
            f"Received: quantize='int8', signature_keys={signature_keys}"
        ) from error


def _converter(saved_model_dir, quantize, signature_keys, grouped, io):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=signature_keys
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        # Int8 kernels where LiteRT has them; an op without one stays float
        # (TFLITE_BUILTINS) instead of failing the conversion.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]

        def representative_dataset():
            for signature, batches in grouped.items():
                for named in batches:
                    yield signature, named

        converter.representative_dataset = representative_dataset
        if io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter


def _convert_int8(converter, io):
    """Full-integer conversion that keeps the ops of `INT8_FLOAT_SCOPES` in float32.

    The converter's own int8 path (`TFLiteConverter._quantize`) calibrates, then
    quantizes the calibrated model with the MLIR quantizer. Where the model has ops in
    those scopes, this does the same in two steps, passing them to the quantizer's
    `denylisted_nodes` (as `tf.lite.experimental.QuantizationDebugger` does; the
    converter itself takes no denylist). Both are private TF 2.21 entry points.
    """
    from tensorflow.lite.python import convert as tflite_convert

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    nodes = _nodes_in_scopes(calibrated, INT8_FLOAT_SCOPES)
    io_type = tf.int8 if io == "int8" else tf.float32
    return tflite_convert.mlir_quantize(
        calibrated,
        input_data_type=io_type,
        output_data_type=io_type,
        denylisted_nodes=nodes or None,
    )


def _nodes_in_scopes(model_data, scopes):
    """Names of the op outputs of a `.tflite` model whose name is under one of `scopes`.

    A fused op is named by its parts' names joined with ";"; a scope entered again in
    one graph is uniquified as `scope_1`.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    pattern = re.compile(rf"(^|[/;])({'|'.join(map(re.escape, scopes))})(_\d+)?/")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_data))
    names = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            for index in op.outputs:
                name = subgraph.tensors[index].name
                name = name.decode() if isinstance(name, bytes) else name
                if pattern.search(name):
                    names.add(name)
    return sorted(names)


def _failing_alone(saved_model_dir, signature_keys, grouped, io):
    """The signatures whose full-integer conversion fails when converted on their own."""
    failing = []
    for key in signature_keys:
        try:
            converter = _converter(saved_model_dir, "int8", [key], {key: grouped[key]}, io)
            _convert_int8(converter, io)
        except Exception:  # any failure: the signature is reported, not raised
            failing.append(key)
    return failing


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


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
        where a `-1` in a shape is a dynamic dimension. A quantized input or output (an
        int8 file with `io="int8"`) adds `"quantization": {"scale", "zero_point"}`:
        its real value is `(q - zero_point) * scale`.

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
    described = {}
    for name, detail in details.items():
        entry = {
            "shape": [int(d) for d in detail["shape_signature"]],
            "dtype": np.dtype(detail["dtype"]).name,
        }
        scale, zero_point = detail["quantization"]
        if scale:
            entry["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        described[name] = entry
    return described


def run_litert(path, signature, inputs, dequantize=False):
    """Runs one signature of a `.tflite` file on named NumPy inputs.

    The batch size may differ from the one used at conversion: the signature runner of
    `ai_edge_litert` resizes inputs whose shape differs (within the dynamic dims of the
    signature) before it runs.

    Args:
        path: a `.tflite` file.
        signature: the signature name, e.g. `"serving_default"`.
        inputs: `{input_name: array}`; arrays are cast to the input dtype when the cast
            is safe within the same kind (e.g. float64 -> float32). A float array for a
            quantized input (an int8 file with `io="int8"`) is quantized with the
            input's scale and zero point (rounded, saturated).
        dequantize: return quantized outputs as float32 `(q - zero_point) * scale`.

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
        scale, zero_point = detail["quantization"]
        if scale and np.issubdtype(value.dtype, np.floating) and expected.kind in "iu":
            limits = np.iinfo(expected)
            value = np.clip(np.round(value / scale) + zero_point, limits.min, limits.max)
            value = value.astype(expected)
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
    outputs = {name: np.array(value) for name, value in outputs.items()}
    if dequantize:
        for name, detail in runner.get_output_details().items():
            scale, zero_point = detail["quantization"]
            if scale:
                outputs[name] = (outputs[name].astype(np.float32) - zero_point) * np.float32(scale)
    return outputs


def litert_op_types(path):
    """Which op types of each signature of a `.tflite` file compute in int8 and in float.

    An op counts as int8 when one of its tensors is int8, as float when one is float32
    and none is int8; QUANTIZE and DEQUANTIZE (the conversions between the two) are
    counted apart, and ops on integer or boolean tensors only (shapes, indices) are
    left out.

    Args:
        path: a `.tflite` file.

    Returns:
        `{signature: {"int8": [op types], "float": [op types], "conversions": n}}`.

    Example:
    ```python
    litert_op_types("int8.tflite")["encode"]["float"]
    ```
    """
    from tensorflow.lite.tools import flatbuffer_utils

    with open(os.fspath(path), "rb") as f:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    result = {}
    for signature in model.signatureDefs or []:
        subgraph = model.subgraphs[signature.subgraphIndex]
        int8, floating, conversions = set(), set(), 0
        for op in subgraph.operators:
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            types = {
                flatbuffer_utils.type_to_name(subgraph.tensors[t].type)
                for t in [*op.inputs, *op.outputs]
                if t >= 0
            }
            if name in ("QUANTIZE", "DEQUANTIZE"):
                conversions += 1
            elif "INT8" in types:
                int8.add(name)
            elif "FLOAT32" in types:
                floating.add(name)
        key = signature.signatureKey
        result[key.decode() if isinstance(key, bytes) else key] = {
            "int8": sorted(int8),
            "float": sorted(floating),
            "conversions": conversions,
        }
    return result


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
                name: {**spec, "range": _described_range(name, spec, limits, model)}
                for name, spec in io[kind].items()
            }
            for kind in ("inputs", "outputs")
        }
    return described


def _described_range(name, spec, limits, model):
    if "quantization" not in spec:
        return _value_range(name, spec["dtype"], limits, model)
    # The real value (q - zero_point) * scale has the float tensor's range.
    real = _value_range(name, "float32", limits, model)
    text = f"{spec['dtype']} quantized: real = (q - zero_point) * scale"
    return f"{text}; real {real}" if real else text


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
