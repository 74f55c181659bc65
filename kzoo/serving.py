"""A small TF Serving REST client: request JSON from arrays, arrays from response JSON.

NumPy and the standard library only, so a client needs neither TensorFlow nor Keras.
The JSON follows TF Serving's REST API
(https://www.tensorflow.org/tfx/serving/api_rest#request_format_2):
- **row format** (`"instances"`), when every input has a batch dimension of the same
  size: one object per example, `{"input": value, ...}`; the only format TF
  Serving's request batching can split and merge;
- **columnar format** (`"inputs"`), otherwise (a scalar input, inputs with other
  batch sizes such as `similarity`'s images and texts): `{"input": whole tensor}`;
- binary values (`bytes`: encoded images, non-UTF-8 strings) as `{"b64": "..."}`.

Responses: `{"predictions": [...]}` to a row request (one entry per example, an
object when the signature has several outputs), `{"outputs": ...}` to a columnar one.
TF Serving returns a string output whose name ends in `_bytes` (`png_bytes`)
base64-encoded as `{"b64": ...}`.

Example:
```python
import json, urllib.request

body = rest_payload({"image_bytes": [open("cat.png", "rb").read()]}, "encode_png")
request = urllib.request.Request(
    "http://localhost:8501/v1/models/vqvae_shapes:predict", json.dumps(body).encode()
)
outputs = parse_rest_response(urllib.request.urlopen(request).read(), ["indices"])
```
"""

import base64
import json

import numpy as np

B64 = "b64"


def rest_payload(inputs, signature_name=None):
    """The JSON-ready request body of a TF Serving `:predict` call.

    Args:
        inputs: `{input_name: array-like}`; `bytes` values (or NumPy bytes/object
            arrays of them) are sent as `{"b64": ...}`, `str` as JSON strings.
        signature_name: the signature to run; None for `serving_default`.

    Returns:
        A dict: `{"signature_name"?, "instances": [...]}` when every input has the
        same batch size, else `{"signature_name"?, "inputs": {...}}`.

    Raises:
        ValueError: no inputs, or an input name that is not a non-empty string.

    Example:
    ```python
    rest_payload({"labels": [0, 2], "seed": [5, 6]}, "generate")
    # {'signature_name': 'generate', 'instances': [{'labels': 0, 'seed': 5}, ...]}
    ```
    """
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError(
            f"`inputs` must be a non-empty dict {{input_name: array}}. Received: inputs={inputs!r}"
        )
    for name in inputs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Input names must be non-empty strings. Received: name={name!r}")
    arrays = {name: _as_array(value) for name, value in inputs.items()}
    payload = {} if signature_name is None else {"signature_name": signature_name}
    batches = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if None not in batches and len(batches) == 1:
        (batch,) = batches
        payload["instances"] = [
            {name: _to_json(array[i]) for name, array in arrays.items()} for i in range(batch)
        ]
    else:
        payload["inputs"] = {name: _to_json(array) for name, array in arrays.items()}
    return payload


def payload_tensors(payload, dtypes=None):
    """What TF Serving makes of a request body: `(signature_name, {input: np.ndarray})`.

    The inverse of `rest_payload`, for checking a request without a server.

    Args:
        payload: a request dict or its JSON text.
        dtypes: optional `{input_name: dtype}` (the signature's dtypes); default
            int32 for integers, float32 for numbers, object arrays of bytes for
            strings and `{"b64": ...}` values.

    Returns:
        `(signature_name or "serving_default", {input_name: array})`.

    Raises:
        ValueError: a body with neither or both of `instances` and `inputs`.
    """
    if isinstance(payload, str | bytes):
        payload = json.loads(payload)
    if ("instances" in payload) == ("inputs" in payload):
        raise ValueError(
            "A request body holds exactly one of 'instances' (row format) and 'inputs' "
            f"(columnar format). Received: keys {sorted(payload)}"
        )
    signature = payload.get("signature_name", "serving_default")
    if "instances" in payload:
        rows = payload["instances"]
        names = list(rows[0]) if rows else []
        columns = {name: [row[name] for row in rows] for name in names}
    else:
        columns = payload["inputs"]
    dtypes = dtypes or {}
    return signature, {name: _from_json(value, dtypes.get(name)) for name, value in columns.items()}


