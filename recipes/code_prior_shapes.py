"""Class-conditional transformer prior over the `vqgan_shapes` codes (8x8 grid, 6 shape classes).

Run (after `vqgan_shapes`, whose workdir `vq_workdir` names):
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes
    kzoo train code_prior_shapes --workdir runs/code_prior_shapes

The training data is `build_code_dataset(config, prior)`: the kzoo_shapes
training images encoded by the tokenizer of `vq_workdir`, as `(tokens, targets)`
batches (start token per shape class, then the raster-order codes). Sampling:
`kzoo.models.Generator(prior, tokenizer, top_k=...)` exports one `generate`
endpoint (labels, seed -> images).

Result (over the 1,500-step `vqgan_shapes` tokenizer of 2026-12-05, EMA weights,
23.28 dB; its codes keep colour but no shape):
    kzoo train code_prior_shapes --workdir runs/code_prior_shapes \\
        --set vq_workdir=runs/vqgan_shapes --steps 2800          # 8 min 17 s
    kzoo sample runs/code_prior_shapes --out samples.png --num 12
2,800 of the 5,000 steps (stopped for time) at batch 32, 8 min 17 s wall on 2
CPU cores: next-code accuracy 0.722 and loss 0.880 on the last 100 training
batches. Samples (temperature 1.0, no top-k) show the four backgrounds and a
coloured blob at a plausible position, like the tokenizer's reconstructions; no
shape is recognisable and the rows (one per class) look alike. The kzoo_shapes
classifier finds the requested shape in 18.8% of 600 samples (100 per class;
chance 16.7%; an earlier prior over a 1,000-step generator-only tokenizer: 16.5%).
The tokenizer is the bottleneck: the classifier scores 17.3% on its
reconstructions of test images (94.0% on the real images). The 6x8 grid and the
score:

    import numpy as np
    from kzoo.data.images import make_grid, save_png
    from kzoo.metrics.features import load_or_train_shapes_classifier
    from kzoo.models import Generator
    from kzoo.training import load_trained_model

    generator = Generator(load_trained_model("runs/code_prior_shapes"),
                          load_trained_model("runs/vqgan_shapes"), temperature=1.0, top_k=None)
    grid = np.asarray(generator.generate(labels=np.repeat(np.arange(6), 8), seed=0))
    rows = list(grid.reshape(6, 8, 32, 32, 3))  # one row per shape class
    save_png("code_prior_shapes_samples.png", make_grid(rows, scale=2))
    labels = np.repeat(np.arange(6), 100)
    images = np.concatenate([np.asarray(generator.generate(labels=labels[i : i + 120], seed=1 + i))
                             for i in range(0, 600, 120)])
    classifier = load_or_train_shapes_classifier(image_size=32)
    print(classifier.attribute_accuracy(images, {"shape": labels}))  # {'shape': 0.188}
"""

import os

import numpy as np

_ENCODE_BATCH = 256


def get_config():
    return {
        "model": {
            "class_name": "CodePrior",
            "codebook_size": 256,
            "grid_shape": (8, 8),
            "hidden_dim": 128,
            "num_layers": 4,
            "num_heads": 4,
            "num_classes": 6,
            "dropout": 0.1,
        },
        "vq_workdir": "runs/vqgan_shapes",
        "dataset": "kzoo_shapes",
        # The class label of each image (kzoo_shapes "label" = shape id, 6 classes).
        "label": "label",
        "num_examples": 5000,
        "batch_size": 32,
        "steps": 5000,
        "steps_per_epoch": 100,
        "learning_rate": 3e-4,
        "weight_decay": 0.01,
        "ema": False,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }


def encode_dataset(config, tokenizer):
    """`(codes (N, h, w), labels (N,))` of the training split, encoded by `tokenizer`.

    `labels` is the feature `config["label"]` names (class ids, or caption strings),
    or None when it names none.
    """
    import kzoo.data

    height, width = tokenizer.image_shape[:2]
    images, labels = kzoo.data.load_arrays(
        config["dataset"],
        split="train",
        image_size=height if height == width else (height, width),
        num_examples=config.get("num_examples"),
    )
    codes = np.concatenate(
        [
            np.asarray(tokenizer.encode(images[start : start + _ENCODE_BATCH]))
            for start in range(0, len(images), _ENCODE_BATCH)
        ]
    )
    label_key = config.get("label")
    return codes, (None if label_key is None else np.asarray(labels[label_key]))


def build_code_dataset(config, prior, skip_batches=0, tokenizer=None):
    """The prior's infinite, deterministic `tf.data` of `(tokens, targets)` batches.

    Args:
        config: a resolved `code_prior_shapes` config.
        prior: the `kzoo.models.CodePrior` being trained (its `prepare_inputs`).
        skip_batches: batches to skip (resuming after this many steps).
        tokenizer: the VQ model; default the trained model of `config["vq_workdir"]`.

    Returns:
        A `tf.data.Dataset` of int32 `(tokens, targets)`: `(batch_size, h*w)` each, or
        `(batch_size, max_caption_length + h*w)` tokens for a caption prior.
    """
    import tensorflow as tf

    from kzoo.training import checkpoint

    if tokenizer is None:
        workdir = config["vq_workdir"]
        if not os.path.isdir(workdir):
            raise ValueError(
                "`vq_workdir` must be the workdir of a trained VQ tokenizer (run `kzoo train "
                f"vqgan_shapes` first). Received: vq_workdir={workdir!r}"
            )
        tokenizer = checkpoint.load_trained_model(workdir)
    if (
        tokenizer.codebook_size != prior.codebook_size
        or tuple(tokenizer.latent_shape[:2]) != prior.grid_shape
    ):
        raise ValueError(
            f"The prior's codebook_size={prior.codebook_size} and grid_shape={prior.grid_shape} "
            f"must match the tokenizer's. Received: tokenizer codebook_size="
            f"{tokenizer.codebook_size}, latent grid {tuple(tokenizer.latent_shape[:2])}"
        )
    codes, labels = encode_dataset(config, tokenizer)
    if getattr(prior, "caption_vocabulary", None) is not None:
        # A caption prior (`caption_prior_shapes`): `labels` holds each image's caption.
        tokens, targets = prior.prepare_inputs(codes, captions=labels)
    else:
        tokens, targets = prior.prepare_inputs(codes, None if prior.num_classes is None else labels)
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(tokens), np.asarray(targets)))
    dataset = (
        dataset.shuffle(len(codes), seed=config["seed"], reshuffle_each_iteration=True)
        .repeat()
        .batch(config["batch_size"], drop_remainder=True)
    )
    return dataset.skip(skip_batches) if skip_batches else dataset


# `kzoo train` feeds a recipe's `build_dataset(config, model, skip_batches=...)` to the trainer.
build_dataset = build_code_dataset
