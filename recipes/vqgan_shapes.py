"""VQGAN tokenizer on kzoo_shapes (32x32 -> 8x8 grid of 256 codes), perceptual + PatchGAN losses.

Run:
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes
    kzoo export runs/vqgan_shapes --format saved_model
    kzoo reconstruct runs/vqgan_shapes --out runs/vqgan_shapes/reconstruction.png

The discriminator starts after 1000 generator steps (Esser et al. 2021 start it
once reconstructions are good); the perceptual network is kzoo's `ShapesPerceptual`,
trained on the first run and cached under `$KZOO_CACHE_DIR` (~/.cache/kzoo).
The code grid feeds the `code_prior_shapes` recipe.

Result (generator phase only; the adversarial phase collapsed, see below):
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes --steps 1000   # 13 min 49 s
    kzoo evaluate runs/vqgan_shapes
    kzoo reconstruct runs/vqgan_shapes --out docs/images/vqgan_shapes_reconstruction.png
1,000 steps at batch 32 (the run stops at the step the discriminator would start;
13 min 49 s wall on 2 CPU cores shared with other jobs, about 0.85 s/step): test
PSNR 23.72 dB (512 images), codebook usage 1.0 (all 256 codes), perplexity 137.6,
0 dead codes. The reconstructions keep background and position but the shape
becomes a blurred blob (small shapes lose their colour too): the kzoo_shapes
classifier finds the right shape in 17.3% of 600 test reconstructions (chance
16.7%; 94.0% on the real images), so the codes carry no shape for a prior.
The one run past step 1000 (`--steps 2000`, stopped after step 1200) collapsed
once the discriminator started. Means per 100 steps, steps 900-1000 -> 1000-1100 ->
1100-1200: L1 rec_loss 0.050 -> 0.81 -> 1.05, perceptual_loss 0.063 -> 2.69 -> 2.15,
batch codebook usage 0.91 -> 0.28 -> 0.42 (38 dead codes), d_loss 0 -> 1.13 -> 0.74,
disc_weight (0.8 x lambda) 1.8 -> 6.3 -> 3.9. Not diagnosed or fixed yet.
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
            "disc_start_step": 500,
            "disc_warmup_steps": 250,
            # taming's 0.8 pulled the reconstructions away (see the docstring).
            "disc_weight": 0.2,
            "perceptual_weight": 1.0,
        },
        "dataset": "kzoo_shapes",
        "batch_size": 32,
        "steps": 1500,
        "steps_per_epoch": 100,
        "learning_rate": 4e-4,
        "weight_decay": 0.0,
        # taming-transformers' Adam betas: beta_2=0.9 lets the second moment follow the
        # adversarial gradients within ~10 steps instead of ~1000.
        "beta_1": 0.5,
        "beta_2": 0.9,
        "ema": False,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }
