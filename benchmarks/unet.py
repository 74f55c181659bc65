"""unet_train, unet_sample(_b1): `kzoo.models.UNet` at the peer's layout (DDPM-CIFAR10, half width).

The peer is diffusers' `UNet2DModel` of benchmarks/peers/: 32x32x3, channels
(64, 128, 128, 128), 2 res blocks per level, one-head self-attention at 16x16
and in the 4x4 middle, GroupNorm 32, time embedding 256, dropout 0; kzoo's
`UNet` has the same layout and the same 8,952,067 parameters (asserted here).

- **unet_train**: one AdamW step on the eps-MSE of a batch of 32 images, as
  `benchmarks._diffusion` describes (`DiffusionModel.train_step` in one
  `tf.function`; linear betas 1e-4..0.02, 1000 steps).
- **unet_sample**: one full 50-step DDIM sample (eta 0) of a batch of 8 from
  fixed noise, the whole loop in one `tf.function` (`kzoo.diffusion.sample`, a
  `fori_loop`). Timesteps as the peer's `DDIMScheduler()` ("leading" spacing:
  980, 960, ..., 0; the last step goes to alpha_cumprod = 1). The peer also
  clips its x0 estimate to [-1, 1] (`clip_sample=True`); kzoo's DDIM does not
  (elementwise, a few ops per step). One denoiser call (batch 8, t = 999) is
  also timed on its own, as by the peer (`denoiser_call` in the row).
- **unet_sample_b1**: the same sample for one image (batch 1), the latency of a
  single request, where per-step dispatch is a larger share of each step than at
  batch 8 (kzoo's addition to benchmarks/WORKLOADS.md; its peer is the same
  diffusers loop at batch 1).

FLOPs from the traced graphs (`_timing.graph_flops`): for `unet_train` every
Conv2D and its gradient ops, the attention and projection matmuls, 2 FLOP per
multiply-add; for `unet_sample` one denoiser call's count times 50 (the loop is a
`While` whose body the counter does not enter; the peer counts the same way).
"""

import time

import numpy as np
import tensorflow as tf

from benchmarks._diffusion import count_elements, train_workload
from benchmarks._timing import Workload, graph_flops
from kzoo.diffusion import DDIMSampler, make_schedule, sample
from kzoo.models import UNet

DEFAULTS = {"unet_train": (1, 10), "unet_sample": (1, 3), "unet_sample_b1": (1, 5)}
TRAIN_BATCH = 32
SAMPLE_BATCH = {"unet_sample": 8, "unet_sample_b1": 1}
NUM_INFERENCE_STEPS = 50
# benchmarks.peers.specs.UNET_KW: UNet2DModel(sample_size=32, block_out_channels=(64, 128, 128,
# 128), layers_per_block=2, AttnDownBlock2D / AttnUpBlock2D at 16x16, attention_head_dim=None).
UNET_KWARGS = dict(
    image_shape=(32, 32, 3),
    channels=(64, 128, 128, 128),
    num_res_blocks=2,
    attention_resolutions=(16,),
    norm_groups=32,
    time_embedding_dim=256,
    num_heads=1,
    mid_attention=True,
    dropout=0.0,
)
PEER_PARAMS = 8_952_067  # diffusers UNet2DModel(**benchmarks.peers.specs.UNET_KW)


def make_unet(model_kwargs=None):
    """The benchmark's `UNet` (or one built from `model_kwargs`, for tests).

    With the benchmark configuration the parameter count must be the peer's.
    """
    unet = UNet(**(model_kwargs or UNET_KWARGS))
    if model_kwargs is None and unet.count_params() != PEER_PARAMS:
        raise AssertionError(
            f"The benchmark UNet must have the peer's {PEER_PARAMS:,} parameters. "
            f"Received: {unet.count_params():,}"
        )
    return unet


def build(name, jit_compile, batch=None, model_kwargs=None):
    """Build `unet_train`, `unet_sample` or `unet_sample_b1`.

    Args:
        name: "unet_train", "unet_sample" or "unet_sample_b1".
        jit_compile: passed to `tf.function`.
        batch: images per step (default 32 for training, 8 for sampling, 1 for
            `unet_sample_b1`).
        model_kwargs: `UNet` arguments (default: the benchmark configuration; tests
            pass a tiny one).

    Returns:
        `Workload`.
    """
    unet = make_unet(model_kwargs)
    rng = np.random.default_rng(0)
    config = {"model": "kzoo.models.UNet", "kwargs": unet.get_config(), "peer_params": PEER_PARAMS}
    if name == "unet_train":
        batch = batch or TRAIN_BATCH
        x0 = tf.constant(rng.standard_normal((batch, *unet.image_shape), dtype=np.float32))
        return train_workload(unet, x0, jit_compile, _item(unet), config)
    return _build_sample(unet, jit_compile, batch or SAMPLE_BATCH[name], rng, config)


def _item(unet):
    return f"{'x'.join(map(str, unet.image_shape))} image"


def _build_sample(unet, jit_compile, batch, rng, config):
    sampler = DDIMSampler(make_schedule("linear"), eta=0.0, timestep_spacing="leading")
    noise = tf.constant(rng.standard_normal((batch, *unet.image_shape), dtype=np.float32))
    timesteps = tf.fill((batch,), 999)

    def denoiser(x, t, conditioning):
        return unet([x, t], training=False)

    generate = tf.function(
        lambda z: sample(denoiser, sampler, z, NUM_INFERENCE_STEPS), jit_compile=jit_compile
    )
    denoise = tf.function(lambda x, t: denoiser(x, t, None), jit_compile=jit_compile)
    t0 = time.perf_counter()
    call_flops, by_op = graph_flops(denoise.get_concrete_function(noise, timesteps).graph)
    generate(noise)  # traces, compiles (XLA) and runs once; the warm-up steps follow
    trace_s = time.perf_counter() - t0
    denoise(noise, timesteps)

    return Workload(
        step=lambda: generate(noise),
        items_per_step=batch,
        item=f"{_item(unet)} ({NUM_INFERENCE_STEPS}-step DDIM sample)",
        config={
            **config,
            "sampler": "kzoo.diffusion.DDIMSampler",
            "sampler_config": sampler.get_config(),
            "num_inference_steps": NUM_INFERENCE_STEPS,
            "eta": 0.0,
            "batch": batch,
            "input_shape": list(noise.shape),
            "step": "tf.function(sample(unet, DDIMSampler, noise, 50)): one fori_loop, "
            "no gradients (training=False)",
        },
        params=count_elements(unet.trainable_variables),
        non_trainable_elements=count_elements(unet.non_trainable_variables),
        flops_per_step=NUM_INFERENCE_STEPS * call_flops,
        flops_method=f"traced graph of one denoiser call (batch {batch}) x "
        f"{NUM_INFERENCE_STEPS}, 2 FLOP per MAC (Conv2D, MatMul, BatchMatMul); sampler "
        "arithmetic not counted, as the peer",
        flops_by_op={
            op: NUM_INFERENCE_STEPS * v if isinstance(v, int) else v for op, v in by_op.items()
        },
        trace_s=trace_s,
        notes="timesteps as diffusers DDIMScheduler() ('leading', 980..0); the peer also clips "
        "x0 to [-1, 1] (clip_sample=True), kzoo does not",
        extra={
            "denoiser_call": lambda: denoise(noise, timesteps),
            "denoiser_call_flops": call_flops,
            "denoiser_calls_per_step": NUM_INFERENCE_STEPS,
        },
    )
