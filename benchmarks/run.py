"""Benchmark runner: time kzoo on the workloads of benchmarks/WORKLOADS.md, one JSON line each.

Usage:
    python -m benchmarks.run --workload NAME|all [--steps N] [--warmup W]
        [--jit-compile true|false|both] [--peak-flops F] [--out FILE.jsonl]
        [--wait-load 0.5 --wait-max 300] [--mm-size 2048]
        [--precision float32|mixed_bfloat16]

Each (workload, jit_compile) pair prints ONE JSON line on stdout (progress goes
to stderr) with the fields of benchmarks/WORKLOADS.md (`workload`, `framework`,
`median_s_per_step`, `min_s_per_step`, `items_per_s`, `items_per_s_best`,
`flops_per_step`, `achieved_flops_per_s`, `pct_of_peak`, `params`, `cpu_util`,
`loadavg_before`) plus `jit_compile`, versions, the config and the per-step
times. `--out` also appends the lines to a file. A step is defined as for the
peers (benchmarks/WORKLOADS.md, `benchmarks.peers`); every workload is built fresh
for each jit setting.

`dit_train_memory` times nothing: its line (`"kind": "peak_memory"`, timing
fields null) holds the peak memory of dit_train steps as one batch of 32 and as
gradient accumulation 4 x 8, each measured in a fresh subprocess; `--steps` is
the number of optimizer steps per setting.

`--precision` sets the Keras dtype policy before each workload is built (default
float32, as the peers; mixed_bfloat16 is timed against the peers' `--precision
autocast_bfloat16`, torch.autocast); a row records it as `precision`. `matmul_peak`
stays fp32 whatever the policy, so `pct_of_peak` keeps one denominator.

`pct_of_peak` uses `--peak-flops` when given, else the fastest step of a
`matmul_peak` run earlier in the same invocation (so `--workload all` measures
its own peak first), else it is null.
"""

import argparse
import importlib
import json
import os
import platform
import sys
import time

from benchmarks import _timing

WORKLOAD_MODULES = {
    "matmul_peak": "benchmarks.matmul_peak",
    "vq_fwd_bwd": "benchmarks.vq",
    "vq_fwd_bwd_ste": "benchmarks.vq",
    "vq_learnable": "benchmarks.vq",
    "vqmodel_train": "benchmarks.vqmodel_train",
    "unet_train": "benchmarks.unet",
    "unet_sample": "benchmarks.unet",
    "unet_sample_b1": "benchmarks.unet",
    "dit_train": "benchmarks.dit",
    "dit_train_memory": "benchmarks.dit",
}
# Workloads that measure peak memory (module.measure_memory) instead of time.
MEMORY_WORKLOADS = ("dit_train_memory",)
# unet_sample(_b1): single denoiser calls timed after the sample calls, as by the peers.
DENOISER_CALLS = 10
PRECISIONS = ("float32", "mixed_bfloat16")  # the two with a peer counterpart
JIT_CHOICES = {"true": (True,), "false": (False,), "both": (False, True)}


def log(message):
    print(f"[kzoo-bench] {message}", file=sys.stderr, flush=True)


