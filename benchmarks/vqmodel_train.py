"""vqmodel_train: one AdamW training step of `kzoo.models.VQVAE()` on a batch of 32 images.

The peer is diffusers' `VQModel` with the same layout and the same 2,781,571
parameters (benchmarks/WORKLOADS.md): levels (64, 128), one res block per level,
mid-block attention, latent 16x16x64, 512 codes. One step is `model.train_step`
(what `fit` runs per batch: forward, MSE + VQ losses, backward, AdamW update,
metric updates) inside one `tf.function`, on a batch already in memory:
`x` (32, 32, 32, 3), target `x`. AdamW(1e-4, weight_decay=0.01, eps=1e-8) as
the peer's torch.optim.AdamW.

FLOPs: counted from the traced step (`_timing.graph_flops`): every Conv2D and
its two gradient ops, the attention and projection matmuls and the VQ distance
matmul, 2 FLOP per multiply-add; the first conv has no input gradient, as in
torch. Norms, activations and the optimizer are not counted, as in the peer's
FlopCounterMode figure.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks._timing import Workload, graph_flops
from kzoo.models import VQVAE

DEFAULTS = {"vqmodel_train": (2, 15)}
BATCH = 32


def build(name, jit_compile, batch=BATCH, model_kwargs=None):
    """Build the training step.

    Args:
        name: "vqmodel_train".
        jit_compile: passed to `tf.function` around `model.train_step`.
        batch: images per step.
        model_kwargs: `VQVAE` arguments (defaults: the benchmark configuration).

    Returns:
        `Workload` whose step is one optimizer step.
    """
    model = VQVAE(**(model_kwargs or {}))
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01, epsilon=1e-8)
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, *model.image_shape), dtype=np.float32))
    data = (x, x)

    function = tf.function(model.train_step, jit_compile=jit_compile)
    t0 = time.perf_counter()
    concrete = function.get_concrete_function(data)
    flops, by_op = graph_flops(concrete.graph)
    function(data)  # compiles (XLA) and runs once; the warm-up steps follow
    trace_s = time.perf_counter() - t0

    def step():
        return function(data)

    return Workload(
        step=step,
        items_per_step=batch,
        item=f"{'x'.join(map(str, model.image_shape))} image",
        config={
            "model": "kzoo.models.VQVAE",
            "kwargs": model.get_config(),
            "batch": batch,
            "input_shape": [batch, *model.image_shape],
            "loss": "mse(recon, x) + commitment 0.25 + codebook 1.0 (kzoo VectorQuantizer)",
            "optimizer": "keras AdamW(learning_rate=1e-4, weight_decay=0.01, beta_1=0.9, "
            "beta_2=0.999, epsilon=1e-8)",
            "step": "tf.function(model.train_step)((x, x))",
        },
        params=model.count_params(),
        non_trainable_elements=sum(int(np.prod(v.shape)) for v in model.non_trainable_variables),
        flops_per_step=flops,
        flops_method="traced tf.function graph of train_step: Conv2D, Conv2DBackpropInput, "
        "Conv2DBackpropFilter, MatMul, BatchMatMul from static shapes, 2 FLOP per MAC; norms, "
        "activations and the optimizer not counted",
        flops_by_op=by_op,
        trace_s=trace_s,
    )
