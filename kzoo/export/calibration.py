"""Representative data for full-integer (int8) LiteRT: calibration batches per signature.

Post-training integer quantization runs the float model on representative inputs and
records each tensor's range, which fixes its int8 scale and zero point
(https://ai.google.dev/edge/litert/models/post_training_integer_quant). Every
converted signature is its own subgraph with its own tensors, so each is calibrated
on its own inputs: a VQ-VAE's `decode` needs code grids, not images.

Batches come in three forms (`representative_batches`):
- `{signature: {input_name: array}}`, the parity-batch format (one entry per
  signature it calibrates);
- `{input_name: array}`, fed to every signature with exactly those inputs;
- one array, fed to every one-input signature whose input has its kind (floating
  or integer) and rank.

`kzoo export --quantize int8` draws `--representative-batches` batches (default
`kzoo.cli.DEFAULT_REPRESENTATIVE_BATCHES`, 8) from the recipe's training pipeline
(`kzoo.cli.representative_batches`); a model's own `export_parity_batch()` serves
when called from Python without data.
"""

import numpy as np

from kzoo.export import _core


def materialize(representative_data):
    """The batches of `representative_data` (an iterable, or a callable returning one) as a list."""
    data = representative_data() if callable(representative_data) else representative_data
    if isinstance(data, (dict, np.ndarray)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "`representative_data` must be an iterable of batches (or a callable returning "
            "one), each {signature: {input_name: array}}, {input_name: array} or an array. "
            f"Received: representative_data={type(data).__name__}"
        )
    return list(data)


def checked_batches(batches, endpoints, signature_keys=None):
    """`batches` checked against the SavedModel `endpoints` make, before it is written.

    Lets `serving_default` share its endpoint's batches (`alias_default_signature`) and
    groups them as the conversion will (`representative_batches`, for `signature_keys`,
    default every signature), so bad data fails before any file exists. Returns the
    aliased batches.
    """
    batches = alias_default_signature(batches, endpoints)
    inputs = endpoint_inputs(endpoints)
    representative_batches(batches, inputs, signature_keys or list(inputs))
    return batches


def alias_default_signature(batches, endpoints):
    """Lets `serving_default` share the batches of the endpoint it copies.

    `write_saved_model` exports the first endpoint again as `serving_default` when the
    model has no endpoint of that name; a per-signature batch for that endpoint then
    calibrates the copy too.
    """
    if _core.DEFAULT_SIGNATURE in endpoints:
        return batches
    first = next(iter(endpoints))
    aliased = []
    for batch in batches:
        if _is_per_signature(batch) and first in batch and _core.DEFAULT_SIGNATURE not in batch:
            batch = {**batch, _core.DEFAULT_SIGNATURE: batch[first]}
        aliased.append(batch)
    return aliased


def endpoint_inputs(endpoints):
    """`{signature: {input_name: (shape, dtype)}}` of the SavedModel `endpoints` make.

    As `_core.saved_model_signature_inputs` reads it back, so batches can be checked
    before anything is written; `serving_default` copies the first endpoint when the
    model has none of that name.
    """
    inputs = {
        name: {
            spec.name: (
                None if spec.shape.rank is None else spec.shape.as_list(),
                spec.dtype.as_numpy_dtype,
            )
            for spec in endpoint.tensor_specs
        }
        for name, endpoint in endpoints.items()
    }
    inputs.setdefault(_core.DEFAULT_SIGNATURE, next(iter(inputs.values())))
    return inputs


