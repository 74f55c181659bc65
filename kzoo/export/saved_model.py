"""Export kzoo models as SavedModels in TF Serving's layout, plus LiteRT beside them.

Layout (`out_dir` is what TF Serving's `--model_base_path` parent points at):

```
<out_dir>/<name>/<version>/            SavedModel (saved_model.pb, variables/) + parity.json,
                                       assets.extra/tf_serving_warmup_requests
<out_dir>/<name>_litert/<version>/     float32.tflite, float16.tflite, dynamic.tflite, int8.tflite
                                       + parity.json,
                                       signatures.json (+ vocabulary.txt, tokenizer.json)
<out_dir>/<name>_preset/<version>/     a preset (kzoo.presets: config.json, model.weights.h5, ...)
<out_dir>/<name>*/README.md            the model card of the latest version (kzoo.export.model_card)
```

TF Serving scans `<out_dir>/<name>/` for integer directories only and serves the
largest, so LiteRT files live in a sibling `<name>_litert/`. Each folder numbers its
own versions (an export writing both takes one version free in both), and an existing
version is never overwritten. Each version is written into a `.tmp-*` directory
(ignored by TF Serving) in the same parent and renamed into place at the end; on any
failure the temp directory is removed and existing versions are left untouched.

See https://www.tensorflow.org/tfx/serving/serving_basic for the layout and
https://keras.io/api/models/model_saving_apis/export/ for `ExportArchive`.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import warnings

from kzoo import presets
from kzoo.export import _core, calibration, image_bytes, model_card, parity, warmup
from kzoo.export.litert import (
    QUANTIZE_MODES,
    SIGNATURES_FILE,
    VARIANT_NAMES,
    check_int8_options,
    check_quantize,
    default_representative_data,
    describe_litert,
    export_litert,
    litert_op_types,
)

FORMATS = ("saved_model", "litert", "preset")
# What `export_all` writes unless told otherwise (a preset is asked for by name).
DEFAULT_FORMATS = ("saved_model", "litert")
PRESET_DIR_SUFFIX = "_preset"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where one export format was written and how it matched Keras.

    Attributes:
        format: `"saved_model"` or `"litert"`.
        name: the export name (`<out_dir>/<name>/`).
        version: the integer version.
        path: the version directory.
        files: LiteRT files by variant (`{"float32": path, ...}`); empty for SavedModel.
        signatures: the exported signature names, the default first.
        parity: the parity dict also written to `<path>/parity.json`, or None.
    """

    format: str
    name: str
    version: int
    path: str
    files: dict
    signatures: list
    parity: dict | None


def export_saved_model(
    model,
    out_dir="exported",
    name=None,
    version=None,
    parity_batch=None,
    check_parity=True,
):
    """Exports `model` as a SavedModel at `<out_dir>/<name>/<version>/` for TF Serving.

    One signature per `model.export_endpoints()` entry, with the input spec names as
    input names and the output dict keys as output names (`saved_model_cli show --all`
    lists them), plus the PNG/JPEG twins the model names in `export_png_endpoints()`
    (`kzoo.export.image_bytes`). Parity with Keras is checked in a fresh process and
    written to `parity.json` in the version directory; one warmup request per
    signature goes to `assets.extra/` (`kzoo.export.warmup`).

    Args:
        model: a built model with `export_endpoints()`.
        out_dir: the base directory.
        name: the export name; default `model.name`.
        version: a positive int that `<name>/` does not hold yet; default the next
            integer after its largest version.
        parity_batch: optional `{endpoint: {input_name: array}}` for the parity check;
            default the model's `export_parity_batch()` if it has one, else a generated
            batch (see `kzoo.export.parity`).
        check_parity: set False to skip the parity check (no subprocess is started).

    Returns:
        An `ExportResult`.

    Raises:
        TypeError: the model has no `export_endpoints`.
        ValueError: an endpoint named `serve`, an existing `version`, `out_dir` is a file.

    Example:
    ```python
    result = export_saved_model(vqvae, "exported")
    # exported/vqvae/1/saved_model.pb; serve with
    # tensorflow_model_server --model_name=vqvae --model_base_path=$PWD/exported/vqvae
    ```
    """
    results = export_all(
        model,
        out_dir=out_dir,
        name=name,
        formats=("saved_model",),
        version=version,
        parity_batch=parity_batch,
        check_parity=check_parity,
    )
    return results["saved_model"]


