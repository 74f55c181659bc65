"""Time the PyTorch peers: `python -m benchmarks.peers`, one JSON line per workload.

Usage (from the repository root, with the torch venv's Python):
    PEER_PYTHON -m benchmarks.peers --workload NAME [NAME ...]|all [--steps N] [--warmup W]
        [--peak-flops F] [--precision float32|autocast_bfloat16] [--out FILE.jsonl]
        [--wait-load 0.5 --wait-max 300] [--mm-size 2048]

A step, the timing and the FLOP count are defined as on kzoo's side
(benchmarks/WORKLOADS.md, `benchmarks._timing`): inputs made once, one
`time.perf_counter()` sample per step, FLOPs from torch's FlopCounterMode on one
extra untimed step before the timed loop (it doubles as the first warm-up step),
or on one denoiser call x 50 for the sampling workloads, whose warm-up is 3 single
denoiser calls per unit and which time 10 single denoiser calls after the samples.
Each row has the fields of a kzoo row (`benchmarks.run.REQUIRED_FIELDS`) with
`"framework": "torch"`, plus `torch_version` and the peer library's version.

`--precision autocast_bfloat16` runs every step inside
`torch.autocast("cpu", dtype=torch.bfloat16)`: the partner of `benchmarks.run
--precision mixed_bfloat16`. matmul_peak stays float32 (one denominator).

`pct_of_peak` uses `--peak-flops` when given (a sitting passes kzoo's matmul_peak,
benchmarks/WORKLOADS.md, "Peak"), else the fastest step of a matmul_peak run
earlier in the same invocation, else it is null. torch is imported only to run,
so the tests can read this module without it.
"""

import argparse
import json
import os
import platform
import sys
import time

from benchmarks import _timing
from benchmarks.peers import specs


def log(message):
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def assemble_row(
    name,
    workload,
    timing,
    flops_per_step,
    *,
    warmup,
    steps,
    runtime,
    loadavg_before,
    quiet_wait=None,
    precision="float32",
    flops_by_op=None,
    denoiser_timing=None,
    counted_flops=None,
    peak_flops=None,
):
    """The result row of one timed workload (a dict, one JSON line).

    Args:
        name: the workload.
        workload: what `benchmarks.peers.workloads.build` returned.
        timing: `_timing.time_steps` of the workload's steps.
        flops_per_step: `specs.flops_per_step` of what was counted, or None.
        warmup: untimed steps run.
        steps: timed steps run.
        runtime: `benchmarks.peers.workloads.runtime()`: torch and host facts.
        loadavg_before: `/proc/loadavg` read before the workload was built.
        quiet_wait: what `--wait-load` waited for, or None.
        precision: "float32" or "autocast_bfloat16".
        flops_by_op: FLOPs per torch op of the counted step, or None.
        denoiser_timing: `_timing.time_steps` of single denoiser calls (sampling
            workloads), or None.
        counted_flops: FLOPs of one denoiser call (sampling workloads).
        peak_flops: FLOP/s taken as 100% of `pct_of_peak`, or None.

    Returns:
        dict with every field of `benchmarks.run.REQUIRED_FIELDS` and the peer's own.
    """
    counted = specs.FLOP_COUNT[name]
    row = {} if quiet_wait is None else {"quiet_wait": quiet_wait}
    row |= {
        "loadavg_before": loadavg_before,
        "workload": name,
        "framework": "torch",
        "precision": "float32" if name == "matmul_peak" else precision,
        "status": "ok",
        "peer": {"name": workload["peer"][0], "version": workload["peer"][1]},
        "torch_version": runtime["torch_version"],
        "config": workload["config"],
        "torch_threads": runtime["torch_threads"],
        "torch_interop_threads": runtime["torch_interop_threads"],
        "flop_count_steps_untimed": 0 if counted == "analytic" else 1,
        "warmup_steps": warmup,
        "timed_steps": steps,
        **timing,
        **_timing.rates(timing, workload["items_per_step"], flops_per_step, peak_flops),
        "item": workload["item"],
        **workload["counts"],
        "flops_per_step": flops_per_step,
        "flops_method": specs.FLOPS_METHOD[counted],
        "flops_by_op": flops_by_op,
    }
    median = timing["median_s_per_step"]
    if "vectors_per_step" in workload:
        row["vectors_per_s"] = workload["vectors_per_step"] / median
    if denoiser_timing is not None:
        calls = workload["denoiser_calls_per_step"]
        den_median = denoiser_timing["median_s_per_step"]
        row["denoiser_call"] = {
            "batch": workload["items_per_step"],
            "median_s": den_median,
            "min_s": denoiser_timing["min_s_per_step"],
            "times_s": denoiser_timing["times_s"],
            "cpu_util": denoiser_timing["cpu_util"],
            "flops": counted_flops,
            "achieved_flops_per_s": counted_flops / den_median if counted_flops else None,
            # A difference of two noisy medians, not a measured overhead.
            f"sample_minus_{calls}_denoiser_calls_s": median - calls * den_median,
        }
    row["host"] = {
        "cpu": _timing.cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_capability": runtime["cpu_capability"],
        "mkldnn": runtime["mkldnn"],
    }
    return row


