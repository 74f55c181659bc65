"""Class-conditional U-Net diffusion on kzoo_shapes (32x32, 6 shape classes).

v-prediction on a cosine schedule with min-SNR-5 weights, channels 32/64/64, the
label and time embedding as AdaGN scale and shift in every block, label dropout 0.1
for classifier-free guidance, warmup + cosine learning rate, EMA weights served.

Run:
    kzoo train ddpm_unet_shapes --workdir runs/ddpm_unet_shapes     # ~28 min, 2 idle AVX2 cores
    kzoo sample runs/ddpm_unet_shapes --sampler dpm_solver --steps 20 --guidance-scale 8 \
        --out grid.png

Expected (test, 600 samples, DPM-Solver++ 20 steps, guidance 8): the requested
shape in 37% of samples (chance 17%), KID 0.26 in the ShapesClassifier features.
Model card, diagnosis and learning curve: docs/ddpm_unet_shapes.md.
"""


def get_config():
    return {
        "model": {
            "class_name": "DiffusionModel",
            "denoiser": {
                "class_name": "UNet",
                "image_shape": (32, 32, 3),
                "channels": (32, 64, 64),
                "num_res_blocks": 1,
                "attention_resolutions": (8,),
                "norm_groups": 8,
                "time_embedding_dim": 128,
                "num_classes": 6,
                "dropout": 0.0,
                "num_heads": 1,
                "mid_attention": True,
                "scale_shift_norm": True,
            },
            "schedule": "cosine",
            "prediction_type": "v",
            "num_classes": 6,
            "class_dropout_prob": 0.1,
            "snr_gamma": 5.0,
            "timestep_sampling": "uniform",
            "logit_mean": 0.0,
            "logit_std": 1.0,
            "noise_offset": 0.0,
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
        "lr_schedule": "cosine",
        "warmup_steps": 200,
        "weight_decay": 0.0,
        "ema": True,
        "ema_momentum": 0.995,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }
