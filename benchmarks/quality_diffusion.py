"""quality_diffusion: sample quality of a trained class-conditional diffusion model vs NFE.

benchmarks/WORKLOADS.md, "Quality workloads": KID of samples vs number of sampler
steps (DDIM vs DPM-Solver++ at 10/20/50 NFE), here with Euler and Heun too, and
DDPM ancestral sampling at the step counts given by `--ddpm-steps`.

Usage:
    python -m benchmarks.quality_diffusion WORKDIR [--samples N] [--out FILE]
        [--guidance-scale 3] [--nfe 10,20,50] [--samplers ddim,dpmpp_2m,euler,heun]
        [--ddpm-steps 50,250] [--seed 0] [--no-floor]
    python -m benchmarks.quality_diffusion --table FILE.jsonl    # markdown table

Protocol (one JSON line per row on stdout, progress on stderr):
- Reference: the kzoo_shapes test split without its first N images (`test[N:]`).
- Conditioning: the shape labels of `test[:N]`, the same for every row; the
  initial noise comes from `generate(seed=...)`, so every sampler starts from the
  same noise. Classifier-free guidance with `--guidance-scale` (the recipe's 3).
- NFE = guided denoiser evaluations (each one a single batched call on 2N
  images: conditional and null class). DDIM, DPM-Solver++ 2M, Euler: one per
  step, so steps = NFE. Heun: `n` steps cost `2n - 1` (the last step is plain
  Euler), so the NFE budgets 10/20/50 run 5/10/25 steps = 9/19/49 NFE.
- Samplers as `DiffusionModel.generate` builds them: defaults of
  `kzoo.diffusion.make_sampler` ("trailing" spacing; Euler/Heun without Karras
  sigmas; DDIM eta 0).
- `kid_mean`/`kid_std`: KID (Binkowski et al. 2018) in the feature space of the
  cached `ShapesClassifier`, 100 subsets of min(N, reference) images.
  `shape_accuracy`: fraction of samples whose predicted shape is the
  conditioning label (the classifier's own test accuracy, about 0.93, bounds it).
- `s_per_sample`: wall seconds of the timed `generate` call / N, after one
  untraced warm-up call per sampler (`trace_s`).
- Ceiling row `test_images`: `test[:N]` themselves, scored like samples.
  Floor rows: `noise` (standard normal clipped to [-1, 1]) and `untrained`
  (the recipe's model with fresh weights, DDIM at 20 NFE).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

BENCHMARK = "quality_diffusion"
DEFAULT_SAMPLERS = ("ddim", "dpmpp_2m", "euler", "heun")
SAMPLER_NAMES = {
    "ddim": "DDIM (eta 0)",
    "dpmpp_2m": "DPM-Solver++ 2M",
    "euler": "Euler",
    "heun": "Heun",
    "ddpm": "DDPM (ancestral)",
}


def log(message):
    print(f"[quality_diffusion] {message}", file=sys.stderr, flush=True)


def steps_for_nfe(sampler, nfe):
    """Sampler steps that spend at most `nfe` denoiser evaluations, and their NFE."""
    if sampler == "heun":
        steps = max((nfe + 1) // 2, 1)
        return steps, 2 * steps - 1
    return nfe, nfe


def _int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _versions():
    import keras
    import tensorflow as tf

    import kzoo

    return {
        "kzoo": kzoo.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


class Scorer:
    """KID against a fixed reference and shape accuracy against fixed labels."""

    def __init__(self, reference_images, labels):
        from kzoo.metrics import load_or_train_shapes_classifier

        t0 = time.perf_counter()
        self.classifier = load_or_train_shapes_classifier(image_size=reference_images.shape[1])
        log(f"shapes classifier ready in {time.perf_counter() - t0:.1f}s")
        self.reference = self.classifier.features(reference_images)
        self.labels = np.asarray(labels)

    def __call__(self, images):
        from kzoo.metrics import kernel_inception_distance

        kid_mean, kid_std = kernel_inception_distance(
            self.reference, self.classifier.features(images), num_subsets=100, seed=0
        )
        accuracy = self.classifier.attribute_accuracy(images, {"shape": self.labels})["shape"]
        return {"kid_mean": kid_mean, "kid_std": kid_std, "shape_accuracy": accuracy}


def _timed(fn):
    from benchmarks._timing import _process_cpu_s, loadavg

    before = loadavg()
    cpu0, wall0 = _process_cpu_s(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - wall0
    cpu = _process_cpu_s() - cpu0
    return result, {
        "wall_s": wall,
        "cpu_util": round(cpu / max(wall, 1e-9), 3),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


def _weights_kind(model):
    """ "ema" if the model holds its optimizer's moving averages, else "raw" (or "no_ema")."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages:
        return "no_ema"
    same = all(
        np.array_equal(np.asarray(v), np.asarray(a))
        for v, a in zip(model.trainable_variables, averages, strict=True)
    )
    return "ema" if same else "raw"


