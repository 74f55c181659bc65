"""Class-conditional DiT on kzoo_shapes pixels (32x32, patch 4), minutes on 2 CPU cores.

A small `kzoo.models.DiT` (Peebles & Xie 2022; 64 tokens of 4x4 pixel patches,
width 128, depth 4) denoises pixels directly, with a cosine schedule,
v-prediction and min-SNR-5 loss weights (Hang et al. 2023); labels (shape id of
kzoo_shapes) are dropped to the null class 10% of the time for classifier-free
guidance. EMA weights are swapped in at the end of training.

Run:
    kzoo train dit_shapes --workdir runs/dit_shapes
    kzoo sample runs/dit_shapes --sampler dpm_solver --steps 20 --guidance-scale 3 --out grid.png

Cost: 11 GFLOP per training step (batch 32, 1.3M parameters); measured 0.29
CPU-seconds per step on the shared 2-core machine, about 5 minutes for 2000 steps
on 2 idle cores.

Result (2026-12-06, the default 2000 steps, `--set precision=mixed_bfloat16`: 7 min
37 s beside another training run, final epoch loss 0.0139): plain backgrounds
with small objects, not shapes (shape accuracy 0.15-0.21, chance 1/6); KID
DPM-Solver++ 1.33 / 0.93 / 0.75 at 10 / 20 / 50 steps, DDIM 1.71 / 1.21 / 0.91,
Heun 0.23 at 10 steps (19 NFE, the best row), DDPM 50 steps 1.24. Measured with
    python -m benchmarks.quality_diffusion runs/dit_shapes --samples 256 --ddpm-steps 50 --no-floor
See README.md ("Trained samples and quality vs sampler steps").
"""


def get_config():
    return {
        "model": {
            "class_name": "DiffusionModel",
            "denoiser": {
                "class_name": "DiT",
                "input_shape": (32, 32, 3),
                "patch_size": 4,
                "hidden_size": 128,
                "depth": 4,
                "num_heads": 4,
                "mlp_ratio": 4.0,
                "num_classes": 6,
                "class_dropout_prob": 0.1,
                "learn_sigma": False,
            },
            "schedule": "cosine",
            "prediction_type": "v",
            "num_classes": 6,
            "class_dropout_prob": 0.1,
            "snr_gamma": 5.0,
            "max_generate_steps": 250,
            "max_generate_batch": 64,
            "export_sampler": "ddim",
        },
        "dataset": "kzoo_shapes",
        "outputs": ("image", "label"),
        "batch_size": 32,
        "steps": 2000,
        "steps_per_epoch": 200,
        "learning_rate": 5e-4,
        "weight_decay": 0.0,
        "ema": True,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }
