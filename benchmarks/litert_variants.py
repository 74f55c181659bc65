"""litert_variants: file size, LiteRT latency and parity of each quantize variant.

Exports one VQ autoencoder to LiteRT as float32, float16, dynamic and int8
(`kzoo.export.export_all`, one SavedModel) and prints one JSON line per variant:
- `size_bytes`: the `.tflite` file;
- `latency_ms`: median and min over `--runs` invocations of each signature (after 3
  untimed ones), in one `ai_edge_litert` interpreter with `--threads` threads, on
  `--latency-batch` test images (and their codes for `decode`);
- `parity`: per signature and output, the `max_abs_error` / `index_agreement` (and the
  tie-aware agreement) of `parity.json`, on `--parity-examples` test images, and
  `parity_ok`: whether the variant is within its limits (`kzoo.export.parity`);
- `op_types`: for int8, the op types of each signature that compute in int8 and in
  float (`kzoo.export.litert_op_types`).

The model: `--workdir` (a trained run) or `--recipe` (default `vqvae_shapes`: 32x32,
256 codes, attention; untrained, weights from the recipe's seed). int8 is calibrated
on `--representative-batches` batches of the recipe's training pipeline
(`kzoo.cli.representative_batches`; kzoo_shapes renders in memory, nothing is
downloaded); parity uses test-split images (`kzoo.cli.parity_batch`).

Run from the repository root:

    nice -n 10 .venv/bin/python -m benchmarks.litert_variants \\
        --out benchmarks/results/2026-12-07-litert_variants.jsonl
    nice -n 10 .venv/bin/python -m benchmarks.litert_variants --workdir runs/vqvae_shapes
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks import _timing

VARIANTS = ("none", "float16", "dynamic", "int8")


def build(recipe, workdir):
    """`(model, config, source)`: a trained workdir's model, or the recipe's, untrained."""
    import keras

    import recipes
    from kzoo.cli import _workdir_config
    from kzoo.training import load_trained_model
    from kzoo.training.trainer import build_model

    if workdir:
        return load_trained_model(workdir), _workdir_config(workdir), f"trained: {workdir}"
    config = recipes.get_recipe(recipe, [])
    keras.utils.set_random_seed(config["seed"])
    return build_model(dict(config["model"])), config, f"untrained {recipe} (seed {config['seed']})"


def latency(path, inputs, runs, threads):
    """`{signature: {"median_ms", "min_ms"}}` of `runs` timed invocations of each signature."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    timings = {}
    for signature, named in inputs.items():
        runner = interpreter.get_signature_runner(signature)
        details = runner.get_input_details()
        feed = {}
        for name, value in named.items():
            scale, zero_point = details[name]["quantization"]
            if scale and np.issubdtype(value.dtype, np.floating):
                value = np.clip(np.round(value / scale) + zero_point, -128, 127)
            feed[name] = value.astype(details[name]["dtype"])
        for _ in range(3):
            runner(**feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner(**feed)
            times.append(time.perf_counter() - start)
        timings[signature] = {
            "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times),
        }
    return timings


def _parity_rows(parity, variant):
    rows = {}
    for signature, outputs in parity["results"][f"litert/{variant}"].items():
        for output, entry in outputs.items():
            keys = (
                "max_abs_error",
                "mean_abs_error",
                "tie_resolved_max_abs_error",
                "index_agreement",
                "tie_aware_agreement",
            )
            rows[f"{signature}/{output}"] = {k: entry[k] for k in keys if k in entry}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="vqvae_shapes")
    parser.add_argument("--workdir", help="a trained run (default: the recipe, untrained)")
    parser.add_argument("--representative-batches", type=int, default=8)
    parser.add_argument("--int8-io", action="store_true", help="int8 inputs and outputs")
    parser.add_argument("--parity-examples", type=int, default=64)
    parser.add_argument("--latency-batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from kzoo.cli import parity_batch, representative_batches
    from kzoo.export import export_all, litert_op_types

    model, config, source = build(args.recipe, args.workdir)
    start = time.perf_counter()
    batches = representative_batches(model, config, args.representative_batches)
    calibration_data_s = time.perf_counter() - start
    test = parity_batch(model, config, num=args.parity_examples)
    timed = {
        signature: {name: value[: args.latency_batch] for name, value in named.items()}
        for signature, named in test.items()
    }
    lines = []
    with tempfile.TemporaryDirectory(prefix="kzoo-litert-variants-") as tmp:
        start = time.perf_counter()
        result = export_all(
            model,
            tmp,
            name="model",
            formats=("litert",),
            quantize=VARIANTS,
            parity_batch=test,
            representative_data=batches,
            io="int8" if args.int8_io else "float",
        )["litert"]
        export_s = time.perf_counter() - start
        for mode in VARIANTS:
            variant = "float32" if mode == "none" else mode
            path = result.files[variant]
            row = {
                "workload": "litert_variants",
                "variant": variant,
                "model": type(model).__name__,
                "source": source,
                "image_shape": list(model.image_shape),
                "codebook_size": int(model.codebook_size),
                "params": int(model.count_params()),
                "size_bytes": os.path.getsize(path),
                "latency_ms": latency(path, timed, args.runs, args.threads),
                "latency_batch": args.latency_batch,
                "runs": args.runs,
                "threads": args.threads,
                "parity": _parity_rows(result.parity, variant),
                "parity_examples": args.parity_examples,
                "parity_ok": all(
                    entry["ok"]
                    for outputs in result.parity["results"][f"litert/{variant}"].values()
                    for entry in outputs.values()
                ),
            }
            if mode == "int8":
                row["io"] = "int8" if args.int8_io else "float"
                row["representative_batches"] = len(batches)
                row["representative_examples"] = int(
                    sum(len(next(iter(b["encode"].values()))) for b in batches)
                )
                row["op_types"] = litert_op_types(path)
            row.update(
                export_all_s=round(export_s, 2),
                calibration_data_s=round(calibration_data_s, 2),
                cpu=_timing.cpu_model(),
                loadavg=_timing.loadavg(),
                versions={"tensorflow": tf.__version__, "python": platform.python_version()},
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            lines.append(json.dumps(row))
    for line in lines:
        print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