def _versions():
    import keras
    import numpy
    import tensorflow as tf

    import kzoo

    return {
        "kzoo": kzoo.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _host():
    import tensorflow as tf

    return {
        "cpu": _timing.cpu_model(),
        "nproc": os.cpu_count(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    }


def run_workload(name, jit_compile, args, peak_flops):
    """Build, warm up and time one workload; returns the result row (a dict).

    `peak_flops` None on a matmul_peak run: that run's fastest step is its 100%.
    """

    module = importlib.import_module(WORKLOAD_MODULES[name])
    if name in MEMORY_WORKLOADS:
        return run_memory_workload(name, module, jit_compile, args)
    warmup, steps = module.DEFAULTS[name]
    warmup = args.warmup if args.warmup is not None else warmup
    steps = args.steps if args.steps is not None else steps
    if name == "matmul_peak":
        # The denominator of pct_of_peak costs milliseconds a step: never run it cold
        # or short (the same floor as the peers').
        warmup, steps = max(warmup, 3), max(steps, 20)

    row = {
        "workload": name,
        "framework": "kzoo",
        "jit_compile": jit_compile,
        # matmul_peak is float32 whatever the policy: the one denominator of pct_of_peak.
        "precision": "float32" if name == "matmul_peak" else args.precision,
        "status": "ok",
    }
    if args.wait_load is not None:
        row["quiet_wait"] = _timing.wait_for_low_load(args.wait_load, args.wait_max)
        log(f"{name}: load wait {row['quiet_wait']}")
    row["loadavg_before"] = _timing.loadavg()
    start = time.perf_counter()
    kwargs = {"mm_size": args.mm_size} if name == "matmul_peak" else {}
    workload = module.build(name, jit_compile, **kwargs)
    log(
        f"{name} (jit_compile={jit_compile}): built in {time.perf_counter() - start:.1f} s; "
        f"warmup={warmup} steps={steps}"
    )
    timing = _timing.time_steps(workload.step, warmup, steps)
    if name == "matmul_peak" and peak_flops is None:
        peak_flops = workload.flops_per_step / timing["min_s_per_step"]
    rates = _timing.rates(timing, workload.items_per_step, workload.flops_per_step, peak_flops)
    row.update(
        {
            "median_s_per_step": timing["median_s_per_step"],
            "min_s_per_step": timing["min_s_per_step"],
            "items_per_s": rates["items_per_s"],
            "items_per_s_best": rates["items_per_s_best"],
            "flops_per_step": workload.flops_per_step,
            "achieved_flops_per_s": rates["achieved_flops_per_s"],
            "achieved_flops_per_s_best": rates["achieved_flops_per_s_best"],
            "pct_of_peak": rates["pct_of_peak"],
            "pct_of_peak_best": rates["pct_of_peak_best"],
            "peak_flops_per_s_used": rates["peak_flops_per_s_used"],
            "params": workload.params,
            "non_trainable_elements": workload.non_trainable_elements,
            "cpu_util": timing["cpu_util"],
            "others_cpu_per_s": timing["others_cpu_per_s"],
            "machine_cpu_during_timed": timing["machine_cpu_during_timed"],
            "items_per_step": workload.items_per_step,
            "item": workload.item,
            "warmup_steps": warmup,
            "timed_steps": steps,
            "mean_s_per_step": timing["mean_s_per_step"],
            "p10_s_per_step": timing["p10_s_per_step"],
            "p90_s_per_step": timing["p90_s_per_step"],
            "times_s": timing["times_s"],
            "trace_and_first_step_s": workload.trace_s,
            "flops_method": workload.flops_method,
            "flops_by_op": workload.flops_by_op,
            "notes": workload.notes,
            "config": workload.config,
            "versions": _versions(),
        }
    )
    if "vectors_per_step" in workload.extra:
        row["vectors_per_s"] = workload.extra["vectors_per_step"] / timing["median_s_per_step"]
    if "denoiser_call" in workload.extra:
        row["denoiser_call"] = _time_denoiser_call(workload, timing["median_s_per_step"])
    row["workload_wall_s"] = time.perf_counter() - start
    row["loadavg_after"] = _timing.loadavg()
    row["host"] = _host()
    row["unix_time"] = int(time.time())
    return row


def _time_denoiser_call(workload, sample_median_s):
    """Single denoiser calls timed on their own (1 warm-up + DENOISER_CALLS), as by the peers."""

    extra = workload.extra
    den = _timing.time_steps(extra["denoiser_call"], 1, DENOISER_CALLS)
    flops = extra["denoiser_call_flops"]
    calls = extra["denoiser_calls_per_step"]
    return {
        "batch": workload.items_per_step,
        "median_s": den["median_s_per_step"],
        "min_s": den["min_s_per_step"],
        "times_s": den["times_s"],
        "cpu_util": den["cpu_util"],
        "flops": flops,
        "achieved_flops_per_s": flops / den["median_s_per_step"] if flops else None,
        # A difference of two noisy medians, not a measured overhead.
        f"sample_minus_{calls}_denoiser_calls_s": sample_median_s
        - calls * den["median_s_per_step"],
    }


def run_memory_workload(name, module, jit_compile, args):
    """Peak-memory row: `module.measure_memory(jit_compile, steps)`; timing fields null."""

    steps = args.steps if args.steps is not None else module.DEFAULTS[name][1]
    row = dict.fromkeys(REQUIRED_FIELDS)
    row.update({"workload": name, "framework": "kzoo", "jit_compile": jit_compile, "status": "ok"})
    row["kind"] = "peak_memory"
    if args.wait_load is not None:
        row["quiet_wait"] = _timing.wait_for_low_load(args.wait_load, args.wait_max)
    row["loadavg_before"] = _timing.loadavg()
    start = time.perf_counter()
    log(f"{name} (jit_compile={jit_compile}): {steps} optimizer step(s) per setting")
    row.update(module.measure_memory(jit_compile, steps))
    row["versions"] = _versions()
    row["workload_wall_s"] = time.perf_counter() - start
    row["loadavg_after"] = _timing.loadavg()
    row["host"] = _host()
    row["unix_time"] = int(time.time())
    return row


REQUIRED_FIELDS = (
    "workload",
    "framework",
    "median_s_per_step",
    "min_s_per_step",
    "items_per_s",
    "items_per_s_best",
    "flops_per_step",
    "achieved_flops_per_s",
    "pct_of_peak",
    "params",
    "cpu_util",
    "loadavg_before",
)


def _failed_row(name, jit_compile, error):
    """A row for a (workload, jit) setting that did not run: required fields null, the error."""

    row = dict.fromkeys(REQUIRED_FIELDS)
    message = str(error).strip().splitlines()
    row.update(
        {
            "workload": name,
            "framework": "kzoo",
            "jit_compile": jit_compile,
            "loadavg_before": _timing.loadavg(),
            "status": "failed",
            "error": f"{type(error).__name__}: {message[0] if message else ''}",
            "versions": _versions(),
            "unix_time": int(time.time()),
        }
    )
    return row


def _emit(row, out):
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload",
        nargs="+",
        required=True,
        help="one or more of: " + ", ".join(WORKLOAD_MODULES) + ", or 'all'",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default: per workload)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps")
    parser.add_argument(
        "--jit-compile",
        choices=sorted(JIT_CHOICES),
        default="both",
        help="tf.function(jit_compile=...) setting; 'both' times each (default)",
    )
    parser.add_argument("--peak-flops", type=float, default=None, help="FLOP/s taken as 100%%")
    _timing.add_sitting_arguments(parser, mm_size=2048)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="Keras dtype policy of the models (default float32, as the peers)",
    )
    args = parser.parse_args(argv)
    names = list(WORKLOAD_MODULES) if args.workload == ["all"] else args.workload
    for name in names:
        if name not in WORKLOAD_MODULES:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOAD_MODULES)}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1. Received: --steps={args.steps}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0. Received: --warmup={args.warmup}")

    # Entry point, not a library: quiet TF's C++ start-up chatter before it loads.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    peak = args.peak_flops
    policy = keras.config.dtype_policy()
    for name in names:
        for jit in JIT_CHOICES[args.jit_compile]:
            keras.config.set_dtype_policy(args.precision)  # before the models are built
            try:
                row = run_workload(name, jit, args, peak)
            except Exception as error:  # a failing jit setting is a result too
                row = _failed_row(name, jit, error)
                _emit(row, args.out)
                log(f"{name} jit={jit}: FAILED: {row['error']}")
                continue
            finally:
                keras.config.set_dtype_policy(policy)
            if args.peak_flops is None and name == "matmul_peak":
                # The fastest matmul of this invocation is the peak for what follows.
                peak = max(peak or 0.0, row["achieved_flops_per_s_best"])
            _emit(row, args.out)
            if name in MEMORY_WORKLOADS:
                peaks = {k: v["peak_rss_bytes"] / 2**20 for k, v in row["settings"].items()}
                log(f"{name} jit={jit}: peak RSS MiB {peaks}")
                continue
            log(
                f"{name} jit={jit}: {row['items_per_s']:.1f} items/s "
                f"(best {row['items_per_s_best']:.1f}), cpu_util={row['cpu_util']}"
            )


if __name__ == "__main__":
    main()