def run_workload(name, args, peak_flops):
    """Build, count, warm up and time one workload; returns its row."""
    from benchmarks.peers import workloads  # torch

    warmup, steps = specs.steps_for(name, args.warmup, args.steps)
    quiet_wait = None
    if args.wait_load is not None:
        quiet_wait = _timing.wait_for_low_load(args.wait_load, args.wait_max)
        log(f"{name}: load wait {quiet_wait}")
    loadavg_before = _timing.loadavg()
    start = time.perf_counter()
    workload = workloads.build(name, args, args.precision)
    precision = workload["config"].get("precision", "float32")
    log(f"{name} ({precision}): built; warmup={warmup} steps={steps}")

    # The FLOP count runs first, untimed, and doubles as the first warm-up step.
    counted = specs.FLOP_COUNT[name]
    counted_flops, flops_by_op = None, None
    if counted != "analytic":
        target = workload["denoiser" if counted == "denoiser_call" else "step"]
        counted_flops, flops_by_op = workloads.count_flops(target)
    flops = specs.flops_per_step(name, counted_flops, args.mm_size)

    denoiser_timing = None
    if counted == "denoiser_call":
        for _ in range(3 * warmup):  # a full sample is 50 calls: warm up with single calls
            workload["denoiser"]()
        timing = _timing.time_steps(workload["step"], 0, steps)
        denoiser_timing = _timing.time_steps(workload["denoiser"], 1, specs.DENOISER_CALLS)
    else:
        timing = _timing.time_steps(workload["step"], warmup, steps)

    row = assemble_row(
        name,
        workload,
        timing,
        flops,
        warmup=warmup,
        steps=steps,
        runtime=workloads.runtime(),
        loadavg_before=loadavg_before,
        quiet_wait=quiet_wait,
        precision=args.precision,
        flops_by_op=flops_by_op,
        denoiser_timing=denoiser_timing,
        counted_flops=counted_flops,
        peak_flops=peak_flops,
    )
    row["workload_wall_s"] = time.perf_counter() - start
    row["loadavg_after"] = _timing.loadavg()
    row["unix_time"] = int(time.time())
    return row


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload",
        nargs="+",
        required=True,
        help="one or more of: " + ", ".join(specs.DEFAULTS) + ", or 'all'",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default: per workload)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps")
    parser.add_argument("--peak-flops", type=float, default=None, help="FLOP/s taken as 100%%")
    parser.add_argument(
        "--precision",
        choices=specs.PRECISIONS,
        default="float32",
        help="autocast_bfloat16 runs each step under torch.autocast (default float32)",
    )
    _timing.add_sitting_arguments(parser, mm_size=specs.MM_SIZE)
    args = parser.parse_args(argv)
    args.names = list(specs.DEFAULTS) if args.workload == ["all"] else args.workload
    for name in args.names:
        if name not in specs.DEFAULTS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(specs.DEFAULTS)}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1. Received: --steps={args.steps}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0. Received: --warmup={args.warmup}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(specs.THREADS)
    peak = args.peak_flops
    for name in args.names:
        row = run_workload(name, args, peak)
        if name == "matmul_peak" and args.peak_flops is None:
            # The fastest matmul of this invocation is the peak for what follows.
            peak = row["achieved_flops_per_s_best"]
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        log(
            f"{name}: {row['items_per_s']:.2f} items/s (best {row['items_per_s_best']:.2f}), "
            f"cpu_util={row['cpu_util']}"
        )
