"""VQGAN tokenizer on kzoo_shapes (32x32 -> 8x8 grid of 256 codes), perceptual + PatchGAN losses.

Run:
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes
    kzoo export runs/vqgan_shapes --format saved_model
    kzoo reconstruct runs/vqgan_shapes --out runs/vqgan_shapes/reconstruction.png

The discriminator starts after 1000 generator steps (Esser et al. 2021 start it
once reconstructions are good); the perceptual network is kzoo's `ShapesPerceptual`,
trained on the first run and cached under `$KZOO_CACHE_DIR` (~/.cache/kzoo).
The code grid feeds the `code_prior_shapes` recipe.

Result: not yet measured here (no long run was made in this change).
"""


def get_config():
    return {
        "model": {
            "class_name": "VQGAN",
            "image_shape": (32, 32, 3),
            "codebook_size": 256,
            "embedding_dim": 32,
            # Three levels: an 8x8 code grid, 64 tokens for the prior.
            "channels": (32, 64, 64),
            "num_res_blocks": 1,
            "norm_groups": 8,
            "commitment_cost": 0.25,
            "decay": 0.99,
            "attention": True,
            "quantizer_options": {"kmeans_init": True, "dead_code_threshold": 1.0, "seed": 0},
            "disc_channels": (32, 64, 128),
            "disc_start_step": 1000,
            "disc_weight": 0.8,
            "perceptual_weight": 1.0,
        },
        "dataset": "kzoo_shapes",
        "batch_size": 32,
        "steps": 4000,
        "steps_per_epoch": 100,
        "learning_rate": 4e-4,
        "weight_decay": 0.0,
        "ema": False,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }
