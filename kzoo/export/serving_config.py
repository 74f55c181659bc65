"""TF Serving configuration files for an export directory: `models.config` and batching.

`models.config` (a `ModelServerConfig` text proto) lists every SavedModel folder of
the export directory under its name with an absolute base path, so one
`tensorflow_model_server --model_config_file=...` serves them all;
`batching_parameters.txt` (a `BatchingParameters` text proto) is the template that
`--enable_batching --batching_parameters_file=...` reads
(https://www.tensorflow.org/tfx/serving/serving_config,
https://github.com/tensorflow/serving/blob/master/tensorflow_serving/batching/README.md).
Batching needs every input of a signature to have a batch dimension; kzoo's do.
"""

import os

from kzoo.export import _core

MODELS_CONFIG_FILE = "models.config"
BATCHING_FILE = "batching_parameters.txt"


def saved_model_names(out_dir):
    """Names of the folders of `out_dir` holding at least one SavedModel version."""
    names = []
    for entry in sorted(os.listdir(out_dir)):
        folder = os.path.join(out_dir, entry)
        versions = _core.numeric_versions(folder)
        if any(os.path.isfile(os.path.join(folder, str(v), "saved_model.pb")) for v in versions):
            names.append(entry)
    return names


def models_config(out_dir, names):
    """The text of a `models.config` serving `names` from `out_dir` (absolute paths)."""
    base = os.path.abspath(out_dir)
    entries = []
    for name in names:
        entries.append(
            "  config {\n"
            f'    name: "{name}"\n'
            f'    base_path: "{os.path.join(base, name)}"\n'
            '    model_platform: "tensorflow"\n'
            "  }\n"
        )
    return "model_config_list {\n" + "".join(entries) + "}\n"


def batching_parameters(max_batch_size=64, batch_timeout_micros=2000, num_batch_threads=4):
    """The text of a `batching_parameters.txt` template.

    Args:
        max_batch_size: the largest merged batch (kzoo signatures cap requests at
            their `max_batch`; keep this at most that).
        batch_timeout_micros: how long a partial batch waits for more requests.
        num_batch_threads: batches run in parallel (about the number of cores).
    """
    for name, value, minimum in (
        ("max_batch_size", max_batch_size, 1),
        ("batch_timeout_micros", batch_timeout_micros, 0),
        ("num_batch_threads", num_batch_threads, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return (
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        "max_enqueued_batches { value: 100 }\n"
        f"num_batch_threads {{ value: {num_batch_threads} }}\n"
        "pad_variable_length_inputs: false\n"
    )


def write_serving_config(out_dir, names=None, max_batch_size=64):
    """Writes `models.config` and `batching_parameters.txt` into `out_dir`.

    Args:
        out_dir: the export directory (`kzoo export --out`).
        names: the models to serve; default every SavedModel folder in `out_dir`.
        max_batch_size: see `batching_parameters`.

    Returns:
        `(models_config_path, batching_parameters_path)`.

    Raises:
        ValueError: no SavedModel folder to serve.

    Example:
    ```python
    write_serving_config("exported")  # exported/models.config, exported/batching_parameters.txt
    ```
    """
    out_dir = os.fspath(out_dir)
    names = saved_model_names(out_dir) if names is None else list(names)
    if not names:
        raise ValueError(
            "`out_dir` holds no SavedModel version to serve (export with --format "
            f"saved_model first). Received: out_dir={out_dir!r}"
        )
    paths = (os.path.join(out_dir, MODELS_CONFIG_FILE), os.path.join(out_dir, BATCHING_FILE))
    texts = (models_config(out_dir, names), batching_parameters(max_batch_size))
    for path, text in zip(paths, texts, strict=True):
        _core.atomic_write_bytes(path, text.encode("utf-8"))
    return paths
