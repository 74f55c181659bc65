"""matmul_peak: one n x n x n float32 matmul in TensorFlow, the attainable peak FLOP/s.

Its fastest step (`achieved_flops_per_s_best`) is the 100% of `pct_of_peak` for
every other row, kzoo's and the peers' (benchmarks/WORKLOADS.md, "Peak").
"""

import time

import numpy as np
import tensorflow as tf

from benchmarks._timing import Workload

DEFAULTS = {"matmul_peak": (5, 50)}


def build(name, jit_compile, mm_size=2048):
    """Build the matmul step.

    Args:
        name: "matmul_peak".
        jit_compile: wrap the step in `tf.function(jit_compile=...)`.
        mm_size: matrix size n.

    Returns:
        `Workload` whose step computes `C = A @ B` and waits for C.
    """
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((mm_size, mm_size), dtype=np.float32))
    b = tf.constant(rng.standard_normal((mm_size, mm_size), dtype=np.float32))
    matmul = tf.function(tf.linalg.matmul, jit_compile=jit_compile)
    t0 = time.perf_counter()
    matmul(a, b)
    trace_s = time.perf_counter() - t0

    def step():
        return matmul(a, b)

    return Workload(
        step=step,
        items_per_step=1,
        item="matmul",
        config={
            "op": "tf.function(tf.linalg.matmul)(A, B)",
            "shape": [mm_size, mm_size, mm_size],
            "dtype": "float32",
        },
        params=0,
        non_trainable_elements=0,
        flops_per_step=2 * mm_size**3,
        flops_method="analytic 2*n^3",
        trace_s=trace_s,
    )
