"""Shared pieces of `kzoo.export`: the endpoint contract, SavedModel writing, file layout.

A model that can be exported has `export_endpoints() -> dict[str, (fn, input_specs)]`:
`fn` takes tensors positionally and returns a dict of named output tensors, and
`input_specs` is a list of `keras.InputSpec` with a full shape (batch dim `None` for a
dynamic batch), a dtype and a `name` (the signature's input name). The first key is the
default signature.

An endpoint may add a third element, `limits`, a dict of request limits checked at
serving time (the exported graph raises `InvalidArgumentError` instead of clamping):
`{input_name: (low, high)}` requires every value of that input in `[low, high]`, and
`{"batch": n}` requires the leading dim of every input whose batch dim is `None` to be
at most `n`. Example: `limits={"num_steps": (1, 250), "batch": 64}` rejects
`num_steps=0` with "num_steps must be in [1, 250]. Received: num_steps=0".
`{"same_batch": True}` requires every input whose batch dim is `None` to have the
first such input's batch size (TF Serving's batching splits requests along dimension
0, so per-example inputs must agree): "seed must have one entry per example (2).
Received: seed of batch 3".

A model may also define `export_parity_batch() -> {endpoint: {input_name: array}}`;
exports use it when no `parity_batch` is passed (`default_parity_batch`).
"""

import contextlib
import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from kzoo.layers.checks import is_number

DEFAULT_SIGNATURE = "serving_default"
# An endpoint named `serve` makes the TFLite converter silently drop all other signatures.
RESERVED_ENDPOINT_NAMES = ("serve",)
TMP_PREFIX = ".tmp-"
LITERT_DIR_SUFFIX = "_litert"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SIGNATURE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


BATCH_LIMIT = "batch"
SAME_BATCH = "same_batch"


class Endpoint:
    """One validated export endpoint: a traced function, its named input specs and limits."""

    def __init__(self, name, fn, tensor_specs, limits=None):
        self.name = name
        self.fn = fn
        self.tensor_specs = tensor_specs
        self.limits = dict(limits or {})

    @property
    def input_names(self):
        return [spec.name for spec in self.tensor_specs]


def get_endpoints(model):
    """Validates `model.export_endpoints()` and returns `{name: Endpoint}` in model order.

    Raises:
        TypeError: the model has no `export_endpoints`, or it returns the wrong types.
        ValueError: an endpoint is named `serve`, or an input spec lacks a shape or name.
    """
    export_endpoints = getattr(model, "export_endpoints", None)
    if not callable(export_endpoints):
        raise TypeError(
            f"{type(model).__name__} cannot be exported: it has no `export_endpoints()` method "
            "returning {signature_name: (fn, input_specs)}. "
            f"Received: model={type(model).__name__}"
        )
    raw = export_endpoints()
    if not isinstance(raw, dict) or not raw:
        raise TypeError(
            f"{type(model).__name__}.export_endpoints() must return a non-empty dict "
            f"{{signature_name: (fn, input_specs)}}. Received: {type(raw).__name__} {raw!r}"
        )
    endpoints = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _SIGNATURE_PATTERN.match(name):
            raise ValueError(
                "Endpoint names must be identifiers (letters, digits, underscores). "
                f"Received: endpoint name={name!r}"
            )
        if name in RESERVED_ENDPOINT_NAMES:
            raise ValueError(
                f"An endpoint named {name!r} makes the TFLite converter drop every other "
                f"signature; rename it (the default is {DEFAULT_SIGNATURE!r}). "
                f"Received: endpoint name={name!r}"
            )
        if not (isinstance(value, (tuple, list)) and len(value) in (2, 3) and callable(value[0])):
            raise TypeError(
                f"Endpoint {name!r} must be a (fn, input_specs) or (fn, input_specs, limits) "
                f"tuple. Received: {value!r}"
            )
        fn, input_specs = value[:2]
        tensor_specs = _to_tensor_specs(name, input_specs)
        limits = _check_limits(name, tensor_specs, value[2] if len(value) == 3 else None)
        endpoints[name] = Endpoint(name, fn, tensor_specs, limits)
    return endpoints


def _check_limits(endpoint_name, tensor_specs, limits):
    """Validates an endpoint's `limits` dict against its input specs."""
    if limits is None:
        return {}
    if not isinstance(limits, dict):
        raise TypeError(
            f"The limits of endpoint {endpoint_name!r} must be a dict "
            f"{{input_name: (low, high), 'batch': n}}. Received: limits={limits!r}"
        )
    names = [spec.name for spec in tensor_specs]
    checked = {}
    for key, value in limits.items():
        if key == SAME_BATCH:
            if value is not True:
                raise ValueError(
                    f"The same_batch limit of endpoint {endpoint_name!r} must be True. "
                    f"Received: limits['same_batch']={value!r}"
                )
            checked[key] = value
            continue
        if key == BATCH_LIMIT:
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(
                    f"The batch limit of endpoint {endpoint_name!r} must be an int >= 1. "
                    f"Received: limits['batch']={value!r}"
                )
            checked[key] = value
            continue
        if key not in names:
            raise ValueError(
                f"Limits of endpoint {endpoint_name!r} must name its inputs {names}, "
                f"'batch' or 'same_batch'. Received: limits key={key!r}"
            )
        if not (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(is_number(v) for v in value)
            and value[0] <= value[1]
        ):
            raise ValueError(
                f"The limit of input {key!r} of endpoint {endpoint_name!r} must be a "
                f"(low, high) pair with low <= high. Received: limits[{key!r}]={value!r}"
            )
        checked[key] = tuple(value)
    return checked


def _limit_assertions(endpoint, args):
    """`tf.debugging.Assert` ops enforcing `endpoint.limits` on the traced inputs."""
    assertions = []
    for spec, arg in zip(endpoint.tensor_specs, args, strict=True):
        bounds = endpoint.limits.get(spec.name)
        if bounds is not None:
            low, high = bounds
            inside = tf.logical_and(
                tf.reduce_all(arg >= tf.cast(low, arg.dtype)),
                tf.reduce_all(arg <= tf.cast(high, arg.dtype)),
            )
            message = tf.strings.format(
                f"{spec.name} must be in [{low}, {high}]. Received: {spec.name}={{}}",
                arg,
                summarize=8,
            )
            assertions.append(tf.debugging.Assert(inside, [message]))
        batch_limit = endpoint.limits.get(BATCH_LIMIT)
        if batch_limit is not None and spec.shape.rank and spec.shape[0] is None:
            batch = tf.shape(arg)[0]
            message = tf.strings.format(
                f"The batch of {spec.name} must be at most {batch_limit}. Received: batch={{}}",
                batch,
            )
            assertions.append(tf.debugging.Assert(batch <= batch_limit, [message]))
    if endpoint.limits.get(SAME_BATCH):
        batched = [
            (spec.name, arg)
            for spec, arg in zip(endpoint.tensor_specs, args, strict=True)
            if spec.shape.rank and spec.shape[0] is None
        ]
        reference = tf.shape(batched[0][1])[0] if batched else None
        for name, arg in batched[1:]:
            batch = tf.shape(arg)[0]
            message = tf.strings.format(
                f"{name} must have one entry per example ({{}}). Received: {name} of batch {{}}",
                (reference, batch),
            )
            assertions.append(tf.debugging.Assert(tf.equal(batch, reference), [message]))
    return assertions


