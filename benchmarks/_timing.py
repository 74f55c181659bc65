"""Timing, machine-load and FLOP-accounting helpers shared by the benchmark workloads.

kzoo's side (`benchmarks.run`) and the PyTorch peers (`benchmarks.peers`) both time
with these, so a kzoo row and a peer row mean the same thing: one
`time.perf_counter()` sample per step, inputs generated once and reused, `cpu_util`
= process CPU seconds / wall seconds over the timed loop, `achieved_flops_per_s` =
`flops_per_step / median_s_per_step`. Standard library only at import: the peers
import it in a venv without TensorFlow.
"""

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

# Ops whose FLOPs are counted: matmul, convolution and their gradients, 2 FLOP per
# multiply-add. Elementwise ops, norms, softmax, segment sums and the optimizer are
# not counted, as in torch's FlopCounterMode that the peers use (a lower bound).
_MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
_CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


@dataclasses.dataclass
class Workload:
    """A built benchmark: one callable step plus what a result row needs to describe it.

    Args:
        step: callable with no arguments that runs one step to completion.
        items_per_step: items (images, latent maps) processed per step.
        item: what one item is, in words.
        config: JSON-serialisable description of the model and the step.
        params: trainable parameter count (torch's `parameters()`).
        non_trainable_elements: elements of non-trainable state such as EMA
            codebooks (torch's buffers).
        flops_per_step: FLOPs of one step (see `graph_flops`), or None.
        flops_method: how `flops_per_step` was obtained.
        flops_by_op: FLOPs per op type, or None.
        trace_s: seconds spent tracing/compiling before the first step.
        notes: anything a reader of the row must know (e.g. a different estimator).
    """

    step: Callable[[], object]
    items_per_step: int
    item: str
    config: dict
    params: int
    non_trainable_elements: int
    flops_per_step: float | None
    flops_method: str
    flops_by_op: dict | None = None
    trace_s: float | None = None
    notes: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)


def loadavg():
    """`/proc/loadavg` as a string, or None where it does not exist."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model():
    """The CPU's model name from `/proc/cpuinfo`, else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load1():
    """The 1-minute load average as a float, or None."""
    text = loadavg()
    return float(text.split()[0]) if text else None


def wait_for_low_load(threshold=0.5, max_wait_s=300.0, poll_s=5.0):
    """Sleep until the 1-minute load average is below `threshold`, at most `max_wait_s`.

    Args:
        threshold: load average to wait for.
        max_wait_s: give up after this many seconds (the row then records the load).
        poll_s: seconds between checks.

    Returns:
        dict with `threshold`, `waited_s`, `reached` and the final `loadavg`.
    """
    start = time.perf_counter()
    while True:
        load = load1()
        waited = time.perf_counter() - start
        if load is None or load < threshold or waited >= max_wait_s:
            return {
                "threshold": threshold,
                "waited_s": round(waited, 1),
                "reached": None if load is None else load < threshold,
                "loadavg": loadavg(),
            }
        time.sleep(poll_s)


def add_sitting_arguments(parser, mm_size):
    """The options every sitting script takes, on kzoo's side and the peers': `--out`,
    `--mm-size` (matmul_peak's n), `--wait-load` and `--wait-max` (see
    `wait_for_low_load`)."""
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--mm-size", type=int, default=mm_size, help="matmul_peak's n")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each workload, wait until the 1-minute load average is below LOAD",
    )
    parser.add_argument(
        "--wait-max", type=float, default=300.0, help="give up waiting for low load after this (s)"
    )


