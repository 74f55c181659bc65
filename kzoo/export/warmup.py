"""TF Serving warmup requests: `assets.extra/tf_serving_warmup_requests` in a SavedModel.

TF Serving replays these `PredictionLog` records (a TFRecord file) when it loads a
version, before the version takes traffic, so the first real request does not pay
for graph initialisation (https://www.tensorflow.org/tfx/serving/saved_model_warmup).
kzoo writes one record per signature, built from the export's parity batch with the
`tensorflow-serving-api` protos; each record also holds the outputs Keras computed
for its request (`predict_log.response`), so a replay can be checked against them.
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from kzoo.export import _core

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
# TF Serving reads at most this many records (saved_model_warmup_util.cc).
MAX_WARMUP_RECORDS = 1000


def warmup_path(saved_model_dir):
    """`<saved_model_dir>/assets.extra/tf_serving_warmup_requests`."""
    return os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)


def write_warmup_requests(saved_model_dir, model_name, records):
    """Writes the warmup file of a SavedModel version.

    Args:
        saved_model_dir: the SavedModel version directory.
        model_name: the model name TF Serving serves it under (`model_spec.name`).
        records: `[(signature, {input: array}, {output: array} or None)]`, one
            `PredictionLog` each, in order.

    Returns:
        The path written.

    Raises:
        ValueError: no records, or more than TF Serving reads.

    Example:
    ```python
    write_warmup_requests(path, "vqvae", [("encode", {"images": x}, {"indices": i})])
    ```
    """
    if not records or len(records) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"`records` must hold 1 to {MAX_WARMUP_RECORDS} requests. "
            f"Received: {len(records)} records"
        )
    data = []
    for signature, inputs, outputs in records:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(_proto_ready(value)))
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(request)
        for name, value in (outputs or {}).items():
            log.predict_log.response.outputs[name].CopyFrom(
                tf.make_tensor_proto(_proto_ready(value))
            )
        log.predict_log.response.model_spec.CopyFrom(request.model_spec)
        data.append(log.SerializeToString())
    path = warmup_path(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp_path = os.path.join(os.path.dirname(path), f"{_core.TMP_PREFIX}{WARMUP_FILE}")
    with tf.io.TFRecordWriter(temp_path) as writer:
        for record in data:
            writer.write(record)
    os.replace(temp_path, path)
    return path


def read_warmup_requests(path):
    """The records of a warmup file: `[(signature, {input: array}, {output: array})]`.

    Example:
    ```python
    for signature, inputs, outputs in read_warmup_requests(warmup_path(version_dir)):
        ...
    ```
    """
    records = []
    for raw in tf.data.TFRecordDataset(os.fspath(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = {k: tf.make_ndarray(v) for k, v in log.predict_log.response.outputs.items()}
        records.append((request.model_spec.signature_name, inputs, outputs))
    return records


def _proto_ready(value):
    value = np.asarray(value)
    if value.dtype.kind in "USO":
        # Strings as an object array of bytes: a fixed-width NumPy bytes array would
        # drop the trailing NULs of binary data such as encoded images.
        flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value.ravel()]
        value = np.array(flat + [None], dtype=object)[:-1].reshape(value.shape)
    return value
