"""judge_robustness: how much of a low "shape read" figure is the judge's, not the model's?

Every shape figure of issue 17 is the `ShapesClassifier`'s reading. This script
asks how that judge reads kzoo_shapes **validation** images that a person still
reads at once: blurred (Gaussian, sigma 0.5 / 0.7 / 1.0 px), with Gaussian noise
(std 0.1 in [-1, 1]), and as reconstructed by a trained autoencoder
(`--autoencoder WORKDIR`); and how it reads saved diffusion samples
(`--samples NAME=FILE.npy`, conditioned on the shapes of `validation[:N]`, as
`benchmarks.learning_curve` writes them). It scores the cached judge and judges
trained here with and without an augmentation of blur (sigma drawn from 0, 0.4,
..., 1.2) and noise (std up to 0.1, half of the images), one JSON line per judge.

Usage:
    python -m benchmarks.judge_robustness [--autoencoder DIR] [--samples NAME=FILE.npy ...] \
        [--steps 3000] [--out FILE.jsonl]
"""

import argparse
import json
import platform
import sys
import time

import numpy as np

BENCHMARK = "judge_robustness"
BLUR_SIGMAS = (0.0, 0.4, 0.6, 0.8, 1.0, 1.2)


def _blur(images, sigma):
    import keras

    if sigma == 0:
        return images
    return keras.ops.image.gaussian_blur(images, kernel_size=(5, 5), sigma=(sigma, sigma))


def _augment(images):
    """Per image: a blur sigma from `BLUR_SIGMAS`; noise std U(0, 0.1) on half of them."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    stack = tf.stack([_blur(images, s) for s in BLUR_SIGMAS], axis=1)  # (B, K, H, W, C)
    index = tf.random.uniform((batch,), 0, len(BLUR_SIGMAS), dtype=tf.int32)
    images = tf.gather(stack, index, batch_dims=1)
    std = tf.random.uniform((batch, 1, 1, 1), 0.0, 0.1)
    std *= tf.cast(tf.random.uniform((batch, 1, 1, 1)) < 0.5, tf.float32)
    return tf.clip_by_value(images + std * tf.random.normal(tf.shape(images)), -1.0, 1.0)


def _train_judge(steps, augment):
    """A `ShapesClassifier` trained as `train_shapes_classifier` does, optionally augmented."""
    import keras
    import tensorflow as tf

    from kzoo.metrics import features

    tf.random.set_seed(0)
    judge = features.ShapesClassifier(image_size=32, seed=0)
    judge.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss={name: "sparse_categorical_crossentropy" for name in features.ATTRIBUTES},
        steps_per_execution=25,
    )
    dataset = features._training_dataset(32, 0)
    if augment:
        dataset = dataset.map(lambda x, y: (_augment(x), y))
    judge.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return judge


def _named_file(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path.endswith(".npy"):
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy. Received: {text!r}")
    return name, path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--autoencoder", default=None, help="a trained autoencoder's workdir")
    parser.add_argument("--samples", type=_named_file, action="append", default=[])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import keras

    from kzoo.data import load_arrays
    from kzoo.metrics import load_or_train_shapes_classifier
    from kzoo.training import load_trained_model

    images, labels = load_arrays("kzoo_shapes", split="validation", image_size=32)
    rng = np.random.default_rng(0)
    probes = {"clean": images}
    for sigma in (0.5, 0.7, 1.0):
        probes[f"blur{sigma}"] = keras.ops.convert_to_numpy(_blur(images, sigma))
    probes["noise0.1"] = np.clip(images + rng.normal(0, 0.1, images.shape), -1, 1).astype("float32")
    if args.autoencoder:
        autoencoder = load_trained_model(args.autoencoder)
        probes["reconstruction"] = np.concatenate(
            [np.asarray(autoencoder(images[i : i + 200])) for i in range(0, len(images), 200)]
        )
    samples = {name: np.load(path) for name, path in args.samples}

    judges = [
        ("cached (kzoo.metrics default)", lambda: load_or_train_shapes_classifier(image_size=32))
    ]
    judges += [
        (f"{args.steps} steps, no augmentation", lambda: _train_judge(args.steps, False)),
        (f"{args.steps} steps, blur + noise", lambda: _train_judge(args.steps, True)),
    ]
    out = open(args.out, "a") if args.out else None
    for name, build in judges:
        t0 = time.perf_counter()
        judge = build()
        row = {"benchmark": BENCHMARK, "judge": name, "split": "validation"}
        row["train_s"] = round(time.perf_counter() - t0, 1)
        for probe, x in probes.items():
            read = judge.predict_attributes(x)
            row[f"shape_{probe}"] = round(float(np.mean(read["shape"] == labels["shape"])), 3)
            row[f"color_{probe}"] = round(float(np.mean(read["color"] == labels["color"])), 3)
        for sample_name, x in samples.items():
            requested = labels["shape"][: len(x)]
            read = judge.predict_attributes(x)["shape"]
            row[f"requested_shape_{sample_name}"] = round(float(np.mean(read == requested)), 3)
        row["autoencoder"] = args.autoencoder
        row["host"] = platform.node()
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