def _cpu_jiffies():
    """Whole-machine CPU time split from `/proc/stat` (busy, idle, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def _process_cpu_s():
    # os.times() counts this process only (children excluded), user + system.
    t = os.times()
    return t.user + t.system


def percentile(values, q):
    """q-th percentile with linear interpolation (numpy's default)."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def time_steps(step, warmup, steps):
    """Run `step()` `warmup` times untimed, then `steps` times, timing each call.

    Args:
        step: callable with no arguments; it must return only when its work is done.
        warmup: untimed calls first.
        steps: timed calls, `>= 1`.

    Returns:
        dict of per-step times (`times_s`), median/min/mean/p10/p90 seconds,
        `cpu_util` (process CPU s / wall s, 2.0 = both cores ours), the
        machine's busy/idle/steal split and `others_cpu_per_s` (CPU seconds per
        second used by other processes; > ~0.1 means a contaminated figure).
    """
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1. Received: steps={steps}")
    for _ in range(warmup):
        step()
    times = []
    jiffies0 = _cpu_jiffies()
    cpu0, wall0 = _process_cpu_s(), time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cpu1, wall1 = _process_cpu_s(), time.perf_counter()
    jiffies1 = _cpu_jiffies()
    wall = max(wall1 - wall0, 1e-9)
    split, others = None, None
    if jiffies0 and jiffies1:
        delta = {k: jiffies1[k] - jiffies0[k] for k in jiffies0}
        total = sum(delta.values()) or 1
        split = {f"{k}_pct": round(100.0 * v / total, 1) for k, v in delta.items()}
        busy_s = delta["busy"] / os.sysconf("SC_CLK_TCK")
        others = round(max(busy_s - (cpu1 - cpu0), 0.0) / wall, 3)
    return {
        "times_s": [round(t, 6) for t in times],
        "median_s_per_step": statistics.median(times),
        "min_s_per_step": min(times),
        "mean_s_per_step": statistics.fmean(times),
        "p10_s_per_step": percentile(times, 10),
        "p90_s_per_step": percentile(times, 90),
        "cpu_util": round((cpu1 - cpu0) / wall, 3),
        "machine_cpu_during_timed": split,
        "others_cpu_per_s": others,
    }


def rates(timing, items_per_step, flops_per_step, peak_flops=None):
    """Items/s and FLOP/s from a `time_steps` result (median and best step).

    Args:
        timing: dict returned by `time_steps`.
        items_per_step: items per step.
        flops_per_step: FLOPs per step, or None.
        peak_flops: FLOP/s taken as 100% for `pct_of_peak`, or None.

    Returns:
        dict with `items_per_s`, `items_per_s_best`, `achieved_flops_per_s(_best)`,
        `peak_flops_per_s_used` and `pct_of_peak(_best)` (None where unknown).
    """
    med, best = timing["median_s_per_step"], timing["min_s_per_step"]
    out = {
        "items_per_step": items_per_step,
        "items_per_s": items_per_step / med,
        "items_per_s_best": items_per_step / best,
        "achieved_flops_per_s": flops_per_step / med if flops_per_step else None,
        "achieved_flops_per_s_best": flops_per_step / best if flops_per_step else None,
        "peak_flops_per_s_used": peak_flops,
        "pct_of_peak": None,
        "pct_of_peak_best": None,
    }
    if peak_flops and flops_per_step:
        out["pct_of_peak"] = 100.0 * out["achieved_flops_per_s"] / peak_flops
        out["pct_of_peak_best"] = 100.0 * out["achieved_flops_per_s_best"] / peak_flops
    return out


# --------------------------------------------------------------------------
# FLOP accounting from a traced TensorFlow graph
# --------------------------------------------------------------------------
def _dims(tensor):
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        return None
    return shape.as_list()


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def _op_flops(op):
    """FLOPs of one graph op (2 per multiply-add), 0 for uncounted ops, None if unknown."""
    kind = op.type
    if kind in _MATMUL_OPS:
        a, out = _dims(op.inputs[0]), _dims(op.outputs[0])
        if a is None or out is None:
            return None
        if kind == "MatMul":
            inner = a[0] if op.get_attr("transpose_a") else a[1]
        else:
            inner = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * _prod(out) * inner
    if kind in _CONV_OPS:
        # Forward and both gradients do the same multiply-adds: every output
        # position times the whole filter. The filter is input 1 of all three ops
        # (a shape vector for Conv2DBackpropFilter, whose dims come from its output).
        if kind == "Conv2DBackpropFilter":
            filt = _dims(op.outputs[0])
            out = _dims(op.inputs[2])
        else:
            filt = _dims(op.inputs[1])
            out = _dims(op.outputs[0]) if kind == "Conv2D" else _dims(op.inputs[2])
        if filt is None or out is None:
            return None
        data_format = op.get_attr("data_format").decode()
        positions = _prod(out) // (out[-1] if data_format == "NHWC" else out[1])
        return 2 * positions * _prod(filt)
    if kind == "Einsum":
        return _einsum_flops(op)
    return 0


def _einsum_flops(op):
    equation = op.get_attr("equation").decode().replace(" ", "")
    lhs = equation.split("->")[0].split(",")
    sizes = {}
    for term, tensor in zip(lhs, op.inputs, strict=True):
        dims = _dims(tensor)
        if dims is None or "." in term:
            return None
        sizes.update(zip(term, dims, strict=True))
    return 2 * _prod(sizes.values()) if len(lhs) == 2 else 0


def graph_flops(graph):
    """Matmul and convolution FLOPs (forward and gradient ops) of a traced step.

    Walks the ops of a `tf.function`'s graph that its outputs and side effects
    (variable updates) depend on, including functions it calls, and adds
    `2 * multiply-adds` for MatMul / BatchMatMul / Einsum / Conv2D and the two
    Conv2D gradients, from their static shapes. Ops nothing depends on are left
    out, as TF prunes them before running: a Conv2D gradient builds both the
    input and the filter gradient, but the first conv's input gradient is never
    used. The graph is the one before Grappler or XLA fuse ops, so the count is
    the same with and without `jit_compile`.

    Args:
        graph: a `FuncGraph`, e.g. `tf_function.get_concrete_function(...).graph`.

    Returns:
        `(total, by_op)`: total FLOPs and a dict of FLOPs per op type. Ops whose
        shapes are not static are listed in `by_op["unknown_shape_ops"]`.
    """
    by_op, unknown = {}, []
    _walk(graph, by_op, unknown, seen=set())
    total = sum(v for v in by_op.values())
    by_op = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))
    if unknown:
        by_op["unknown_shape_ops"] = unknown
    return total, by_op


def _live_ops(graph):
    """Ops that the graph's outputs or control outputs depend on."""
    stack = [t.op for t in graph.outputs] + list(getattr(graph, "control_outputs", []))
    live = set()
    while stack:
        op = stack.pop()
        if op in live:
            continue
        live.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return live


def _walk(graph, by_op, unknown, seen):
    live = _live_ops(graph)
    for op in graph.get_operations():
        if op not in live:
            continue
        if op.type in _CALL_OPS:
            name = op.get_attr("f").name
            function = graph._get_function(name)  # no public accessor
            if function is not None and name not in seen:
                # A function called N times is counted N times; `seen` guards recursion.
                _walk(function.graph, by_op, unknown, seen | {name})
            continue
        flops = _op_flops(op)
        if flops is None:
            unknown.append(f"{op.type}:{op.name}")
        elif flops:
            by_op[op.type] = by_op.get(op.type, 0) + flops
