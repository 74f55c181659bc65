"""guidance_sweep: a class-conditional diffusion workdir scored on validation per guidance scale.

For each `--scales` value, `--samples` samples conditioned on the shapes of
`validation[:N]` (fixed noise, `--sampler` with `--nfe` steps, DPM-Solver++ 2M by
default) are scored as `benchmarks.learning_curve` scores them: the requested shape read by the
`ShapesClassifier` (with its binomial standard error) and KID against
`validation[N:]` in the classifier's features. One JSON line per scale.

Usage:
    python -m benchmarks.guidance_sweep WORKDIR --scales 1,2,3,5,8 [--samples 150] \
        [--nfe 20] [--sampler dpmpp_2m] [--out FILE.jsonl] [--tag TAG]

The guidance scale is a sampling choice: it is chosen here, on validation, and the
test split is then scored once with it by `benchmarks.quality_diffusion`.
"""

import argparse
import json
import platform
import sys

BENCHMARK = "guidance_sweep"


def _scales(text):
    try:
        scales = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        scales = []
    if not scales or min(scales) < 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated guidance scales >= 0, e.g. 1,3,5. Received: {text!r}"
        )
    return scales


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--scales", type=_scales, required=True)
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m", help="a kzoo sampler name")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)

    from benchmarks.learning_curve import ValidationScorer
    from kzoo.training import checkpoint

    model = checkpoint.load_trained_model(args.workdir)
    if getattr(model, "num_classes", None) is None:
        raise SystemExit(
            "guidance_sweep needs a class-conditional diffusion model. "
            f"Received: workdir={args.workdir!r}"
        )
    state = checkpoint.read_state(args.workdir)
    scorer = ValidationScorer(model.image_shape[0], args.samples, 1, model.num_classes)
    out = open(args.out, "a") if args.out else sys.stdout
    for scale in args.scales:
        metrics, _ = scorer.samples(model, args.nfe, scale, sampler=args.sampler)
        row = {
            "benchmark": BENCHMARK,
            "workdir": args.workdir,
            "tag": args.tag,
            "step": state["step"],
            "split": "validation",
            "samples": args.samples,
            "sampler": args.sampler,
            "nfe": args.nfe,
            "guidance_scale": scale,
            "host": platform.node(),
            **metrics,
        }
        print(json.dumps(row), file=out, flush=True)
        print(
            f"[guidance_sweep] scale {scale:g}: shape {metrics['shape_accuracy']:.3f} "
            f"KID {metrics['kid_mean']:.3f}",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()
