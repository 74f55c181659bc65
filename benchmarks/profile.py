"""Where a workload's step spends its time: TensorFlow profiler, summed per op and per part.

Usage:
    python -m benchmarks.profile --workload vqmodel_train [--steps 5] [--warmup 3]
        [--jit-compile false] [--logdir DIR] [--top 15]

Runs the workload's step (built as `benchmarks.run` builds it) `--warmup` times,
then `--steps` times under `tf.profiler.experimental`, and prints one JSON line:
the share of the executed op time per op type (`_MklNativeConv2DBackpropInput`,
`Sum`, ...) and per model part, forward and backward apart. Parts come from the
op's name scope: `groupnorm` (kzoo GroupNorm incl. its SiLU), `attention`,
`vq`, `conv` (conv and bias ops elsewhere), `optimizer`, else `other`. The
profile itself stays in `--logdir` (default: a temporary directory) for
TensorBoard's profile tab. Op times are summed over TensorFlow's compute
threads, so the shares are of CPU time, not of wall time.
"""

import argparse
import collections
import glob
import importlib
import json
import os
import re
import sys
import tempfile

from benchmarks.run import MEMORY_WORKLOADS, WORKLOAD_MODULES

_DIGITS = re.compile(r"_\d+$")


def _part(path, op):
    """The model part of an executed op, from its name scope and type."""
    backward = path.startswith("gradient_tape/")
    scopes = [_DIGITS.sub("", scope) for scope in path.split("/")]
    if any(s.startswith("norm") for s in scopes):
        part = "groupnorm"
    elif any("attn" in s or "attention" in s for s in scopes):
        part = "attention"
    elif "vq" in scopes or any(s.startswith("quantizer") for s in scopes):
        part = "vq"
    elif "Conv2D" in op or op in ("BiasAdd", "BiasAddGrad"):
        part = "conv"
    elif any(s.startswith(("adam", "sgd", "optimizer")) for s in scopes):
        part = "optimizer"
    else:
        part = "other"
    return f"{part} ({'backward' if backward else 'forward'})"


def summarize(xplane_path, top=15):
    """Per-op-type and per-part shares of the op time recorded in an `.xplane.pb`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    by_op, by_part = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith("ExecutorState"):
                    continue  # executor bookkeeping, not an op
                path, op = name.rsplit(":", 1)
                seconds = event.duration_ps / 1e12
                by_op[op] += seconds
                by_part[_part(path, op)] += seconds
    total = sum(by_op.values())
    if not total:
        raise RuntimeError(f"No TensorFlow op events in {xplane_path}")

    def shares(counter, limit=None):
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(limit)}

    return {
        "op_seconds": round(total, 3),
        "share_by_part_pct": shares(by_part),
        "share_by_op_pct": shares(by_op, top),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload", required=True, choices=sorted(set(WORKLOAD_MODULES) - set(MEMORY_WORKLOADS))
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jit-compile", choices=("true", "false"), default="false")
    parser.add_argument("--logdir", default=None)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1. Received: --steps={args.steps}")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    module = importlib.import_module(WORKLOAD_MODULES[args.workload])
    workload = module.build(args.workload, args.jit_compile == "true")
    for _ in range(args.warmup):
        workload.step()
    logdir = args.logdir or tempfile.mkdtemp(prefix=f"kzoo-profile-{args.workload}-")
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(args.steps):
            workload.step()
    finally:
        tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    row = {
        "workload": args.workload,
        "jit_compile": args.jit_compile == "true",
        "steps": args.steps,
        "logdir": logdir,
        **summarize(paths[-1], args.top),
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