def _to_tensor_specs(endpoint_name, input_specs):
    if not isinstance(input_specs, (list, tuple)) or not input_specs:
        raise TypeError(
            f"Endpoint {endpoint_name!r} needs a non-empty list of keras.InputSpec. "
            f"Received: input_specs={input_specs!r}"
        )
    tensor_specs = []
    for i, spec in enumerate(input_specs):
        shape = getattr(spec, "shape", None)
        dtype = getattr(spec, "dtype", None)
        if shape is None or dtype is None:
            raise ValueError(
                f"Input {i} of endpoint {endpoint_name!r} needs a full shape and a dtype "
                f"(e.g. keras.InputSpec(shape=(None, 32, 32, 3), dtype='float32', "
                f"name='images')). Received: {spec!r}"
            )
        name = getattr(spec, "name", None) or f"input_{i}"
        if not _SIGNATURE_PATTERN.match(name):
            raise ValueError(
                f"Input names of endpoint {endpoint_name!r} must be identifiers. "
                f"Received: name={name!r}"
            )
        tensor_specs.append(tf.TensorSpec(tuple(shape), tf.as_dtype(dtype), name=name))
    names = [spec.name for spec in tensor_specs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Input names of endpoint {endpoint_name!r} must be unique. Received: names={names}"
        )
    return tensor_specs


def _checked(endpoint):
    """Wraps an endpoint fn so a non-dict return fails at trace time with a clear message."""

    def traced(*args):
        if endpoint.limits:
            with tf.control_dependencies(_limit_assertions(endpoint, args)):
                args = [tf.identity(arg) for arg in args]
        outputs = endpoint.fn(*args)
        if not isinstance(outputs, dict) or not all(isinstance(k, str) for k in outputs):
            raise TypeError(
                f"Endpoint {endpoint.name!r} must return a dict of named output tensors "
                f"(the names become the signature's output names). "
                f"Received: {type(outputs).__name__}"
            )
        return outputs

    return traced


def default_parity_batch(model, parity_batch=None):
    """`parity_batch`, or the model's own `export_parity_batch()` when it has one."""
    if parity_batch is not None:
        return parity_batch
    make_batch = getattr(model, "export_parity_batch", None)
    return make_batch() if callable(make_batch) else None


def write_saved_model(model, endpoints, path):
    """Writes `model` with one signature per endpoint to the (existing, empty) dir `path`.

    Uses `keras.export.ExportArchive`, so variables are tracked and the signatures keep
    the input spec names and the output dict keys. If no endpoint is named
    `serving_default`, the first endpoint is also exported under that name so TF Serving
    has a default signature.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    for endpoint in endpoints.values():
        archive.add_endpoint(
            endpoint.name, _checked(endpoint), input_signature=endpoint.tensor_specs
        )
    if DEFAULT_SIGNATURE not in endpoints:
        first = next(iter(endpoints.values()))
        archive.add_endpoint(DEFAULT_SIGNATURE, _checked(first), input_signature=first.tensor_specs)
    archive.write_out(path, verbose=False)


def saved_model_signature_names(saved_model_dir):
    """Returns the signature names of a SavedModel's `serve` graph, `serving_default` first."""
    names = [k for k in _serve_meta_graph(saved_model_dir).signature_def if not k.startswith("__")]
    return sorted(names, key=lambda k: (k != DEFAULT_SIGNATURE, k))


def saved_model_signature_inputs(saved_model_dir):
    """`{signature: {input_name: (shape, numpy dtype)}}` of a SavedModel's `serve` graph.

    A shape is a list with None for a dynamic dim (None for an unknown rank).
    """
    signatures = {}
    for key, signature in _serve_meta_graph(saved_model_dir).signature_def.items():
        if key.startswith("__"):
            continue
        signatures[key] = {
            name: (
                None
                if info.tensor_shape.unknown_rank
                else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim],
                tf.as_dtype(info.dtype).as_numpy_dtype,
            )
            for name, info in signature.inputs.items()
        }
    return signatures


def _serve_meta_graph(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(saved_model_dir, "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise ValueError(
            "Expected a SavedModel directory containing saved_model.pb. "
            f"Received: saved_model_dir={saved_model_dir!r}"
        )
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"No 'serve' MetaGraph in {saved_model_dir!r}.")


# Ops of a while loop (`keras.ops.fori_loop`, `tf.while_loop`) and of function calls.
_LOOP_OPS = ("While", "StatelessWhile")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


def saved_model_loop_signatures(saved_model_dir):
    """The signatures of a SavedModel whose graph holds a while loop, sorted.

    Follows each signature's outputs into the functions they call (and those they
    call in turn) looking for `While`/`StatelessWhile` ops: a diffusion model's
    `generate` runs its sampling loop as one.
    """
    meta_graph = _serve_meta_graph(saved_model_dir)
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    nodes = {node.name: node for node in meta_graph.graph_def.node}

    def has_loop(node_defs, seen):
        for node in node_defs:
            if node.op in _LOOP_OPS:
                return True
            called = node.attr["f"].func.name if node.op in _CALL_OPS else None
            if called in functions and called not in seen:
                seen.add(called)
                if has_loop(functions[called].node_def, seen):
                    return True
        return False

    looping = []
    for key, signature in meta_graph.signature_def.items():
        outputs = [info.name.split(":")[0] for info in signature.outputs.values()]
        if not key.startswith("__") and has_loop([nodes[n] for n in outputs if n in nodes], set()):
            looping.append(key)
    return sorted(looping)


# --- layout and atomic writes ---------------------------------------------------------


def check_name(name):
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            "`name` must be a non-empty directory name of letters, digits, '_', '-', '.' "
            f"not starting with '.' or '-'. Received: name={name!r}"
        )
    return name


def resolve_name(model, name):
    if name is None:
        name = getattr(model, "name", None) or type(model).__name__
    return check_name(name)


def check_out_dir(out_dir):
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(
            f"`out_dir` must be a directory (it is an existing file). Received: out_dir={out_dir!r}"
        )
    return out_dir


def numeric_versions(directory):
    """Integer version subdirectories of `directory` (TF Serving ignores everything else)."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(entry)
        for entry in os.listdir(directory)
        if entry.isdigit() and int(entry) > 0 and os.path.isdir(os.path.join(directory, entry))
    )


def resolve_version(version, directories):
    """The version to write into every one of `directories`.

    Each export folder numbers its own versions, so only the folders being written are
    looked at: a SavedModel export after LiteRT ones still takes the SavedModel
    folder's next number. A call writing several folders takes one version free in all.

    Args:
        version: a positive int, or None for the next integer after the largest
            version in any of `directories`.
        directories: the version folders (`<out_dir>/<name>/`, ...) to be written.

    Raises:
        ValueError: `version` is not a positive int, or exists in one of
            `directories` (a version is never overwritten).
    """
    if version is None:
        existing = [v for d in directories for v in numeric_versions(d)]
        return max(existing, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive int. Received: version={version!r}")
    for directory in directories:
        path = os.path.join(directory, str(version))
        if os.path.exists(path):
            raise ValueError(
                f"Version {version} already exists ({path!r}) and is never overwritten; "
                f"pick another or leave version=None for the next free one. "
                f"Received: version={version}"
            )
    return version


def check_is_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Expected a directory, found a file. Received: path={path!r}")


def make_temp_dir(parent):
    """Creates `<parent>/.tmp-<random>` with default permissions (mkdtemp's 0700 would
    hide the export from a TF Serving process running as another user)."""
    check_is_dir(parent)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    return path


def commit_dir(temp_path, final_path):
    """Renames a finished temp dir into place; refuses to replace an existing path."""
    if os.path.exists(final_path):
        raise ValueError(f"{final_path!r} appeared while exporting; not replacing it.")
    os.replace(temp_path, final_path)


@contextlib.contextmanager
def temp_dirs():
    """Collects temp dirs and removes those still present when the block ends."""
    created = []
    try:
        yield created
    finally:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)


def remove_empty_dirs(paths):
    """Removes each of `paths` that exists and is empty (deepest first)."""
    for path in sorted(paths, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` through a `.tmp-` file in the same dir and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp_path = os.path.join(
        directory, f"{TMP_PREFIX}{os.path.basename(path)}-{uuid.uuid4().hex[:8]}"
    )
    try:
        with open(temp_path, "xb") as f:
            f.write(data)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)