def export_all(
    model,
    out_dir="exported",
    name=None,
    formats=DEFAULT_FORMATS,
    quantize=("none", "float16"),
    version=None,
    parity_batch=None,
    check_parity=True,
    card=None,
    representative_data=None,
    io="float",
):
    """Exports a SavedModel, LiteRT files and/or a preset under one version.

    Every format's folder gets a model card, `README.md` next to the versions,
    rewritten for the version just exported (`kzoo.export.model_card`).

    Args:
        model: a built model with `export_endpoints()`.
        out_dir: the base directory.
        name: the export name; default `model.name`.
        formats: a subset of `("saved_model", "litert", "preset")`.
        quantize: LiteRT variants, from `("none", "float16", "dynamic", "int8")`;
            written as `float32.tflite`, `float16.tflite`, `dynamic.tflite`,
            `int8.tflite`.
        version: a positive int free in the folder of every format written; default
            the next integer after the largest version in those folders (each folder
            numbers its own versions).
        parity_batch: optional `{endpoint: {input_name: array}}` for the parity check;
            default the model's `export_parity_batch()` if it has one, else generated.
        check_parity: set False to skip the parity checks.
        card: optional model-card facts, `{"recipe", "train_command",
            "export_command", "evaluation"}` (any subset; see `model_card.model_card`).
        representative_data: calibration batches of `int8.tflite`
            (`kzoo.export.calibration`); default one batch of the model's
            `export_parity_batch()`, where it has one. Only with `"int8"` in `quantize`.
        io: inputs and outputs of `int8.tflite`: `"float"` (default) or `"int8"`
            (see `export_litert`). `signatures.json` records it, with the op types
            that compute in int8 and those left in float.

    Returns:
        `{format: ExportResult}` for each of `formats`.

    Raises:
        TypeError: the model has no `export_endpoints`.
        ValueError: bad `formats`, `quantize`, `version`, `name` or `out_dir`.
        kzoo.export.LiteRTConversionError: LiteRT conversion needs non-builtin ops.

    Example:
    ```python
    results = export_all(vqvae, "exported", quantize=("none", "float16", "dynamic"))
    print(format_parity_table([r.parity for r in results.values()]))
    ```
    """
    formats = _check_formats(formats)
    quantize = _check_quantize_list(quantize) if "litert" in formats else ()
    check_int8_options(quantize or ("none",), io, representative_data)
    int8 = None
    if "int8" in quantize:
        int8 = {
            "io": io,
            "batches": calibration.materialize(
                default_representative_data(model, representative_data)
            ),
        }
    # A preset stores weights and config: any Keras model, endpoints or not.
    endpoints = {} if formats == ("preset",) else _core.get_endpoints(model)
    if int8 is not None:
        # Checked before anything is written (every signature but the PNG twins).
        int8["batches"] = calibration.checked_batches(int8["batches"], endpoints)
    if check_parity and endpoints:
        parity_batch = _core.default_parity_batch(model, parity_batch)
    out_dir = _core.check_out_dir(out_dir)
    name = _core.resolve_name(model, name)
    dirs = export_dirs(out_dir, name)
    for directory in dirs.values():
        _core.check_is_dir(directory)
    version = _core.resolve_version(version, [dirs[f] for f in formats])

    # Encoded-image twins (PNG/JPEG in, PNG out) exist in SavedModels only.
    twins = image_bytes.png_endpoints(model, endpoints) if "saved_model" in formats else {}
    # Parent dirs this call creates are removed again if the export fails.
    new_dirs = [d for d in (*dirs.values(), out_dir) if not os.path.exists(d)]
    try:
        results = _export(
            model,
            endpoints,
            twins,
            dirs,
            name=name,
            version=version,
            formats=formats,
            quantize=quantize,
            parity_batch=parity_batch,
            check_parity=check_parity,
            int8=int8,
        )
    except BaseException:
        _core.remove_empty_dirs(new_dirs)
        raise
    text = model_card.model_card(
        model,
        name,
        parity_reports=[r.parity for r in results.values()],
        signatures={
            **{n: e.input_names for n, e in endpoints.items()},
            **{f"{n} (SavedModel only)": e.input_names for n, e in twins.items()},
        },
        **(card or {}),
    )
    for fmt, result in results.items():
        model_card.write_model_card(dirs[fmt], text)
        if fmt == "preset":  # keras-hub's layout: the card inside the preset too
            model_card.write_model_card(result.path, text)
    for result in results.values():
        if result.parity is not None and not result.parity["ok"]:
            warnings.warn(
                f"{result.format} export of {name!r} v{version} is outside the parity "
                f"tolerances:\n{parity.format_parity_table(result.parity)}",
                stacklevel=2,
            )
    return results


