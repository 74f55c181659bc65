"""VQ-VAE on the embedded kzoo_shapes dataset (32x32, 256 codes), a few minutes on 2 CPU cores.

Run:
    kzoo train vqvae_shapes --workdir runs/vqvae_shapes
    kzoo export runs/vqvae_shapes --format saved_model
    kzoo reconstruct runs/vqvae_shapes --out runs/vqvae_shapes/reconstruction.png

Result: see README.md ("Demo results"), produced by `make demo`.
"""


def get_config():
    return {
        "model": {
            "class_name": "VQVAE",
            "image_shape": (32, 32, 3),
            "codebook_size": 256,
            "embedding_dim": 32,
            "channels": (32, 64),
            "num_res_blocks": 1,
            "norm_groups": 8,
            "commitment_cost": 0.25,
            "decay": 0.99,
            "attention": True,
            # k-means init and dead-code restarts keep the codebook in use
            # (plain EMA used ~10% of the codes here).
            "quantizer_options": {"kmeans_init": True, "dead_code_threshold": 1.0, "seed": 0},
        },
        "dataset": "kzoo_shapes",
        "batch_size": 32,
        "steps": 1200,
        "steps_per_epoch": 100,
        "learning_rate": 1e-3,
        "weight_decay": 0.01,
        "ema": False,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }
