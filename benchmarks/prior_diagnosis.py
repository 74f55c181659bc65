"""prior_diagnosis: does a class-conditional `CodePrior` use its label, and what can it draw?

Three measurements on a kzoo_shapes split (`validation` while choices are made;
`test` once at the end), one JSON line:

- **Condition use.** The split's images are encoded by the prior's tokenizer and
  scored teacher-forced: the mean next-code negative log-likelihood (nats per
  code) with the true shape label (`nll_true`) and with a wrong one
  (`nll_wrong`, the true label plus a random offset in 1..C-1). A prior that uses
  its label shows `nll_true < nll_wrong`; `label_gain_nats` is the gap summed
  over the grid (nats per image: the information the label adds to the codes),
  `label_gain_positions` the fraction of grid positions where the true label
  lowers the NLL by more than 0.01 nats.
- **The tokenizer's ceiling** (`shape_kept`, `color_kept`): the classifier reads
  the image's shape / colour in the tokenizer's reconstruction. A prior that drew
  exactly the codes of real images with the requested shape would show that shape
  this often, so the requested shape in samples cannot be expected above it.
- **Samples** (`shape_accuracy` with its binomial SE): `--samples` samples
  conditioned on the shapes of the split's first images, temperature and top-k as
  given, decoded by the tokenizer and read by the `ShapesClassifier`.

Usage:
    python -m benchmarks.prior_diagnosis PRIOR_WORKDIR [--vq-workdir DIR] \
        [--split validation] [--images 600] [--samples 300] [--out FILE.jsonl] [--tag TAG]
"""

import argparse
import json
import platform
import sys
import time

import numpy as np

BENCHMARK = "prior_diagnosis"
_BATCH = 100


def _nll_per_position(prior, codes, labels):
    """Teacher-forced next-code NLL (N, h*w) in nats."""
    import keras

    rows = []
    for start in range(0, len(codes), _BATCH):
        tokens, targets = prior.prepare_inputs(
            codes[start : start + _BATCH], labels=labels[start : start + _BATCH]
        )
        logits = prior(tokens, training=False)  # (B, h*w, K)
        logp = keras.ops.log_softmax(keras.ops.cast(logits, "float32"), axis=-1)
        picked = np.take_along_axis(
            keras.ops.convert_to_numpy(logp), np.asarray(targets)[..., None], axis=-1
        )
        rows.append(-picked[..., 0])
    return np.concatenate(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a trained class-conditional code prior's workdir")
    parser.add_argument(
        "--vq-workdir", default=None, help="the tokenizer's workdir (default: the run's vq_workdir)"
    )
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    for name in ("images", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: {getattr(args, name)}")

    from kzoo.data import shapes
    from kzoo.metrics import load_or_train_shapes_classifier
    from kzoo.training import checkpoint

    prior = checkpoint.load_trained_model(args.workdir)
    num_classes = getattr(prior, "num_classes", None)
    if num_classes is None:
        raise SystemExit(
            "prior_diagnosis needs a class-conditional CodePrior. "
            f"Received: workdir={args.workdir!r}"
        )
    with open(f"{args.workdir}/config.json") as f:
        config = json.load(f)
    vq_workdir = args.vq_workdir or config.get("vq_workdir")
    tokenizer = checkpoint.load_trained_model(vq_workdir)
    image_size = tokenizer.image_shape[0]

    data = shapes.generate_split(args.split, image_size=image_size)
    count = min(args.images, len(data["shape"]))
    images = data["image"][:count].astype("float32") / 127.5 - 1.0
    labels = data["shape"][:count].astype("int32")
    classifier = load_or_train_shapes_classifier(image_size=image_size)

    t0 = time.perf_counter()
    codes = np.concatenate(
        [np.asarray(tokenizer.encode(images[i : i + _BATCH])) for i in range(0, count, _BATCH)]
    )
    offset = np.random.default_rng(args.seed).integers(1, num_classes, size=count)
    wrong = ((labels + offset) % num_classes).astype("int32")
    nll_true = _nll_per_position(prior, codes, labels)
    nll_wrong = _nll_per_position(prior, codes, wrong)
    gain = (nll_wrong - nll_true).mean(axis=0)  # (h*w,) nats per position

    reconstructions = np.concatenate(
        [np.asarray(tokenizer.decode(codes[i : i + _BATCH])) for i in range(0, count, _BATCH)]
    )
    kept = classifier.attribute_accuracy(
        reconstructions, {"shape": labels, "color": data["color"][:count]}
    )

    num_samples = min(args.samples, count)
    sampled = []
    for i in range(0, num_samples, _BATCH):
        grids = prior.sample(
            labels=labels[i : min(i + _BATCH, num_samples)],
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed + 1 + i,
        )
        sampled.append(np.asarray(tokenizer.decode(grids)))
    sampled = np.concatenate(sampled)
    accuracy = float(
        classifier.attribute_accuracy(sampled, {"shape": labels[:num_samples]})["shape"]
    )

    row = {
        "benchmark": BENCHMARK,
        "tag": args.tag,
        "workdir": args.workdir,
        "vq_workdir": vq_workdir,
        "step": checkpoint.read_state(args.workdir).get("step"),
        "split": args.split,
        "images": count,
        "grid": list(codes.shape[1:]),
        "nll_true": round(float(nll_true.mean()), 4),
        "nll_wrong": round(float(nll_wrong.mean()), 4),
        "label_gain_nats": round(float(gain.sum()), 3),
        "label_gain_positions": round(float(np.mean(gain > 0.01)), 3),
        "label_gain_max_position": round(float(gain.max()), 4),
        "shape_kept": round(float(kept["shape"]), 4),
        "color_kept": round(float(kept["color"]), 4),
        "samples": num_samples,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "shape_accuracy": round(accuracy, 4),
        "shape_accuracy_se": round(float(np.sqrt(accuracy * (1 - accuracy) / num_samples)), 4),
        "wall_s": round(time.perf_counter() - t0, 1),
        "host": platform.node(),
    }
    line = json.dumps(row)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
