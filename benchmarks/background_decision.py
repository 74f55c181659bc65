"""background_decision: at which noise level is an image's background decided, and is it drawn?

A kzoo_shapes image is mostly background, so its background is its mean colour:
the lowest frequency there is, visible through more noise than anything else.
For a trained class-conditional `DiffusionModel` (pixel space) this measures, on
the **validation** split, one JSON line per row:

- `kind: "timestep"` rows, per training timestep t, on `--images` images noised
  with fixed noise:
  - `oracle_background`: the fraction whose background the image mean of `x_t`
    alone gives (nearest of the four background means scaled by `sqrt(a_t)`): how
    much of the background the noisy input holds at t. It is near chance (0.25)
    where the background is not yet decided and near 1 where it is.
  - `model_background`: the fraction whose background the classifier reads in
    the model's x0 prediction (true label); `x0_background_share` how often each
    background is read there (black, white, gray, blue), and `confusion` the
    4x4 counts (rows: true background, columns: read).
- `kind: "samples"` rows, per `--spacings` entry: `--samples` samples from fixed
  noise (seed 0), DPM-Solver++ 2M with `--nfe` steps at `--guidance-scale`,
  scored as `benchmarks.learning_curve` scores them (`shape_accuracy` with its
  binomial SE, KID, `background_share`; data: 0.25 each). A spacing is
  "trailing" (kzoo's default) or "powerP": `t_k = (T - 1) (1 - (k / n)^P)`, which
  for P > 1 puts more steps where the background is decided (near `T`).

Usage:
    python -m benchmarks.background_decision WORKDIR [--images 300] \
        [--timesteps 999,990,...] [--spacings trailing,power2] [--samples 200] \
        [--nfe 20] [--guidance-scale 8] [--out FILE.jsonl] [--tag TAG]
"""

import argparse
import json
import platform
import sys

import numpy as np

BENCHMARK = "background_decision"
TIMESTEPS = (999, 990, 980, 970, 960, 950, 940, 920, 900, 850, 800, 700, 500)


def background_means(images, backgrounds, num_backgrounds):
    """(num_backgrounds, 3): the mean colour of the images of each background."""
    return np.stack([images[backgrounds == b].mean(axis=(0, 1, 2)) for b in range(num_backgrounds)])


def oracle_background(x_t, alpha_cumprod, means):
    """The background of each noisy image read from its mean colour alone.

    `x_t = sqrt(a) x0 + sqrt(1 - a) eps`: the image mean of `x_t` is `sqrt(a)` times
    the clean image's mean plus noise of std `sqrt(1 - a) / sqrt(H W)`; the nearest
    scaled background mean is the maximum-likelihood background (equal priors).
    """
    image_means = x_t.mean(axis=(1, 2))  # (N, 3)
    distances = ((image_means[:, None] - np.sqrt(alpha_cumprod) * means[None]) ** 2).sum(-1)
    return distances.argmin(axis=1)


def power_spacing_sampler(schedule, prediction_type, power):
    """DPM-Solver++ 2M on `t_k = (T - 1) (1 - (k / n)^power)` (k = 0..n-1)."""
    from keras import ops

    from kzoo.diffusion.samplers import DPMSolverMultistepSampler

    class PowerSpacing(DPMSolverMultistepSampler):
        def _spaced_timestep(self, k, n):
            total = self.schedule.num_train_timesteps
            fraction = ops.cast(k, "float32") / ops.cast(n, "float32")
            t = ops.cast(ops.round((total - 1) * (1.0 - fraction**power)), "int32")
            t = ops.clip(t, 0, total - 1)
            return ops.where(ops.cast(k, "int32") >= ops.cast(n, "int32"), -1, t)

    return PowerSpacing(schedule, prediction_type)


def timestep_rows(model, scorer, data, num_images, timesteps):
    from keras import ops

    from kzoo.data import shapes
    from kzoo.diffusion.schedules import add_noise, predict_x0

    num_backgrounds = len(shapes.BACKGROUNDS)
    images = data["image"].astype("float32") / 127.5 - 1.0
    means = background_means(images, data["background"], num_backgrounds)
    x0, labels = images[:num_images], data["shape"][:num_images].astype("int32")
    truth = data["background"][:num_images]
    noise = np.random.default_rng(0).standard_normal(x0.shape).astype("float32")
    alphas = np.asarray(model.schedule.alphas_cumprod)
    for t in timesteps:
        steps = ops.full((num_images,), t, "int32")
        x_t = ops.convert_to_tensor(add_noise(model.schedule, x0, noise, steps))
        inputs = [x_t, ops.cast(steps, "float32"), ops.convert_to_tensor(labels)]
        output = model.denoiser(inputs, training=False)
        x0_hat = predict_x0(model.schedule, output, x_t, steps, model.prediction_type)
        read = scorer.classifier.predict_attributes(np.clip(np.asarray(x0_hat), -1.0, 1.0))
        confusion = np.zeros((num_backgrounds, num_backgrounds), int)
        np.add.at(confusion, (truth, read["background"]), 1)
        oracle = oracle_background(np.asarray(x_t), alphas[t], means)
        yield {
            "kind": "timestep",
            "t": int(t),
            "alpha_cumprod": float(alphas[t]),
            "oracle_background": float(np.mean(oracle == truth)),
            "model_background": float(np.mean(read["background"] == truth)),
            "x0_background_share": (confusion.sum(0) / num_images).round(4).tolist(),
            "confusion": confusion.tolist(),
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a trained class-conditional pixel DiffusionModel")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--timesteps", default=",".join(str(t) for t in TIMESTEPS))
    parser.add_argument("--spacings", default="trailing,power2")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=8.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)

    from benchmarks.learning_curve import ValidationScorer
    from kzoo.data import shapes
    from kzoo.training import load_trained_model

    model = load_trained_model(args.workdir)
    if model.autoencoder is not None or not model.num_classes:
        raise SystemExit(
            "background_decision needs a class-conditional pixel-space DiffusionModel. "
            f"Received: workdir={args.workdir!r}"
        )
    size = model.image_shape[0]
    data = shapes.generate_split("validation", image_size=size)
    scorer = ValidationScorer(size, args.samples, 1, model.num_classes)
    base = {
        "benchmark": BENCHMARK,
        "workdir": args.workdir,
        "tag": args.tag,
        "split": "validation",
        "host": platform.node(),
    }
    out = open(args.out, "a") if args.out else sys.stdout
    timesteps = [int(t) for t in args.timesteps.split(",") if t]
    for row in timestep_rows(model, scorer, data, args.images, timesteps):
        print(json.dumps({**base, "images": args.images, **row}), file=out, flush=True)
    for spacing in filter(None, args.spacings.split(",")):
        if spacing == "trailing":
            sampler = "dpmpp_2m"
        elif spacing.startswith("power"):
            power = float(spacing[len("power") :])
            sampler = power_spacing_sampler(model.schedule, model.prediction_type, power)
        else:
            raise SystemExit(f"--spacings: trailing or powerP. Received: {spacing!r}")
        metrics, _ = scorer.samples(model, args.nfe, args.guidance_scale, sampler=sampler)
        row = {"kind": "samples", "spacing": spacing, "nfe": args.nfe}
        row.update(guidance_scale=args.guidance_scale, samples=args.samples, **metrics)
        print(json.dumps({**base, **row}), file=out, flush=True)


if __name__ == "__main__":
    main()
