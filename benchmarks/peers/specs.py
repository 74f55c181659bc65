"""The peers' workload table: shapes, batches, step counts and FLOP accounting, no torch.

benchmarks/WORKLOADS.md describes each workload in words; this is the same table as
data, read by the torch builders (`benchmarks.peers.workloads`) and by the tests,
which check it against kzoo's side (`benchmarks.run` and the workload modules) so
the two sides cannot drift apart. Layouts are torch's (NCHW); kzoo uses NHWC.
"""

# (warm-up, timed steps) per workload. Each workload except matmul_peak first runs
# ONE extra untimed step under torch's FlopCounterMode (it doubles as the first
# warm-up step). The sampling workloads time whole samples; their warm-up unit is
# 3 single denoiser calls.
DEFAULTS = {
    "matmul_peak": (5, 50),
    "vq_fwd_bwd": (3, 30),
    "vq_fwd_bwd_ste": (3, 30),
    "vq_learnable": (3, 30),
    "unet_train": (1, 10),
    "unet_sample": (1, 3),
    "unet_sample_b1": (1, 5),
    "dit_train": (0, 3),
    "vqmodel_train": (2, 15),
}
# matmul_peak is the denominator of pct_of_peak: never run cold or short.
MATMUL_PEAK_MIN = (3, 20)
MM_SIZE = 2048
THREADS = 2  # torch.set_num_threads, the cores of the reference machine
PRECISIONS = ("float32", "autocast_bfloat16")  # partners of kzoo's float32 / mixed_bfloat16

# torch.optim.AdamW, torch's default CPU implementation (no foreach/fused flags).
ADAMW = dict(lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
NUM_TRAIN_TIMESTEPS = 1000  # diffusers DDPMScheduler() defaults: linear betas 1e-4..0.02

# vector-quantize-pytorch VectorQuantize on x (batch, h*w, channels), channel-last.
VQ_INPUT_SHAPE = (64, 256, 64)  # 64 latent maps of 16x16 vectors of 64 channels
VQ_KWARGS = dict(dim=64, codebook_size=512, commitment_weight=0.25)
VQ_VARIANTS = {
    "vq_fwd_bwd": dict(decay=0.99),  # EMA codebook, rotation trick (the library's default)
    "vq_fwd_bwd_ste": dict(decay=0.99, rotation_trick=False),  # straight-through
    "vq_learnable": dict(ema_update=False, learnable_codebook=True),
}

# diffusers UNet2DModel: DDPM-CIFAR10's layout (google/ddpm-cifar10-32) at half width.
UNET_KW = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(64, 128, 128, 128),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,  # one head of width C, as in DDPM
    dropout=0.0,
)
UNET_TRAIN_BATCH = 32
# The sampling workloads: images per 50-step DDIM sample (eta 0, DDIMScheduler()).
SAMPLE_BATCH = {"unet_sample": 8, "unet_sample_b1": 1}
NUM_INFERENCE_STEPS = 50
DENOISER_CALLS = 10  # single denoiser calls timed after the samples

# diffusers DiTTransformer2DModel, DiT-S/2 (eps output only, no learned sigma).
DIT_KW = dict(
    num_attention_heads=6,
    attention_head_dim=64,
    in_channels=4,
    out_channels=4,
    num_layers=12,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
    activation_fn="gelu-approximate",
    dropout=0.0,
)
DIT_BATCH = 32

# diffusers VQModel: latent grid 16x16x64, 512 codes.
VQMODEL_KW = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(64, 128),
    layers_per_block=1,
    latent_channels=64,
    num_vq_embeddings=512,
    vq_embed_dim=64,
    norm_num_groups=32,
    sample_size=32,
)
VQMODEL_BATCH = 32

# What the FLOP counter runs once, untimed, for each workload: "step" (one whole
# step), "denoiser_call" (one denoiser call, x NUM_INFERENCE_STEPS per sample) or
# "analytic" (matmul_peak: 2*n^3, nothing counted).
FLOP_COUNT = {
    name: "analytic"
    if name == "matmul_peak"
    else "denoiser_call"
    if name in SAMPLE_BATCH
    else "step"
    for name in DEFAULTS
}
FLOPS_METHOD = {
    "analytic": "analytic 2*n^3",
    "denoiser_call": (
        f"FlopCounterMode on one denoiser call x {NUM_INFERENCE_STEPS} "
        "(scheduler arithmetic not counted)"
    ),
    "step": "FlopCounterMode, one step (matmul/conv/attention fwd+bwd; 2 FLOP per MAC)",
}


def steps_for(name, warmup=None, steps=None):
    """(warm-up, timed steps) of a workload: its defaults, overridden where given.

    Args:
        name: a key of `DEFAULTS`.
        warmup: untimed steps, or None for the default.
        steps: timed steps, or None for the default.

    Returns:
        (warmup, steps); matmul_peak never gets fewer than `MATMUL_PEAK_MIN`.
    """
    default_warmup, default_steps = DEFAULTS[name]
    warmup = default_warmup if warmup is None else warmup
    steps = default_steps if steps is None else steps
    if name == "matmul_peak":
        warmup, steps = max(warmup, MATMUL_PEAK_MIN[0]), max(steps, MATMUL_PEAK_MIN[1])
    return warmup, steps


def flops_per_step(name, counted_flops, mm_size=MM_SIZE):
    """FLOPs of one timed step, from what the counter measured (`FLOP_COUNT[name]`).

    Args:
        name: a key of `DEFAULTS`.
        counted_flops: FLOPs of the one counted step or denoiser call (ignored
            for matmul_peak).
        mm_size: matmul_peak's n.

    Returns:
        FLOPs per step: 2 FLOP per multiply-add of every matmul, convolution and
        attention product, forward and backward; no elementwise ops, norms,
        softmax or optimizer (a lower bound, the usual "model FLOPs").
    """
    kind = FLOP_COUNT[name]
    if kind == "analytic":
        return 2 * mm_size**3
    if kind == "denoiser_call":
        return counted_flops * NUM_INFERENCE_STEPS
    return counted_flops
