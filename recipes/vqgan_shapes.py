"""VQGAN tokenizer on kzoo_shapes (32x32 -> 8x8 grid of 256 codes), perceptual + PatchGAN losses.

Run:
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes
    kzoo export runs/vqgan_shapes --format saved_model
    kzoo reconstruct runs/vqgan_shapes --out runs/vqgan_shapes/reconstruction.png

The discriminator trains from step 500 on; the generator's adversarial weight
ramps in linearly over the next 250 steps (`disc_warmup_steps`). Both optimizers
use taming-transformers' Adam betas (0.5, 0.9) and the adversarial weight is
`0.2 * lambda` (taming: 0.8). The perceptual network is kzoo's `ShapesPerceptual`,
trained on the first run and cached under `$KZOO_CACHE_DIR` (~/.cache/kzoo).
The code grid feeds the `code_prior_shapes` recipe.

Why these settings (each run 900 steps, discriminator from step 400, 2 CPU cores;
L1 `rec_loss` and batch codebook usage are means over 100 steps, from `log.csv`;
PSNR and the ShapesClassifier's shape accuracy on 600 test reconstructions):

| weight | betas | ramp | L1 per 100 steps, disc on | usage | PSNR | shape |
|---|---|---|---|---|---|---|
| 0.8 (a) | 0.9, 0.999 | none | 0.050 -> 0.81, 1.05 | 0.28-0.42 | - | - |
| 0.8 | 0.5, 0.9 | 200 | 0.126 -> 0.12, 0.20, 0.13, 0.23 | 0.83-0.88 | 20.02 dB | 0.157 |
| 0.2 | 0.5, 0.9 | 200 | 0.126 -> 0.10, 0.11, 0.097, 0.095 | 0.87-0.90 | 22.13 dB | 0.170 |

(a) An earlier session's run, discriminator from step 1000 (38 dead codes after).

The collapse of the first row is gone with the betas and the ramp (Adam's
`beta_2 = 0.999` keeps the second moment of the small reconstruction gradients
for ~1000 steps, so the new adversarial gradients take outsized steps); at
taming's weight 0.8 the reconstructions still oscillate, at 0.2 they keep
improving while the discriminator trains (`d_loss` 0.52-0.72). These runs kept
the raw weights (no EMA).

Result of the recipe (1,500 steps, 13 min 0 s on 2 CPU cores beside a training run;
`kzoo train vqgan_shapes --workdir runs/vqgan_shapes`, then `kzoo evaluate
runs/vqgan_shapes`: 600 test images, this module's `evaluate`):

| weights at the end | PSNR | usage / perplexity | shape / colour kept |
|---|---|---|---|
| raw (`--set ema=false`) | 20.72 dB | 0.98 / 87.8 (4 dead) | 0.197 / 0.54 |
| EMA (the recipe) | 23.28 dB | 1.00 / 125.4 | 0.173 / 0.91 |

The training log's L1 keeps falling through the adversarial phase (0.126 at the
start step, 0.074 over the last 100 steps) but single late steps still swing (the
raw weights of the last step: test L1 0.100), so the recipe averages the
weights (Keras `use_ema`, momentum 0.99, swapped in at the end). The 8x8 code grid
keeps colour but still not the shape (0.94 on the real images): reconstructions
are coloured blobs, so a prior over these codes cannot draw shapes yet.
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
