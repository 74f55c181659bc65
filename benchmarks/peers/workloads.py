"""The peers' torch workloads: one builder per workload of `benchmarks.peers.specs`.

Each builder takes (name, args) and returns a dict: `step` (a callable that runs
one step to completion), `items_per_step`, `item`, `peer` (library, version),
`config`, `counts` (parameters and buffers), and for the sampling workloads
`denoiser` (one denoiser call of the same batch). Inputs (data, noise, timesteps,
labels) are made once with seed 0 and reused every step, so the timing covers the
model only. Training steps are zero_grad(set_to_none) + forward + loss + backward +
AdamW step. Eager mode, no compile; float32 unless `with_autocast` wraps the step
in `torch.autocast("cpu", dtype=torch.bfloat16)` (weights and optimizer stay
float32, as under Keras' mixed_bfloat16 policy).

This module imports torch; `benchmarks.peers.harness` imports it only to run.
"""

import functools
import importlib.metadata

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from benchmarks.peers import specs

aten = torch.ops.aten


def _register_missing_flop_formulas():
    """FLOP formulas torch 2.13 lacks on CPU: its flash attention and cdist's kernel.

    The same formulas as the GPU attention ops; for `_euclidean_dist` the
    x1 @ x2^T product, which dominates.
    """
    registry = flop_counter.flop_registry
    if aten._scaled_dot_product_flash_attention_for_cpu not in registry:

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
        def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if aten._scaled_dot_product_flash_attention_for_cpu_backward not in registry:

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
        def _sdpa_cpu_backward(
            grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
        ):
            return flop_counter.sdpa_backward_flop_count(
                grad_out_shape, query_shape, key_shape, value_shape
            )

    if aten._euclidean_dist not in registry:

        @register_flop_formula(aten._euclidean_dist)
        def _euclidean(x1_shape, x2_shape, *args, out_shape=None, **kwargs):
            batch = 1
            for size in x1_shape[:-2]:
                batch *= size
            n, d = x1_shape[-2], x1_shape[-1]
            return 2 * batch * n * x2_shape[-2] * d


_register_missing_flop_formulas()


def count_flops(step):
    """Run `step` once under FlopCounterMode; returns (total FLOPs, FLOPs per op)."""
    with FlopCounterMode(display=False) as counter:
        step()
    per_op = {}
    for ops in counter.get_flop_counts().values():
        for op, n in ops.items():
            per_op[str(op)] = max(per_op.get(str(op), 0), n)  # 'Global' holds the totals
    return counter.get_total_flops(), dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def count_params(module):
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers())
    return {"params": params, "trainable_params": trainable, "buffer_elements": buffers}


def diffusers_config(model):
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dict(model.config).items()
        if not k.startswith("_")
    }


def _noised(x0):
    """(x_t, eps, t) with diffusers' DDPMScheduler() defaults, made once."""
    from diffusers import DDPMScheduler

    noise = torch.randn_like(x0)
    t = torch.randint(0, specs.NUM_TRAIN_TIMESTEPS, (x0.shape[0],))
    return DDPMScheduler().add_noise(x0, noise, t), noise, t


def build_matmul_peak(name, args):
    n = args.mm_size
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

    def step():
        torch.mm(a, b, out=out)

    return dict(
        step=step,
        items_per_step=1,
        item="matmul",
        peer=("torch", torch.__version__),
        config={"op": "torch.mm(A, B, out=C)", "shape": [n, n, n], "dtype": "float32"},
        counts={"params": 0, "trainable_params": 0, "buffer_elements": 0},
    )


def build_vq(name, args):
    """vq_fwd_bwd(_ste), vq_learnable: q, idx, loss = vq(x); (q.sum() + loss).backward()."""
    from vector_quantize_pytorch import VectorQuantize

    kwargs = {**specs.VQ_KWARGS, **specs.VQ_VARIANTS[name]}
    vq = VectorQuantize(**kwargs).train()
    x = torch.randn(*specs.VQ_INPUT_SHAPE, requires_grad=True)

    def step():
        x.grad = None
        vq.zero_grad(set_to_none=True)
        quantized, _indices, loss = vq(x)
        (quantized.sum() + loss).backward()

    config = dict(kwargs)
    config.update(
        input_shape=list(specs.VQ_INPUT_SHAPE),
        input_layout="(batch, h*w, channels)",
        resolved={
            "ema_update": vq._codebook.ema_update,
            "learnable_codebook": vq.learnable_codebook,
            "rotation_trick": vq.rotation_trick,
            "kmeans_init": False,
            "use_cosine_sim": False,
            "decay": vq._codebook.decay,
        },
        step="q, idx, loss = vq(x); (q.sum() + loss).backward()",
    )
    batch, vectors, _ = specs.VQ_INPUT_SHAPE
    return dict(
        step=step,
        items_per_step=batch,
        item="16x16x64 latent map",
        vectors_per_step=batch * vectors,
        peer=("vector-quantize-pytorch", version("vector-quantize-pytorch")),
        config=config,
        counts=count_params(vq),
    )


def _train(model, forward, batch, item, config):
    """One AdamW step on `forward()`'s loss, with the shared config fields."""
    optimizer = torch.optim.AdamW(model.parameters(), **specs.ADAMW)

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward().backward()
        optimizer.step()

    return dict(
        step=step,
        items_per_step=batch,
        item=item,
        peer=("diffusers", version("diffusers")),
        config={**config, "batch": batch, "optimizer": f"AdamW{specs.ADAMW}"},
        counts=count_params(model),
    )


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**specs.UNET_KW)


def build_unet_train(name, args):
    unet = make_unet().train()
    batch = specs.UNET_TRAIN_BATCH
    x_t, noise, t = _noised(torch.randn(batch, 3, 32, 32))
    config = {"model": "UNet2DModel", "kwargs": diffusers_config(unet)}
    config["loss"] = "mse(eps_pred, eps)"
    return _train(
        unet, lambda: F.mse_loss(unet(x_t, t).sample, noise), batch, "32x32x3 image", config
    )


def build_unet_sample(name, args):
    """unet_sample (batch 8), unet_sample_b1 (batch 1): a 50-step DDIM sample, eta 0."""
    from diffusers import DDIMScheduler

    unet = make_unet().eval()
    scheduler = DDIMScheduler()
    batch, num_steps = specs.SAMPLE_BATCH[name], specs.NUM_INFERENCE_STEPS
    x_T = torch.randn(batch, 3, 32, 32)
    t_single = torch.tensor([999] * batch)

    @torch.no_grad()
    def sample():
        scheduler.set_timesteps(num_steps)
        x = x_T
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        return x

    @torch.no_grad()
    def denoiser_call():
        return unet(x_T, t_single).sample

    return dict(
        step=sample,
        items_per_step=batch,
        item=f"32x32x3 image ({num_steps}-step DDIM sample)",
        denoiser=denoiser_call,
        denoiser_calls_per_step=num_steps,
        peer=("diffusers", version("diffusers")),
        config={
            "model": "UNet2DModel",
            "kwargs": diffusers_config(unet),
            "scheduler": "DDIMScheduler",
            "scheduler_config": diffusers_config(scheduler),
            "num_inference_steps": num_steps,
            "eta": 0.0,
            "batch": batch,
            "grad": "torch.no_grad()",
        },
        counts=count_params(unet),
    )


def build_dit_train(name, args):
    from diffusers import DiTTransformer2DModel

    dit = DiTTransformer2DModel(**specs.DIT_KW).train()
    batch = specs.DIT_BATCH
    x_t, noise, t = _noised(torch.randn(batch, 4, 32, 32))
    labels = torch.randint(0, specs.DIT_KW["num_embeds_ada_norm"], (batch,))
    patches = specs.DIT_KW["sample_size"] // specs.DIT_KW["patch_size"]
    config = {
        "model": "DiTTransformer2DModel (DiT-S/2)",
        "kwargs": diffusers_config(dit),
        "tokens": patches**2,
        "hidden": specs.DIT_KW["num_attention_heads"] * specs.DIT_KW["attention_head_dim"],
        "loss": "mse(eps_pred, eps)",
    }

    def loss():
        return F.mse_loss(dit(x_t, timestep=t, class_labels=labels).sample, noise)

    return _train(dit, loss, batch, "32x32x4 latent", config)


def build_vqmodel_train(name, args):
    from diffusers import VQModel

    model = VQModel(**specs.VQMODEL_KW).train()
    batch = specs.VQMODEL_BATCH
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        latent_shape = list(model.encode(x[:1]).latents.shape)
    config = {
        "model": "VQModel",
        "kwargs": diffusers_config(model),
        "latent_shape_per_image": latent_shape[1:],
        "loss": "mse(recon, x) + commit_loss",
    }

    def loss():
        out = model(x)
        return F.mse_loss(out.sample, x) + out.commit_loss.mean()

    return _train(model, loss, batch, "32x32x3 image", config)


# name -> builder(name, args)
BUILDERS = {
    "matmul_peak": build_matmul_peak,
    **dict.fromkeys(specs.VQ_VARIANTS, build_vq),
    "unet_train": build_unet_train,
    **dict.fromkeys(specs.SAMPLE_BATCH, build_unet_sample),
    "dit_train": build_dit_train,
    "vqmodel_train": build_vqmodel_train,
}


def with_autocast(workload):
    """Run the workload's step (and denoiser call) under bfloat16 autocast."""

    def wrap(fn):
        @functools.wraps(fn)
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()

        return run

    for key in ("step", "denoiser"):
        if key in workload:
            workload[key] = wrap(workload[key])
    return workload


def build(name, args, precision="float32"):
    """Build workload `name` at `precision` ("float32" or "autocast_bfloat16").

    matmul_peak stays float32 whatever the precision: one denominator for both sides.
    """
    torch.manual_seed(0)
    workload = BUILDERS[name](name, args)
    if precision == "autocast_bfloat16" and name != "matmul_peak":
        workload = with_autocast(workload)
        workload["config"]["precision"] = precision
    return workload


def runtime():
    """What the row records of torch and the host."""
    return {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
