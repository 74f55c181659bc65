"""The diffusion training step shared by `unet_train`, `dit_train` and `dit_train_memory`.

One step is `DiffusionModel.train_step` (what `fit` runs per batch) inside one
`tf.function`: draw timesteps `t ~ U[0, 1000)` and `eps ~ N(0, 1)`, noise the
batch with the linear DDPM schedule (betas 1e-4..0.02, 1000 steps: diffusers'
`DDPMScheduler()` defaults), predict eps, MSE, backward, AdamW update, loss
metric. The peers draw `t` and `eps` once, outside the timed step
(`benchmarks.peers`); kzoo's step draws them inside, which adds a few
elementwise ops per image (it is `fit`'s step). AdamW as the peers'
`torch.optim.AdamW(lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)`.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks._timing import Workload, graph_flops
from kzoo.diffusion import DiffusionModel

ADAMW_KWARGS = dict(learning_rate=1e-4, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
ADAMW_TEXT = (
    "keras AdamW(learning_rate=1e-4, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8)"
)
SCHEDULE = {"name": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
STEP_TEXT = (
    "tf.function(DiffusionModel(denoiser, 'linear', 'eps').train_step)(batch): t and eps drawn "
    "in the step, x_t = add_noise(x0, eps, t), mse(denoiser(x_t, t(, y)), eps), AdamW"
)
NOISE_NOTE = (
    "kzoo's step draws t and eps and noises x0 inside the step (what fit runs); the peer draws "
    "them once outside the timed step: a few elementwise ops per image more on kzoo's side"
)


def count_elements(variables):
    """Total number of elements of a list of variables."""
    return sum(int(np.prod(v.shape)) for v in variables)


def compiled_train_step(denoiser, jit_compile, gradient_accumulation_steps=None):
    """A `DiffusionModel` around `denoiser`, compiled with the peers' AdamW, and its step.

    Args:
        denoiser: a kzoo `UNet` or `DiT` (eps prediction; labels if it has `num_classes`).
        jit_compile: passed to `tf.function` around `train_step`.
        gradient_accumulation_steps: None, or the Keras optimizer's
            `gradient_accumulation_steps` (the update runs every that many calls).

    Returns:
        `(model, function)`: the `DiffusionModel` and `tf.function(model.train_step)`.
    """
    # No label dropout: the peers never drop labels (the null row exists all the same).
    model = DiffusionModel(
        denoiser, schedule=dict(SCHEDULE), prediction_type="eps", class_dropout_prob=0.0, seed=0
    )
    optimizer = keras.optimizers.AdamW(
        **ADAMW_KWARGS, gradient_accumulation_steps=gradient_accumulation_steps
    )
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    return model, tf.function(model.train_step, jit_compile=jit_compile)


def train_workload(denoiser, data, jit_compile, item, config, notes=None):
    """Trace, count and run once the training step of `denoiser` on `data`.

    Args:
        denoiser: the kzoo denoiser.
        data: the batch, made once: `x0` or `(x0, labels)` tensors.
        jit_compile: passed to `tf.function`.
        item: what one item is, in words.
        config: row config; the step, schedule and optimizer are added here.
        notes: extra notes for the row (the noise note is always added).

    Returns:
        `Workload` whose step is one optimizer step.
    """
    _, function = compiled_train_step(denoiser, jit_compile)
    x0 = data[0] if isinstance(data, tuple) else data
    t0 = time.perf_counter()
    concrete = function.get_concrete_function(data)
    flops, by_op = graph_flops(concrete.graph)
    function(data)  # compiles (XLA) and runs once; the warm-up steps follow
    trace_s = time.perf_counter() - t0

    def step():
        return function(data)

    return Workload(
        step=step,
        items_per_step=int(x0.shape[0]),
        item=item,
        config={
            **config,
            "batch": int(x0.shape[0]),
            "input_shape": list(x0.shape),
            "schedule": dict(SCHEDULE),
            "loss": "mse(eps_pred, eps)",
            "optimizer": ADAMW_TEXT,
            "step": STEP_TEXT,
        },
        params=count_elements(denoiser.trainable_variables),
        non_trainable_elements=count_elements(denoiser.non_trainable_variables),
        flops_per_step=flops,
        flops_method="traced tf.function graph of train_step: Conv2D, Conv2DBackpropInput, "
        "Conv2DBackpropFilter, MatMul, BatchMatMul from static shapes, 2 FLOP per MAC; norms, "
        "activations, softmax, RNG and the optimizer not counted",
        flops_by_op=by_op,
        trace_s=trace_s,
        notes="; ".join(n for n in (notes, NOISE_NOTE) if n),
    )
