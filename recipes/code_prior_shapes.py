"""Class-conditional transformer prior over the `vqgan_shapes` codes (8x8 grid, 6 shape classes).

Run (after `vqgan_shapes`, whose workdir `vq_workdir` names):
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes
    kzoo train code_prior_shapes --workdir runs/code_prior_shapes
    kzoo sample runs/code_prior_shapes --out samples.png --num 12

The training data is `build_code_dataset(config, prior)`: the kzoo_shapes
training images encoded by the tokenizer of `vq_workdir`, as `(tokens, targets)`
batches (start token per shape class, then the raster-order codes). Sampling:
`kzoo.models.Generator(prior, tokenizer, top_k=...)` exports one `generate`
endpoint (labels, seed -> images).

`--set image_size=N` (own data) sets the code grid of `vqgan_shapes` trained on
N x N images, `(N // 4, N // 4)`: train `vqgan_shapes` with the same `image_size`.

Expected (2,800 steps over the 2026-12-05 tokenizer): the requested shape in 18.8%
of 600 samples (chance 16.7%): the tokenizer's codes keep colour but not shape.
Model card, the scoring snippet and limits: docs/code_prior_shapes.md.
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


def apply_image_size(config, image_size):
    """`--set image_size=N`: the code grid of `vqgan_shapes` on N x N images.

    `vqgan_shapes`' encoder (channels (32, 64, 64)) halves the side twice.
    """
    if image_size % 4:
        raise ValueError(
            "`image_size` must be a multiple of 4 (the tokenizer divides it by 4). "
            f"Received: image_size={image_size}"
        )
    config["model"]["grid_shape"] = (image_size // 4, image_size // 4)


# `kzoo train` feeds a recipe's `build_dataset(config, model, skip_batches=...)` to the trainer.
build_dataset = build_code_dataset