def run(args):
    import kzoo.data
    from kzoo.training import load_trained_model
    from kzoo.training.checkpoint import read_state

    with open(os.path.join(args.workdir, "config.json")) as f:
        config = json.load(f)
    model = load_trained_model(args.workdir)
    state = read_state(args.workdir) or {}
    weights = _weights_kind(model)
    test_images, test_labels = kzoo.data.load_arrays(
        config["dataset"], split="test", image_size=model.image_shape[0]
    )
    n = args.samples
    if not 2 <= n <= len(test_images) - 2:
        raise ValueError(
            f"--samples must be in [2, {len(test_images) - 2}] (test[:N] gives the labels, "
            f"test[N:] the reference). Received: --samples={n}"
        )
    labels = test_labels["label"][:n].astype(np.int32)
    reference = test_images[n:]
    score = Scorer(reference, labels)
    common = {
        "benchmark": BENCHMARK,
        "workdir": os.path.normpath(args.workdir),
        "recipe": config.get("recipe") or os.path.basename(os.path.normpath(args.workdir)),
        "train_steps": state.get("step", config.get("steps")),
        "weights": weights,
        "schedule": model.schedule.name,
        "prediction_type": model.prediction_type,
        "samples": n,
        "reference": f"{config['dataset']} test[{n}:] ({len(reference)} images)",
        "labels": f"shape labels of test[:{n}]",
        "feature_net": "kzoo.metrics.ShapesClassifier (cached)",
        "versions": _versions(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
    }
    rows = []

    def emit(row):
        row = {**common, **row}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
        log(
            f"{row['row']:<10} {row.get('sampler') or '-':<9} nfe={row.get('nfe')} "
            f"kid={row['kid_mean']:.4f}+-{row['kid_std']:.4f} "
            f"shape_acc={row['shape_accuracy']:.3f} s/sample={row.get('s_per_sample')}"
        )

    emit({"row": "test_images", **score(test_images[:n])})
    if not args.no_floor:
        noise = np.random.default_rng(args.seed).standard_normal((n, *model.image_shape))
        emit({"row": "noise", **score(np.clip(noise, -1.0, 1.0).astype(np.float32))})

    plan = [(s, *steps_for_nfe(s, nfe)) for s in args.samplers for nfe in args.nfe]
    plan += [("ddpm", steps, steps) for steps in args.ddpm_steps]
    for sampler, steps, nfe in plan:

        def generate(labels=labels, sampler=sampler, steps=steps):
            return model.generate(
                labels=labels,
                num_steps=steps,
                sampler=sampler,
                guidance_scale=args.guidance_scale,
                seed=args.seed,
            )

        # Warm-up: traces the sampler's graph (num_steps is a tensor input, so
        # one trace serves every step count) on one full chunk at 1 step.
        warm = labels[: model.max_generate_batch]
        t0 = time.perf_counter()
        model.generate(
            labels=warm,
            num_steps=1,
            sampler=sampler,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
        )
        trace_s = time.perf_counter() - t0
        images, timing = _timed(generate)
        emit(
            {
                "row": "sampler",
                "sampler": sampler,
                "steps": steps,
                "nfe": nfe,
                "guidance_scale": args.guidance_scale,
                "seed": args.seed,
                **score(images),
                "s_per_sample": timing["wall_s"] / n,
                "trace_s": trace_s,
                **timing,
            }
        )

    if not args.no_floor:
        import keras

        from kzoo.training.trainer import build_model

        keras.utils.set_random_seed(config.get("seed", 0))
        untrained = build_model(dict(config["model"]))
        images = untrained.generate(
            labels=labels,
            num_steps=20,
            sampler="ddim",
            guidance_scale=args.guidance_scale,
            seed=args.seed,
        )
        emit(
            {
                "row": "untrained",
                "sampler": "ddim",
                "steps": 20,
                "nfe": 20,
                "guidance_scale": args.guidance_scale,
                "seed": args.seed,
                **score(images),
            }
        )
    return rows


def _fmt_kid(row):
    return f"{row['kid_mean']:.4f} ± {row['kid_std']:.4f}"


def markdown_table(rows):
    """The quality table of `run`'s rows (one results file, one workdir)."""
    lines = [
        "| sampler | steps | NFE | KID (mean ± std) | shape accuracy | s / sample |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["row"] == "test_images":
            name, steps, nfe, speed = "test images (ceiling)", "-", "-", "-"
        elif row["row"] == "noise":
            name, steps, nfe, speed = "Gaussian noise (floor)", "-", "-", "-"
        elif row["row"] == "untrained":
            name = f"untrained model, {SAMPLER_NAMES[row['sampler']]} (floor)"
            steps, nfe, speed = row["steps"], row["nfe"], "-"
        else:
            name = SAMPLER_NAMES.get(row["sampler"], row["sampler"])
            steps, nfe, speed = row["steps"], row["nfe"], f"{row['s_per_sample']:.3f}"
        lines.append(
            f"| {name} | {steps} | {nfe} | {_fmt_kid(row)} | "
            f"{row['shape_accuracy']:.3f} | {speed} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality_diffusion", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdir", nargs="?", help="a trained diffusion workdir")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--nfe", type=_int_list, default=[10, 20, 50])
    parser.add_argument(
        "--samplers",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(DEFAULT_SAMPLERS),
    )
    parser.add_argument("--ddpm-steps", type=_int_list, default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-floor", action="store_true", help="skip the noise/untrained rows")
    parser.add_argument("--table", metavar="FILE", help="print the markdown table of FILE")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if args.workdir:
            rows = [r for r in rows if r["workdir"] == os.path.normpath(args.workdir)]
        print(markdown_table(rows))
        return 0
    if not args.workdir:
        parser.error("WORKDIR is required (or --table FILE)")
    unknown = [s for s in args.samplers if s not in SAMPLER_NAMES]
    if unknown:
        parser.error(f"unknown samplers {unknown}; choose from {list(SAMPLER_NAMES)}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