def export_dirs(out_dir, name):
    """`{format: folder}`: where each format's versions of `name` live under `out_dir`."""
    return {
        "saved_model": os.path.join(out_dir, name),
        "litert": os.path.join(out_dir, name + _core.LITERT_DIR_SUFFIX),
        "preset": os.path.join(out_dir, name + PRESET_DIR_SUFFIX),
    }


def _export(
    model,
    endpoints,
    twins,
    dirs,
    name,
    version,
    formats,
    quantize,
    parity_batch,
    check_parity,
    int8,
):
    with _core.temp_dirs() as temps:
        staged = {}  # format -> (temp dir, files, parity)
        if "preset" in formats:
            # Weights are stored as they are (no conversion): no parity to check.
            preset_dir = _core.make_temp_dir(dirs["preset"])
            temps.append(preset_dir)
            os.rmdir(preset_dir)  # save_to_preset creates it (under its own temp name)
            presets.save_to_preset(model, preset_dir)
            staged["preset"] = (preset_dir, {}, None)
            if formats == ("preset",):
                return _commit(staged, dirs, name, version, list(endpoints))
        if "saved_model" in formats:
            saved_model_dir = _core.make_temp_dir(dirs["saved_model"])
        else:
            saved_model_dir = tempfile.mkdtemp(prefix="kzoo-export-")
        temps.append(saved_model_dir)
        _core.write_saved_model(model, {**endpoints, **twins}, saved_model_dir)
        signatures = list(endpoints)
        if _core.DEFAULT_SIGNATURE not in endpoints:
            signatures.insert(0, _core.DEFAULT_SIGNATURE)
        reference = parity.reference_outputs(model, parity_batch) if check_parity else None

        if "saved_model" in formats:
            report = None
            if reference is not None:
                report = parity.check_parity(reference, saved_model_dir=saved_model_dir)
                parity.write_parity_json(report, saved_model_dir)
            _write_warmup(saved_model_dir, model, name, endpoints, twins, reference, parity_batch)
            staged["saved_model"] = (saved_model_dir, {}, report)
        if "litert" in formats:
            litert_dir = _core.make_temp_dir(dirs["litert"])
            temps.append(litert_dir)
            files = {}
            for mode in quantize:
                variant = VARIANT_NAMES[mode]
                files[variant] = os.path.join(litert_dir, f"{variant}.tflite")
                options = {}
                if mode == "int8":
                    options = {
                        "representative_data": int8["batches"],
                        "io": int8["io"],
                    }
                export_litert(
                    saved_model_dir,
                    files[variant],
                    quantize=mode,
                    signature_keys=signatures,
                    **options,
                )
            _write_litert_guide(litert_dir, files, endpoints, model, int8)
            report = None
            if reference is not None:
                report = parity.check_parity(reference, litert_files=files)
                parity.write_parity_json(report, litert_dir)
            staged["litert"] = (litert_dir, files, report)

        return _commit(staged, dirs, name, version, signatures, twins)


