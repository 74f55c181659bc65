"""VQGAN tokenizer on kzoo_shapes (32x32 -> 8x8 grid of 256 codes), perceptual + PatchGAN losses.

Run:
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes      # 13 min on 2 CPU cores, float32
    kzoo evaluate runs/vqgan_shapes                          # 600 test images (JSON)
    kzoo reconstruct runs/vqgan_shapes --out runs/vqgan_shapes/reconstruction.png
    kzoo export runs/vqgan_shapes --format saved_model

Expected (1,500 steps, EMA weights, 600 test images): PSNR 23.28 dB, codebook usage
1.00, colour kept 0.91, shape kept 0.17 (chance 0.17; the classifier reads 0.94 on
the real images): the 8x8 codes do not keep the shape yet. The code grid feeds
`code_prior_shapes` and `caption_prior_shapes`. Model card, the diagnosis, the
learning curves and what was tried: docs/vqgan_shapes.md.
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
            # taming's 0.8 pulled the reconstructions away (docs/vqgan_shapes.md).
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
        # Weight EMA (Keras `use_ema`, swapped in at the end): the GAN phase makes the
        # last step's weights noisy (measured: 20.72 dB raw vs 23.28 dB averaged).
        "ema": True,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }


def evaluate(model, num_examples=600):
    """Test PSNR, codebook statistics, and what the reconstructions keep (`kzoo evaluate`).

    Args:
        model: a trained `VQGAN` (or `VQVAE`) on 32x32 kzoo_shapes images.
        num_examples: test examples to score (the split has 1,000).

    Returns:
        `kzoo.metrics.autoencoder_metrics` with the `ShapesClassifier` (trained on
        the first call and cached) labelling the reconstructions' shape and colour.
    """
    import kzoo.data
    from kzoo.metrics import autoencoder_metrics, load_or_train_shapes_classifier

    images, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split="test", num_examples=num_examples, image_size=model.image_shape[0]
    )
    classifier = load_or_train_shapes_classifier(image_size=model.image_shape[0])
    attributes = {name: labels[name] for name in ("shape", "color")}
    return autoencoder_metrics(model, images, attributes, classifier)