def representative_batches(batches, signature_inputs, signature_keys):
    """Groups calibration batches by the signature they calibrate.

    Args:
        batches: a list of batches in one of the forms of the module docstring.
        signature_inputs: `{signature: {input_name: (shape, dtype)}}` of the SavedModel
            (`_core.saved_model_signature_inputs`).
        signature_keys: the signatures being converted; each needs at least one batch.

    Returns:
        `{signature: [{input_name: np.ndarray}, ...]}` in `signature_keys` order, arrays
        cast to the input dtypes.

    Raises:
        ValueError: no batches, a batch that fits no signature (unknown signature or
            input names, a wrong shape or dtype kind), batches of one signature with
            different shapes, or a converted signature left without batches.
    """
    if not batches:
        raise ValueError("`representative_data` must hold at least one batch. Received: 0 batches")
    grouped = {key: [] for key in signature_keys}
    for index, batch in enumerate(batches):
        for signature, named in _route(index, batch, signature_inputs, signature_keys):
            grouped[signature].append(_checked(index, signature, named, signature_inputs))
    missing = [key for key, found in grouped.items() if not found]
    if missing:
        raise ValueError(
            f"`representative_data` has no batch for the signatures {missing}: every "
            "converted signature is calibrated on its own inputs. Give them batches "
            "({signature: {input_name: array}}) or leave them out with `signature_keys`. "
            f"Received: batches for {[key for key, found in grouped.items() if found]}"
        )
    for signature, found in grouped.items():
        shapes = {tuple(sorted((n, a.shape) for n, a in named.items())) for named in found}
        if len(shapes) > 1:
            raise ValueError(
                f"Every representative batch of signature {signature!r} must have the same "
                "shapes (the calibrator sizes a signature's inputs once); drop the smaller "
                f"last batch. Received: shapes {sorted(shapes)}"
            )
    return grouped


def _is_per_signature(batch):
    return (
        isinstance(batch, dict) and bool(batch) and all(isinstance(v, dict) for v in batch.values())
    )


def _route(index, batch, signature_inputs, signature_keys):
    """`[(signature, {input_name: array})]` that batch `index` calibrates."""
    if _is_per_signature(batch):
        unknown = sorted(set(batch) - set(signature_inputs))
        if unknown:
            raise ValueError(
                f"Representative batch {index} names signatures the model does not have "
                f"(it has {sorted(signature_inputs)}). Received: {unknown}"
            )
        return [(key, batch[key]) for key in signature_keys if key in batch]
    if isinstance(batch, dict):
        routed = [
            (key, batch) for key in signature_keys if set(signature_inputs[key]) == set(batch)
        ]
        if not routed:
            takes = {key: sorted(signature_inputs[key]) for key in signature_keys}
            raise ValueError(
                f"Representative batch {index} has inputs {sorted(batch)}, which no converted "
                f"signature takes ({takes}). "
                f"Received: inputs {sorted(batch)}"
            )
        return routed
    array = np.asarray(batch)
    routed = []
    for key in signature_keys:
        if len(signature_inputs[key]) != 1:
            continue
        ((name, (shape, dtype)),) = signature_inputs[key].items()
        same_kind = np.issubdtype(array.dtype, np.floating) == np.issubdtype(dtype, np.floating)
        if same_kind and (shape is None or len(shape) == array.ndim):
            routed.append((key, {name: array}))
    if not routed:
        raise ValueError(
            f"Representative batch {index} is one array of dtype {array.dtype.name} and rank "
            f"{array.ndim}, which no one-input converted signature takes; pass "
            "{signature: {input_name: array}} batches. "
            f"Received: shape={list(array.shape)}"
        )
    return routed


def _checked(index, signature, named, signature_inputs):
    expected = signature_inputs[signature]
    if not isinstance(named, dict) or set(named) != set(expected):
        raise ValueError(
            f"Representative batch {index} for signature {signature!r} must map its input "
            f"names {sorted(expected)} to arrays. "
            f"Received: {sorted(named) if isinstance(named, dict) else type(named).__name__}"
        )
    arrays = {}
    for name, (shape, dtype) in expected.items():
        value = np.asarray(named[name])
        dtype = np.dtype(dtype)
        if not np.can_cast(value.dtype, dtype, casting="same_kind"):
            raise ValueError(
                f"Representative input {name!r} of signature {signature!r} must be "
                f"{dtype.name}. Received: dtype={value.dtype.name} (batch {index})"
            )
        if shape is not None and (
            len(shape) != value.ndim
            or any(d is not None and d != s for d, s in zip(shape, value.shape, strict=True))
        ):
            raise ValueError(
                f"Representative input {name!r} of signature {signature!r} must have shape "
                f"{[-1 if d is None else d for d in shape]} (-1 = any). "
                f"Received: shape={list(value.shape)} (batch {index})"
            )
        arrays[name] = value.astype(dtype)
    return arrays
