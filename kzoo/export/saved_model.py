"""Export kzoo models as SavedModels in TF Serving's layout, plus LiteRT beside them.

Layout (`out_dir` is what TF Serving's `--model_base_path` parent points at):

```
<out_dir>/<name>/<version>/            SavedModel (saved_model.pb, variables/) + parity.json
<out_dir>/<name>_litert/<version>/     float32.tflite, float16.tflite, dynamic.tflite + parity.json
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
import os
import shutil
import tempfile
import warnings

from kzoo.export import _core, parity
from kzoo.export.litert import QUANTIZE_MODES, VARIANT_NAMES, check_quantize, export_litert

FORMATS = ("saved_model", "litert")


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
    lists them). Parity with Keras is checked in a fresh process and written to
    `parity.json` in the version directory.

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
    formats=FORMATS,
    quantize=("none", "float16"),
    version=None,
    parity_batch=None,
    check_parity=True,
):
    """Exports a SavedModel and/or LiteRT files under one version, with parity checks.

    Args:
        model: a built model with `export_endpoints()`.
        out_dir: the base directory.
        name: the export name; default `model.name`.
        formats: a subset of `("saved_model", "litert")`.
        quantize: LiteRT variants, from `("none", "float16", "dynamic")`; written as
            `float32.tflite`, `float16.tflite`, `dynamic.tflite`.
        version: a positive int free in the folder of every format written; default
            the next integer after the largest version in those folders (each folder
            numbers its own versions).
        parity_batch: optional `{endpoint: {input_name: array}}` for the parity check;
            default the model's `export_parity_batch()` if it has one, else generated.
        check_parity: set False to skip the parity checks.

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
    endpoints = _core.get_endpoints(model)
    if check_parity:
        parity_batch = _core.default_parity_batch(model, parity_batch)
    out_dir = _core.check_out_dir(out_dir)
    name = _core.resolve_name(model, name)
    dirs = export_dirs(out_dir, name)
    for directory in dirs.values():
        _core.check_is_dir(directory)
    version = _core.resolve_version(version, [dirs[f] for f in formats])

    # Parent dirs this call creates are removed again if the export fails.
    new_dirs = [d for d in (*dirs.values(), out_dir) if not os.path.exists(d)]
    try:
        results = _export(
            model, endpoints, dirs, name, version, formats, quantize, parity_batch, check_parity
        )
    except BaseException:
        _core.remove_empty_dirs(new_dirs)
        raise
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
    }


def _export(model, endpoints, dirs, name, version, formats, quantize, parity_batch, check_parity):
    with _core.temp_dirs() as temps:
        if "saved_model" in formats:
            saved_model_dir = _core.make_temp_dir(dirs["saved_model"])
        else:
            saved_model_dir = tempfile.mkdtemp(prefix="kzoo-export-")
        temps.append(saved_model_dir)
        _core.write_saved_model(model, endpoints, saved_model_dir)
        signatures = list(endpoints)
        if _core.DEFAULT_SIGNATURE not in endpoints:
            signatures.insert(0, _core.DEFAULT_SIGNATURE)
        reference = parity.reference_outputs(model, parity_batch) if check_parity else None

        staged = {}  # format -> (temp dir, files, parity)
        if "saved_model" in formats:
            report = None
            if reference is not None:
                report = parity.check_parity(reference, saved_model_dir=saved_model_dir)
                parity.write_parity_json(report, saved_model_dir)
            staged["saved_model"] = (saved_model_dir, {}, report)
        if "litert" in formats:
            litert_dir = _core.make_temp_dir(dirs["litert"])
            temps.append(litert_dir)
            files = {}
            for mode in quantize:
                variant = VARIANT_NAMES[mode]
                files[variant] = os.path.join(litert_dir, f"{variant}.tflite")
                export_litert(saved_model_dir, files[variant], quantize=mode)
            report = None
            if reference is not None:
                report = parity.check_parity(reference, litert_files=files)
                parity.write_parity_json(report, litert_dir)
            staged["litert"] = (litert_dir, files, report)

        return _commit(staged, dirs, name, version, signatures)


def _commit(staged, dirs, name, version, signatures):
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
                signatures=signatures,
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