def parse_rest_response(response, output_names):
    """`{output_name: np.ndarray}` of a TF Serving `:predict` response.

    Args:
        response: the response body (JSON text or bytes) or its parsed dict.
        output_names: the signature's output names, in any order; with a single
            output TF Serving leaves the name out of the response.

    Returns:
        `{output_name: array}`, strings and `{"b64": ...}` values as object arrays of
        bytes.

    Raises:
        ValueError: an error response (`{"error": ...}`) or an unknown layout.

    Example:
    ```python
    parse_rest_response('{"predictions": [[1, 2], [3, 4]]}', ["indices"])
    # {'indices': array([[1, 2], [3, 4]])}
    ```
    """
    if isinstance(response, str | bytes):
        response = json.loads(response)
    if "error" in response:
        raise ValueError(f"TF Serving answered with an error. Received: {response['error']}")
    output_names = list(output_names)
    if "predictions" in response:
        rows = response["predictions"]
        if len(output_names) == 1 and not (rows and _is_named_row(rows[0], output_names)):
            return {output_names[0]: _from_json(rows, None)}
        return {name: _from_json([row[name] for row in rows], None) for name in output_names}
    if "outputs" in response:
        outputs = response["outputs"]
        if len(output_names) == 1 and not _is_named_row(outputs, output_names):
            return {output_names[0]: _from_json(outputs, None)}
        return {name: _from_json(outputs[name], None) for name in output_names}
    raise ValueError(
        f"A response holds 'predictions' or 'outputs'. Received: keys {sorted(response)}"
    )


def _is_named_row(value, names):
    return isinstance(value, dict) and set(value) == set(names) and B64 not in value


def _as_array(value):
    if isinstance(value, bytes | str):
        return np.array([value, None], dtype=object)[:1].reshape(())
    if isinstance(value, list | tuple) and _has_strings(value):
        return _object_array(value)
    return np.asarray(value)


def _has_strings(value):
    if isinstance(value, list | tuple):
        return any(_has_strings(v) for v in value)
    return isinstance(value, bytes | str)


def _object_array(nested):
    """An object array of `nested` strings/bytes, keeping bytes objects intact."""
    shape = []
    probe = nested
    while isinstance(probe, list | tuple):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat = []

    def walk(value):
        if isinstance(value, list | tuple):
            for v in value:
                walk(v)
        else:
            flat.append(value)

    walk(nested)
    return np.array([*flat, None], dtype=object)[:-1].reshape(shape)


def _to_json(value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [_to_json(v) for v in value] if value.ndim else _to_json(value.item())
        if value.dtype.kind == "f" and value.dtype.itemsize < 8:
            # The shortest decimal that reads back as the same float32 (0.12, not
            # 0.11999999731779099): what the client means, and what TF Serving parses.
            shortest = [float(str(v)) for v in value.ravel()]
            return np.array([*shortest, None], dtype=object)[:-1].reshape(value.shape).tolist()
        return value.tolist()
    if isinstance(value, bytes | np.bytes_):
        return {B64: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value, dtype):
    def decode(v):
        if isinstance(v, dict) and set(v) == {B64}:
            return base64.b64decode(v[B64])
        if isinstance(v, str):
            return v.encode("utf-8")
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    value = decode(value)
    if _has_strings(value):
        return _object_array(value) if isinstance(value, list) else _as_array(value)
    if dtype is not None:
        return np.asarray(value, dtype=dtype)
    array = np.asarray(value)
    if array.dtype.kind in "iu":
        return array.astype(np.int32)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    return array