def _write_warmup(saved_model_dir, model, name, endpoints, twins, reference, parity_batch):
    """`assets.extra/tf_serving_warmup_requests`: one request per signature, from the
    parity batch, with the Keras outputs as the recorded response (`kzoo.export.warmup`)."""
    if reference is not None:
        inputs, outputs = reference.inputs, reference.outputs
    else:
        try:
            inputs, _ = parity.make_parity_batch(
                model, _core.default_parity_batch(model, parity_batch)
            )
        except ValueError as error:  # e.g. an input with a dynamic inner dim, no batch given
            warnings.warn(f"No warmup requests for {name!r}: {error}", stacklevel=3)
            return
        outputs = {n: parity.run_endpoint(e, inputs[n]) for n, e in endpoints.items()}
    records = [(n, inputs[n], outputs[n]) for n in endpoints]
    if _core.DEFAULT_SIGNATURE not in endpoints:  # the copy of the first endpoint
        first = next(iter(endpoints))
        records.insert(0, (_core.DEFAULT_SIGNATURE, inputs[first], outputs[first]))
    for twin_name, twin in twins.items():
        base_name = twin.base_name
        twin_inputs = image_bytes.encoded_inputs(endpoints[base_name], inputs[base_name])
        records.append((twin_name, twin_inputs, parity.run_endpoint(twin, twin_inputs)))
    warmup.write_warmup_requests(saved_model_dir, name, records)


def _write_litert_guide(litert_dir, files, endpoints, model, int8=None):
    """`signatures.json` (and a text model's tokenizer files) beside the `.tflite` files,
    so an app without Python knows each input's dtype, shape and range.

    With `int8.tflite`, `"int8"` adds its input/output type, the number of calibration
    batches, the op types of each signature that compute in int8 and in float, and
    (int8 inputs and outputs) its own signatures with their scales and zero points.
    """
    guide = {
        "files": {variant: os.path.basename(path) for variant, path in files.items()},
        "signatures": describe_litert(next(iter(files.values())), endpoints, model),
    }
    if "int8" in files:
        guide["int8"] = {
            "io": int8["io"],
            "representative_batches": len(int8["batches"]),
            "op_types": litert_op_types(files["int8"]),
        }
        if int8["io"] == "int8":
            guide["int8"]["signatures"] = describe_litert(files["int8"], endpoints, model)
    tokenizers = presets.find_tokenizers(model)
    if tokenizers:
        for filename, text in presets.tokenizer_files(tokenizers[0]).items():
            _core.atomic_write_bytes(os.path.join(litert_dir, filename), text.encode("utf-8"))
        guide["tokenizer"] = {
            "vocabulary": presets.VOCABULARY_FILE,
            "description": presets.TOKENIZER_FILE,
        }
    text = json.dumps(guide, indent=2) + "\n"
    _core.atomic_write_bytes(os.path.join(litert_dir, SIGNATURES_FILE), text.encode("utf-8"))


def _commit(staged, dirs, name, version, signatures, twins=()):
    """Renames every staged temp dir into place, undoing earlier renames on failure."""
    results, committed = {}, []
    try:
        for fmt, (temp_dir, files, report) in staged.items():
            final = os.path.join(dirs[fmt], str(version))
            _core.commit_dir(temp_dir, final)
            committed.append(final)
            results[fmt] = ExportResult(
                format=fmt,
                name=name,
                version=version,
                path=final,
                files={k: os.path.join(final, os.path.basename(v)) for k, v in files.items()},
                signatures=signatures + list(twins) if fmt == "saved_model" else signatures,
                parity=report,
            )
    except BaseException:
        for path in committed:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return results


def _check_formats(formats):
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(
            f"`formats` must be a non-empty subset of {FORMATS}. Received: formats={formats!r}"
        )
    return tuple(dict.fromkeys(formats))


def _check_quantize_list(quantize):
    modes = (quantize,) if isinstance(quantize, str) else tuple(quantize)
    if not modes:
        raise ValueError(
            f"`quantize` must name at least one of {QUANTIZE_MODES}. Received: quantize={modes!r}"
        )
    for mode in modes:
        check_quantize(mode)
    return tuple(dict.fromkeys(modes))
