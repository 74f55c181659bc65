"""Latent DiT on kzoo_shapes: a DiT over the latents of a trained `vqvae_shapes` VQ-VAE.

Latent diffusion (Rombach et al. 2022): the frozen VQ-VAE of the `vqvae_shapes`
recipe encodes 32x32 images to 16x16x32 pre-quantization latents, scaled to
unit variance (`latent_scale` is estimated as 1 / std on the first batch); a
small DiT (patch 2, 64 tokens, width 128, depth 4) learns to denoise them, and
`generate` decodes sampled latents through the VQ-VAE's quantizer and decoder.

The trainer loads the autoencoder from `autoencoder_workdir` (the workdir's
latest checkpoint, `kzoo.training.load_trained_model`) and passes it as the
model's `autoencoder` argument; the DiT's `input_shape` must be the VQ-VAE's
`latent_shape`.

`--set image_size=N` (own data) sets the DiT's input to the latent of N x N
images, `(N // 2, N // 2, 32)`: train `vqvae_shapes` with the same `image_size`.

Run:
    kzoo train vqvae_shapes --workdir runs/vqvae_shapes
    kzoo train latent_dit_shapes --workdir runs/latent_dit_shapes
    kzoo sample runs/latent_dit_shapes --sampler ddim --steps 50 --guidance-scale 3 --out grid.png

Result: see README.md ("Diffusion").
"""


def get_config():
    return {
        "model": {
            "class_name": "DiffusionModel",
            "denoiser": {
                "class_name": "DiT",
                "input_shape": (16, 16, 32),
                "patch_size": 2,
                "hidden_size": 128,
                "depth": 4,
                "num_heads": 4,
                "mlp_ratio": 4.0,
                "num_classes": 6,
                "class_dropout_prob": 0.1,
                "learn_sigma": False,
            },
            "schedule": "linear",
            "prediction_type": "eps",
            "num_classes": 6,
            "class_dropout_prob": 0.1,
            "snr_gamma": None,
            "timestep_sampling": "uniform",
            "logit_mean": 0.0,
            "logit_std": 1.0,
            "noise_offset": 0.0,
            "latent_scale": None,
            "max_generate_steps": 250,
            "max_generate_batch": 64,
            "export_sampler": "ddim",
        },
        "autoencoder_workdir": "runs/vqvae_shapes",
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


def apply_image_size(config, image_size):
    """`--set image_size=N`: the DiT takes `vqvae_shapes`' latent of N x N images.

    `vqvae_shapes`' encoder (channels (32, 64)) halves the side once.
    """
    denoiser = config["model"]["denoiser"]
    if image_size % 2:
        raise ValueError(
            "`image_size` must be even (the autoencoder halves it). "
            f"Received: image_size={image_size}"
        )
    denoiser["input_shape"] = (
        image_size // 2,
        image_size // 2,
        *tuple(denoiser["input_shape"])[2:],
    )
