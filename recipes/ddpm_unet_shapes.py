"""Class-conditional DDPM U-Net on kzoo_shapes (32x32, 6 shape classes), minutes on 2 CPU cores.

A small `kzoo.models.UNet` (channels 16/32/32, attention at 8x8, 0.28M
parameters) predicts the
noise of a linear-schedule DDPM (Ho et al. 2020); labels are the shape id of
kzoo_shapes and are dropped to the null class 10% of the time for
classifier-free guidance. The optimizer keeps an EMA of the weights
(`ema: True`), swapped in at the end of training.

Run:
    kzoo train ddpm_unet_shapes --workdir runs/ddpm_unet_shapes
    kzoo sample runs/ddpm_unet_shapes --sampler ddim --steps 50 --guidance-scale 3 --out grid.png
    kzoo export runs/ddpm_unet_shapes --format saved_model

Cost: 12 GFLOP per training step (batch 32); measured 0.35 CPU-seconds per step on
the shared 2-core machine, so 2000 steps take about 6 minutes on 2 idle cores.

Result (2026-11-25, the default 2000 steps): 12 min 58 s wall on the shared
2-core machine (other jobs running, 0.27-0.43 s/step), final epoch loss 0.0181.
Samples are NOT yet shapes: saturated single-colour fields with pixel noise; the
shape classifier finds the requested shape in 16-18% of samples (chance: 1/6;
test images: 93%), and the label has no measurable effect on the denoiser, so
guidance changes nothing. KID vs test images (ShapesClassifier features, 256
samples, guidance 3): DDIM 10.9 / 8.9 / 7.5 at 10 / 20 / 50 steps,
DPM-Solver++ 7.5 / 7.2 / 6.8, DDPM 50 steps 2.3 (test images: 0.0, noise: 498).
Measured with
    python -m benchmarks.quality_diffusion runs/ddpm_unet_shapes --samples 256 \
        --ddpm-steps 50 --out benchmarks/results/2026-11-25-quality_diffusion.jsonl
Table and grids: README.md ("Trained samples and quality vs sampler steps").
"""


def get_config():
    return {
        "model": {
            "class_name": "DiffusionModel",
            "denoiser": {
                "class_name": "UNet",
                "image_shape": (32, 32, 3),
                "channels": (16, 32, 32),
                "num_res_blocks": 1,
                "attention_resolutions": (8,),
                "norm_groups": 8,
                "time_embedding_dim": 64,
                "num_classes": 6,
                "dropout": 0.0,
                "num_heads": 1,
                "mid_attention": True,
            },
            "schedule": "linear",
            "prediction_type": "eps",
            "num_classes": 6,
            "class_dropout_prob": 0.1,
            "snr_gamma": None,
            "max_generate_steps": 250,
            "max_generate_batch": 64,
            "export_sampler": "ddim",
        },
        "dataset": "kzoo_shapes",
        "outputs": ("image", "label"),
        "batch_size": 32,
        "steps": 2000,
        "steps_per_epoch": 200,
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "ema": True,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }
