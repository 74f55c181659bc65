"""tokenizer_curve: train a VQ tokenizer recipe, scored on validation as it trains.

Every `--eval-every` steps the EMA weights (or the raw ones without EMA) are swapped
in and `--examples` images of the kzoo_shapes **validation** split are
reconstructed; one JSON line each with `shape_kept`, `color_kept` (the fraction of
reconstructions in which the `ShapesClassifier` finds the image's shape / colour)
and their binomial standard errors `*_se`, `psnr_db`, the codebook statistics of
the validation codes, `tokens_per_image` and the training seconds so far.

`--no-quantizer` replaces the quantizer by the identity (a plain autoencoder with
the same grid and channels): what the grid keeps before any code is chosen, the
upper bound of every codebook on that grid. A diagnostic only.

Usage:
    python -m benchmarks.tokenizer_curve vqgan_shapes --steps 900 --eval-every 300 \
        [--set key=value ...] [--no-quantizer] [--examples 600] [--tag T] [--out FILE.jsonl] \
        [--workdir DIR]
    python -m benchmarks.tokenizer_curve RECIPE --score-workdir DIR --tag T --out FILE.jsonl
    python -m benchmarks.tokenizer_curve RECIPE --probe-classifier --out FILE.jsonl

Nothing here reads the test split: recipe choices are made on these figures and the
test split is scored once, at the end, by `kzoo evaluate`.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks.learning_curve import _restore, _swap_in_ema

BENCHMARK = "tokenizer_curve"


def log(message):
    print(f"[tokenizer_curve] {message}", file=sys.stderr, flush=True)


def _binomial_se(p, n):
    return float(np.sqrt(p * (1 - p) / n))


def score(model, images, labels, classifier, sizes=None, quantized=True, batch_size=100):
    """Validation figures of an autoencoder: what its reconstructions keep.

    With `sizes` (the images' size class), `shape_kept_by_size` lists the shape
    kept per size class (small, medium, large).
    """
    from kzoo.metrics import codebook_stats, psnr

    reconstructions = np.concatenate(
        [
            np.asarray(model(images[start : start + batch_size], training=False))
            for start in range(0, len(images), batch_size)
        ]
    )
    predicted = classifier.predict_attributes(np.clip(reconstructions, -1.0, 1.0))
    n = len(images)
    row = {"psnr_db": round(float(psnr(images, reconstructions)), 2), "examples": n}
    for name, key in (("shape", "shape_kept"), ("color", "color_kept")):
        kept = float(np.mean(predicted[name] == labels[name]))
        row[key] = round(kept, 4)
        row[f"{key}_se"] = round(_binomial_se(kept, n), 4)
    if sizes is not None:
        row["shape_kept_by_size"] = [
            round(float(np.mean((predicted["shape"] == labels["shape"])[sizes == size])), 3)
            for size in np.unique(sizes)
        ]
    if quantized:
        stats = codebook_stats(np.asarray(model.encode(images)), model.codebook_size)
        row.update(
            {
                f"codebook_{k}": (round(v, 4) if isinstance(v, float) else v)
                for k, v in stats.items()
            }
        )
    return row


def probe_classifier(images, labels, classifier):
    """What the classifier reads on degraded real images: how sharp a reconstruction must be.

    Rows for the images resized (area) to 16x16 and 8x8 and back (bilinear), and
    blurred with a Gaussian of sigma 0.5 and 1 px.
    """
    import tensorflow as tf

    size = images.shape[1]
    n = len(images)

    def blur(sigma):
        radius = 2
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps = (taps / taps.sum()).astype("float32")
        kernel = np.outer(taps, taps)[:, :, None, None] * np.eye(3, dtype="float32")[None, None]
        padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), "edge")
        return tf.nn.conv2d(padded, kernel, 1, "VALID").numpy()

    def resized(grid):
        small = tf.image.resize(images, (grid, grid), method="area")
        return tf.image.resize(small, (size, size), method="bilinear").numpy()

    degraded = {
        "resize_16": resized(16),
        "resize_8": resized(8),
        "blur_0.5": blur(0.5),
        "blur_1.0": blur(1.0),
    }
    rows = []
    for name, batch in degraded.items():
        predicted = classifier.predict_attributes(np.clip(batch, -1.0, 1.0))
        row = {"degradation": name, "examples": n}
        for attribute in ("shape", "color"):
            kept = float(np.mean(predicted[attribute] == labels[attribute]))
            row[f"{attribute}_kept"] = round(kept, 4)
            row[f"{attribute}_kept_se"] = round(_binomial_se(kept, n), 4)
        rows.append(row)
    return rows


def _remove_quantizer(model):
    """Make the quantizer the identity: the continuous latents reach the decoder."""
    model.quantizer.call = lambda inputs, training=None: inputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--no-quantizer", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--probe-classifier",
        action="store_true",
        help="train nothing: the classifier on resized and blurred real images",
    )
    parser.add_argument(
        "--score-workdir",
        default=None,
        help="train nothing: score the trained model of this workdir",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="save config.json and the final checkpoint (`kzoo evaluate`)",
    )
    args = parser.parse_args(argv)

    import keras

    import kzoo.data
    from kzoo.metrics import load_or_train_shapes_classifier
    from kzoo.training import trainer

    if args.probe_classifier:
        size = 32
        images, labels = kzoo.data.load_arrays(
            "kzoo_shapes", split="validation", num_examples=args.examples, image_size=size
        )
        classifier = load_or_train_shapes_classifier(image_size=size)
        out = open(args.out, "a") if args.out else sys.stdout
        for row in probe_classifier(images, labels, classifier):
            row = {"benchmark": BENCHMARK, "tag": args.tag, "split": "validation", **row}
            print(json.dumps(row), file=out, flush=True)
        return
    if args.score_workdir:
        from kzoo.training import checkpoint

        with open(os.path.join(args.score_workdir, checkpoint.CONFIG_FILE)) as f:
            config = json.load(f)
        model = checkpoint.load_trained_model(args.score_workdir)
    elif args.steps is None:
        parser.error("--steps is required unless --score-workdir is given")
    else:
        from benchmarks.learning_curve import build_recipe_model

        config, model = build_recipe_model(args.recipe, args.overrides, args.steps)
    if args.no_quantizer:
        _remove_quantizer(model)
    dataset = trainer.train_dataset(config, model)
    size = model.image_shape[0]
    images, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split="validation", num_examples=args.examples, image_size=size
    )
    sizes = np.asarray(labels["size"])
    labels = {name: np.asarray(labels[name]) for name in ("shape", "color")}
    classifier = load_or_train_shapes_classifier(image_size=size)
    real = classifier.predict_attributes(images)
    grid = model.latent_shape[:2]
    out = open(args.out, "a") if args.out else sys.stdout
    base = {
        "benchmark": BENCHMARK,
        "recipe": args.recipe,
        "tag": args.tag,
        "overrides": args.overrides,
        "no_quantizer": args.no_quantizer,
        "split": "validation",
        "grid": list(grid),
        "tokens_per_image": int(grid[0] * grid[1]),
        "codebook_size": int(model.codebook_size),
        "batch_size": config["batch_size"],
        "precision": config["precision"],
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        # The classifier on the real validation images: the ceiling of `*_kept`.
        "real_shape": round(float(np.mean(real["shape"] == labels["shape"])), 4),
        "real_color": round(float(np.mean(real["color"] == labels["color"])), 4),
    }
    if args.score_workdir:
        metrics = score(model, images, labels, classifier, sizes)
        step = int(checkpoint.read_state(args.score_workdir)["step"])
        row = {**base, "workdir": args.score_workdir, "step": step, **metrics}
        print(json.dumps(row), file=out, flush=True)
        return
    state = {"train_s": 0.0, "t0": time.perf_counter()}

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            state["train_s"] += time.perf_counter() - state["t0"]
            step = (epoch + 1) * args.eval_every
            raw = _swap_in_ema(model)
            metrics = score(
                model, images, labels, classifier, sizes, quantized=not args.no_quantizer
            )
            _restore(model, raw)
            row = {
                **base,
                "step": step,
                "train_s": round(state["train_s"], 1),
                "rec_loss": float(logs.get("rec_loss", float("nan"))),
                **metrics,
            }
            print(json.dumps(row), file=out, flush=True)
            log(
                f"{args.tag} step {step}: shape {metrics['shape_kept']:.3f} colour "
                f"{metrics['color_kept']:.3f} PSNR {metrics['psnr_db']:.2f} "
                f"train {state['train_s']:.0f}s"
            )
            state["t0"] = time.perf_counter()

    model.fit(
        dataset,
        epochs=args.steps // args.eval_every,
        steps_per_epoch=args.eval_every,
        callbacks=[Evaluate()],
        verbose=0,
    )
    if args.workdir:
        # A workdir like `kzoo train`'s (raw weights, EMA in the optimizer), for `kzoo evaluate`.
        from kzoo.training import checkpoint

        os.makedirs(args.workdir, exist_ok=True)
        checkpoint.write_json_atomic(os.path.join(args.workdir, checkpoint.CONFIG_FILE), config)
        epochs = args.steps // args.eval_every
        checkpoint.save_checkpoint(model, args.workdir, epochs, epochs * args.eval_every)


if __name__ == "__main__":
    main()
