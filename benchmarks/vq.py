"""vq_fwd_bwd, vq_fwd_bwd_ste, vq_learnable: `kzoo.layers.VectorQuantizer` forward + backward.

Same shapes as the peer (vector-quantize-pytorch, see benchmarks/WORKLOADS.md):
dim 64, 512 codes, commitment 0.25, input `x` of shape (64, 256, 64), i.e. a
batch of 64 latent maps of 16x16 vectors. One step is

    q = vq(x, training=True); total = sum(q) + sum(vq.losses)
    grads = d total / d (x, trainable codebook)

inside one `tf.function`; with EMA (`decay=0.99`) the codebook update happens in
the forward call. The gradient estimator follows the peer's: the rotation trick
(`gradient_estimator="rotation"`, Fifty et al. 2024,
https://arxiv.org/abs/2410.06424) for `vq_fwd_bwd` and `vq_learnable`, the
straight-through estimator for `vq_fwd_bwd_ste`. `vq_learnable` has no EMA: the
codebook is a trainable weight with codebook + commitment loss, and the step
returns gradients for `x` and the codebook (no optimizer step, as in the peer).
Everything else is the layer's default (no k-means init, no dead-code restart).

FLOPs: the nearest-code search is one (N, D) x (D, K) matmul, 2*N*K*D =
1.07 GFLOP per step. No backward matmul runs: the distances reach the output
only through integer indices, and the codebook gradient of `take` is a segment
sum. The count comes from the traced graph (`_timing.graph_flops`).
"""

import time

import numpy as np
import tensorflow as tf

from benchmarks._timing import Workload, graph_flops
from kzoo.layers import VectorQuantizer

DEFAULTS = {"vq_fwd_bwd": (3, 30), "vq_fwd_bwd_ste": (3, 30), "vq_learnable": (3, 30)}

VARIANTS = {
    "vq_fwd_bwd": dict(decay=0.99, gradient_estimator="rotation"),
    "vq_fwd_bwd_ste": dict(decay=0.99, gradient_estimator="ste"),
    "vq_learnable": dict(decay=None, gradient_estimator="rotation"),
}
PEERS = {
    "vq_fwd_bwd": "VectorQuantize(dim=64, codebook_size=512, decay=0.99, "
    "commitment_weight=0.25), rotation_trick=True",
    "vq_fwd_bwd_ste": "VectorQuantize(..., decay=0.99, rotation_trick=False)",
    "vq_learnable": "VectorQuantize(..., ema_update=False, learnable_codebook=True)",
}
INPUT_SHAPE = (64, 256, 64)
CODEBOOK_SIZE = 512
EMBEDDING_DIM = 64


def build(name, jit_compile, input_shape=INPUT_SHAPE):
    """Build one VQ workload.

    Args:
        name: one of `VARIANTS`.
        jit_compile: passed to `tf.function`.
        input_shape: `(batch, vectors per map, 64)`; the benchmark uses (64, 256, 64).

    Returns:
        `Workload` whose step runs forward + backward once.
    """
    variant = VARIANTS[name]
    vq = VectorQuantizer(CODEBOOK_SIZE, EMBEDDING_DIM, commitment_cost=0.25, name="vq", **variant)
    vq.build(input_shape)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal(input_shape, dtype=np.float32))
    trainable = list(vq.trainable_variables)

    def fwd_bwd(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            quantized = vq(inputs, training=True)
            total = tf.reduce_sum(quantized) + tf.add_n(vq.losses)
        # Returning `total` keeps the whole forward alive, as in the eager peer.
        return total, tape.gradient(total, [inputs, *trainable])

    function = tf.function(fwd_bwd, jit_compile=jit_compile)
    t0 = time.perf_counter()
    concrete = function.get_concrete_function(x)
    flops, by_op = graph_flops(concrete.graph)
    function(x)  # compiles (XLA) and runs once; the warm-up steps follow
    trace_s = time.perf_counter() - t0

    def step():
        return function(x)

    n_vectors = int(np.prod(input_shape[:-1]))
    if variant["decay"]:
        step_text = (
            "q = vq(x, training=True) (EMA update inside); grads of sum(q) + sum(losses) wrt x"
        )
    else:
        step_text = (
            "q = vq(x, training=True); grads of sum(q) + sum(losses) wrt x and codebook "
            "(no optimizer step)"
        )
    side = int(np.sqrt(input_shape[1]))
    return Workload(
        step=step,
        items_per_step=input_shape[0],
        item=f"{side}x{side}x{input_shape[2]} latent map",
        config={
            "layer": "kzoo.layers.VectorQuantizer",
            "kwargs": vq.get_config(),
            "input_shape": list(input_shape),
            "input_layout": "(batch, h*w, channels)",
            "estimator": variant["gradient_estimator"],
            "step": step_text,
            "peer": PEERS[name],
        },
        params=_count(trainable),
        non_trainable_elements=_count(vq.non_trainable_variables),
        flops_per_step=flops,
        flops_method="traced tf.function graph: MatMul/Conv2D (+ their gradient ops) "
        "from static shapes, 2 FLOP per MAC; segment sums, top_k and elementwise not counted",
        flops_by_op=by_op,
        trace_s=trace_s,
        extra={"vectors_per_step": n_vectors},
    )


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)
