"""`kzoo` command line: recipes, train, evaluate, reconstruct, export, convert, demo.

Every user error ends as one line `kzoo: error: ...` and exit status 2; set
`KZOO_DEBUG=1` to see the traceback.
"""

import argparse
import json
import os
import sys

from kzoo.export import QUANTIZE_MODES
from kzoo.task import capabilities

EXPORT_FORMATS = ("saved_model", "litert", "preset")
# Training batches that calibrate `--quantize int8` (kzoo.export.calibration): 8
# batches of 32 are 256 examples, within the 100-500 the LiteRT guide suggests.
DEFAULT_REPRESENTATIVE_BATCHES = 8
# Test examples of the autoencoder metrics; a recipe's own `evaluate` keeps its default.
DEFAULT_EVAL_EXAMPLES = 512
# CLI sampler names -> kzoo.diffusion.make_sampler names.
SAMPLERS = {
    "ddpm": "ddpm",
    "ddim": "ddim",
    "dpm_solver": "dpmpp_2m",
    "euler": "euler",
    "heun": "heun",
}


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError) as error:
        if os.environ.get("KZOO_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"kzoo: error: {message}", file=sys.stderr)
        return 2


def _parser():
    parser = argparse.ArgumentParser(prog="kzoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("recipes", help="list recipes with a one-line summary")
    p.set_defaults(handler=_cmd_recipes)

    p = sub.add_parser("train", help="train a recipe; resumes from the workdir's checkpoint")
    p.add_argument("recipe")
    p.add_argument("--workdir", help="default: runs/RECIPE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, help="total training steps (overrides the recipe)")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("evaluate", help="test-split metrics of a trained workdir (JSON)")
    p.add_argument("workdir")
    p.add_argument(
        "--num-examples",
        type=int,
        help=f"test examples (default: the recipe's own, else {DEFAULT_EVAL_EXAMPLES})",
    )
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("reconstruct", help="write an input/reconstruction grid as PNG")
    p.add_argument("workdir")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--num", type=int, default=8, help="images per row")
    p.set_defaults(handler=_cmd_reconstruct)

    p = sub.add_parser("sample", help="write a grid of generated images as PNG")
    p.add_argument("workdir")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument(
        "--num", type=int, default=8, help="images (one per class, or per caption, in turn)"
    )
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    p.add_argument("--steps", type=int, default=50, help="sampler steps (diffusion)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    p.add_argument("--temperature", type=float, default=1.0, help="code prior sampling")
    p.add_argument("--top-k", type=int, help="code prior sampling")
    p.add_argument(
        "--caption",
        dest="captions",
        action="append",
        metavar="TEXT",
        help="a caption for a caption-conditional code prior or text-to-image model (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_sample)

    p = sub.add_parser(
        "export", help="export a trained workdir to SavedModel, LiteRT or a preset (+ model card)"
    )
    p.add_argument("workdir", help="a training workdir, or a .keras file (`kzoo convert`)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE_MODES,
        help="LiteRT variant; int8 is full-integer, calibrated on training batches",
    )
    p.add_argument(
        "--representative-batches",
        type=int,
        metavar="N",
        help="--quantize int8: batches of the recipe's training pipeline that calibrate "
        f"the int8 ranges (default {DEFAULT_REPRESENTATIVE_BATCHES}; VQ autoencoders; other "
        "models calibrate on their own export parity batch)",
    )
    p.add_argument(
        "--int8-io",
        action="store_true",
        help="--quantize int8: int8 inputs and outputs (default float32, quantized inside "
        "the file; scales and zero points are in signatures.json)",
    )
    p.add_argument("--out", default="exported")
    p.add_argument("--name", help="model name in the export layout (default: the recipe)")
    p.add_argument(
        "--version",
        type=int,
        help="version number in the format's folder (default: its next free one); "
        "an existing version is never overwritten",
    )
    p.add_argument(
        "--serving-config",
        action="store_true",
        help="also write OUT/models.config (every SavedModel in OUT, absolute paths) and "
        "OUT/batching_parameters.txt for tensorflow_model_server",
    )
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser("convert", help="convert a diffusers checkpoint folder to a .keras file")
    p.add_argument("folder", help="config.json + diffusion_pytorch_model.safetensors")
    p.add_argument("--out", required=True, help="the .keras file to write")
    p.add_argument("--image-size", type=int, help="image height and width (default: sample_size)")
    p.add_argument(
        "--denoiser-only",
        action="store_true",
        help="save the bare network, not a DiffusionModel around it",
    )
    p.set_defaults(handler=_cmd_convert)

    p = sub.add_parser("demo", help="train, evaluate, export and check the demo models")
    p.add_argument("--workdir", default=os.path.join("runs", "vqvae_shapes"))
    p.add_argument("--out", default="exported")
    p.add_argument("--steps", type=int, help="override the recipe's steps")
    p.set_defaults(handler=_cmd_demo)
    return parser


def _cmd_recipes(args):
    import recipes

    summaries = recipes.list_recipes()
    width = max(map(len, summaries), default=0)
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")


def _cmd_train(args):
    import recipes

    config = recipes.get_recipe(args.recipe, args.overrides)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive integer. Received: --steps={args.steps}")
    import importlib

    from kzoo.training import train
    from kzoo.training.trainer import plan_run

    workdir = args.workdir or os.path.join("runs", args.recipe)
    config = _resumed_config(workdir, args.recipe, args.overrides) or config
    plan = plan_run(config, workdir, steps=args.steps)
    if plan.finished:
        steps = plan.config["steps"]
        where = f"of {steps}" if plan.step == steps else f"(requested steps={steps})"
        print(
            f"{workdir} is already at step {plan.step} {where}; nothing to train. "
            f"Use --set steps=N with N > {plan.step} to train further."
        )
        return
    recipe = importlib.import_module(f"recipes.{args.recipe}")
    train(config, workdir, steps=args.steps, dataset_fn=getattr(recipe, "build_dataset", None))
    print(f"Trained {args.recipe}; checkpoint and config.json in {workdir}")


def _resumed_config(workdir, recipe, overrides):
    """The config of the run a workdir's checkpoint resumes, `--set` applied; else None.

    Resuming keeps the run's `config.json` (not the recipe's current defaults);
    the trainer refuses `--set` values that differ from it, except `steps`.
    """
    from kzoo.training.checkpoint import CONFIG_FILE, read_state

    if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)) or read_state(workdir) is None:
        return None
    import recipes

    saved = _workdir_config(workdir)
    if saved.get("recipe", recipe) != recipe:
        raise ValueError(
            f"The workdir holds a run of recipe {saved['recipe']!r}; resume it with that "
            f"recipe or train in a new workdir. Received: recipe={recipe!r}, "
            f"workdir={workdir!r}"
        )
    return recipes.apply_overrides(saved, overrides)


def _workdir_config(workdir):
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise ValueError(f"The workdir does not exist. Received: workdir={workdir!r}")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"The workdir has no config.json (not a kzoo training directory). "
            f"Received: workdir={workdir!r}"
        ) from None
    except ValueError:
        raise ValueError(
            f"The workdir's config.json is corrupt. Received: workdir={workdir!r}"
        ) from None


def evaluate(workdir, num_examples=None):
    """Test-split metrics of the workdir's model, as a JSON-ready dict.

    A recipe that defines `evaluate(model, num_examples=N)` scores its own models
    (captioner_shapes: caption word accuracy; clip_shapes: zero-shot accuracy and
    retrieval recall); any other model must be a VQ autoencoder, scored by test PSNR
    and codebook statistics.

    Args:
        workdir: a directory written by `kzoo train`.
        num_examples: test examples to score; None keeps the recipe's default (else
            `DEFAULT_EVAL_EXAMPLES`).
    """
    from kzoo.training import load_trained_model

    if num_examples is not None and (
        isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1
    ):
        raise ValueError(
            f"--num-examples must be a positive integer. Received: --num-examples={num_examples}"
        )
    config = _workdir_config(workdir)
    model = load_trained_model(workdir)
    recipe_evaluate = _recipe_function(config, "evaluate")
    if recipe_evaluate is not None:
        return recipe_evaluate(model, **_evaluate_kwargs(recipe_evaluate, num_examples))
    if "reconstruct" not in capabilities(model):
        raise ValueError(
            f"The workdir's model ({type(model).__name__}) has no test-split metrics: it is "
            "not a VQ autoencoder and its recipe defines no `evaluate(model, num_examples)`. "
            f"Received: workdir={workdir!r}"
        )
    return _autoencoder_metrics(model, config, num_examples or DEFAULT_EVAL_EXAMPLES)


def _recipe_function(config, name):
    """Function `name` of the workdir's recipe module, or None (no such recipe or function)."""
    import recipes

    recipe = config.get("recipe")
    if not isinstance(recipe, str) or recipe not in recipes.list_recipes():
        return None
    import importlib

    return getattr(importlib.import_module(f"recipes.{recipe}"), name, None)


def _evaluate_kwargs(recipe_evaluate, num_examples):
    """Keyword arguments for a recipe's `evaluate`: `num_examples` when given.

    In-batch metrics (clip_shapes' recall within batches of `batch_size`) need one
    whole batch, so a `batch_size` default larger than `num_examples` is capped.
    """
    import inspect

    if num_examples is None:
        return {}
    kwargs = {"num_examples": num_examples}
    batch_size = inspect.signature(recipe_evaluate).parameters.get("batch_size")
    if batch_size is not None and isinstance(batch_size.default, int):
        kwargs["batch_size"] = min(batch_size.default, num_examples)
    return kwargs


def _autoencoder_metrics(model, config, num_examples):
    """Test-split PSNR and codebook statistics of a VQ autoencoder."""
    import kzoo.data
    from kzoo.metrics import autoencoder_metrics

    images, _ = kzoo.data.load_arrays(
        config["dataset"], split="test", num_examples=num_examples, image_size=model.image_shape[0]
    )
    return autoencoder_metrics(model, images)


def _cmd_evaluate(args):
    from kzoo.export import _core
    from kzoo.export.model_card import EVALUATION_FILE

    text = json.dumps(evaluate(args.workdir, args.num_examples), indent=2)
    # Kept beside the checkpoint: `kzoo export` puts these figures in the model card.
    _core.atomic_write_bytes(os.path.join(args.workdir, EVALUATION_FILE), (text + "\n").encode())
    print(text)


def reconstruct(workdir, out, num=8):
    import kzoo.data
    from kzoo.data.images import make_grid, save_png
    from kzoo.training import load_trained_model

    if num < 1:
        raise ValueError(f"--num must be a positive integer. Received: --num={num}")
    config = _workdir_config(workdir)
    model = load_trained_model(workdir)
    images, _ = kzoo.data.load_arrays(
        config["dataset"], split="test", num_examples=num, image_size=model.image_shape[0]
    )
    reconstructions = model.predict(images, verbose=0)
    return save_png(out, make_grid([images, reconstructions], scale=2))


def _cmd_reconstruct(args):
    print(f"Wrote {reconstruct(args.workdir, args.out, args.num)}")


def parity_batch(model, config, num=8):
    """A parity batch of real test images (and their codes) for VQ models, else None.

    Models with `export_parity_batch()` (diffusion, priors) supply their own.
    """
    import kzoo.data

    if hasattr(model, "export_parity_batch") or "reconstruct" not in capabilities(model):
        return None

    images, _ = kzoo.data.load_arrays(
        config["dataset"], split="test", num_examples=num, image_size=model.image_shape[0]
    )
    return _autoencoder_batch(model, images)


def _autoencoder_batch(model, images):
    """A VQ autoencoder's inputs for each endpoint: `images`, and their codes for `decode`."""
    import numpy as np

    images = np.asarray(images)
    return {
        "serving_default": {"images": images},
        "encode": {"images": images},
        "decode": {"indices": np.asarray(model.encode(images))},
    }


def representative_batches(model, config, num_batches=DEFAULT_REPRESENTATIVE_BATCHES):
    """Calibration batches for `--quantize int8`, from the recipe's training pipeline.

    A VQ autoencoder gets the first `num_batches` batches of its recipe's training
    dataset (`kzoo.training.trainer.train_dataset`: the recipe's batch size, seed and
    augmentation), images for `serving_default` and `encode` and their codes for
    `decode`. A model with `export_parity_batch()` (diffusion, priors) gets None:
    `export_all` then calibrates on that batch.

    Raises:
        ValueError: no pipeline and no parity batch to draw from.
    """
    if hasattr(model, "export_parity_batch"):
        return None
    if not ("reconstruct" in capabilities(model) and "dataset" in config):
        raise ValueError(
            "--quantize int8 calibrates on batches of the recipe's training pipeline (VQ "
            "autoencoders) or the model's own export_parity_batch(); this "
            f"{type(model).__name__} has neither here (a .keras file has no recipe). Export "
            "it from Python with export_all(..., representative_data=...). "
            f"Received: model={type(model).__name__}"
        )
    from kzoo.training.trainer import train_dataset

    batches = []
    for element in train_dataset(config, model).take(num_batches):
        images = element[0] if isinstance(element, tuple) else element
        batches.append(_autoencoder_batch(model, images))
    return batches


def sample(
    workdir,
    out,
    num=8,
    sampler="ddim",
    steps=50,
    guidance_scale=None,
    seed=0,
    temperature=1.0,
    top_k=None,
    captions=None,
):
    """Generate `num` images from a trained diffusion model or code prior into a PNG grid.

    A caption-conditional code prior needs `captions` (cycled over the `num` images);
    any other model refuses them.
    """
    import numpy as np

    from kzoo.data.images import make_grid, save_png
    from kzoo.training import load_trained_model

    if num < 1:
        raise ValueError(f"--num must be a positive integer. Received: --num={num}")
    config = _workdir_config(workdir)
    model = load_trained_model(workdir)
    num_classes = getattr(model, "num_classes", None)
    captioned = getattr(model, "caption_vocabulary", None) is not None
    # Text-to-image diffusion: captions optional (without, empty-caption samples).
    text_to_image = "generate_from_text" in capabilities(model)
    if captions and not (captioned or text_to_image):
        kind = (
            f"class-conditional (num_classes={num_classes}): sample it without --caption"
            if num_classes
            else "not caption-conditional"
        )
        raise ValueError(
            "--caption needs a caption-conditional code prior or text-to-image model; the "
            f"workdir's {type(model).__name__} is {kind}. Received: --caption {captions[0]!r}"
        )
    if captioned and not captions:
        raise ValueError(
            "The workdir's code prior is caption-conditional: pass --caption TEXT (repeatable). "
            "Received: no --caption"
        )
    labels = None if not num_classes else np.arange(num) % num_classes
    if "sample_codes" in capabilities(model):  # a code prior: decode through its VQ tokenizer
        from kzoo.models import Generator

        tokenizer = load_trained_model(config["vq_workdir"])
        generator = Generator(model, tokenizer, temperature=temperature, top_k=top_k)
        if captioned:
            images = generator.generate(
                captions=[captions[i % len(captions)] for i in range(num)], seed=seed
            )
        else:
            images = generator.generate(
                labels=labels, num_samples=None if num_classes else num, seed=seed
            )
    elif text_to_image and captions:
        images = model.generate_from_text(
            [captions[i % len(captions)] for i in range(num)],
            num_steps=steps,
            sampler=SAMPLERS[sampler],
            guidance_scale=guidance_scale,
            seed=seed,
        )
    elif "generate" in capabilities(model):
        images = model.generate(
            num_images=None if num_classes else num,
            labels=labels,
            num_steps=steps,
            sampler=SAMPLERS[sampler],
            guidance_scale=guidance_scale,
            seed=seed,
        )
    else:
        raise ValueError(
            f"The workdir's model ({type(model).__name__}) does not generate images; "
            f"use `kzoo reconstruct` for autoencoders. Received: workdir={workdir!r}"
        )
    return save_png(out, make_grid([np.asarray(images)], scale=2))


def _cmd_sample(args):
    path = sample(
        args.workdir,
        args.out,
        num=args.num,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        captions=args.captions,
    )
    print(f"Wrote {path}")


def _cmd_convert(args):
    from kzoo.convert import convert

    model, scheduler = convert(
        args.folder, args.out, image_size=args.image_size, denoiser_only=args.denoiser_only
    )
    if type(model).__name__ == "DiffusionModel":
        source = scheduler or "DDPM's linear defaults (no scheduler_config.json found)"
        print(f"Noise schedule and prediction type from {source}")
    print(f"Wrote {args.out} ({type(model).__name__}, {model.count_params():,} parameters)")


def _load_keras_file(path):
    """A model saved by `kzoo convert` (or `model.save`) for `kzoo export`."""
    import keras

    import kzoo.diffusion  # noqa: F401  (register kzoo classes for deserialization)
    import kzoo.models  # noqa: F401

    return keras.saving.load_model(path)


def _cmd_export(args):
    from kzoo.export import export_all, format_parity_table
    from kzoo.training import load_trained_model

    if args.format != "litert" and args.quantize != "none":
        raise ValueError(
            "--quantize applies to LiteRT only. "
            f"Received: --format={args.format} --quantize={args.quantize}"
        )
    for flag, given in (
        ("--representative-batches", args.representative_batches is not None),
        ("--int8-io", args.int8_io),
    ):
        if given and args.quantize != "int8":
            raise ValueError(
                f"{flag} applies to --quantize int8 only. Received: --quantize={args.quantize}"
            )
    if args.representative_batches is not None and args.representative_batches < 1:
        raise ValueError(
            "--representative-batches must be a positive integer. "
            f"Received: --representative-batches={args.representative_batches}"
        )
    keras_file = args.workdir.endswith(".keras") and os.path.isfile(args.workdir)
    load = _load_keras_file if keras_file else load_trained_model
    # A single .keras file has no recipe: its export is named after the file.
    config = {} if keras_file else _workdir_config(args.workdir)
    model = None
    name = args.name or config.get("recipe")
    if keras_file and name is None:
        name = os.path.basename(args.workdir)[: -len(".keras")]
    if name is None:
        model = load(args.workdir)
        name = model.name
    _check_new_version(args, name)
    if model is None:
        model = load(args.workdir)
    exportable = model
    if args.format == "litert" and hasattr(model, "litert_exportable"):
        # LiteRT has no string ops: models with tf.string signatures (DualEncoder,
        # Captioner) export a view of their token-id endpoints, sharing the weights.
        exportable = model.litert_exportable()
    int8 = {}
    if args.quantize == "int8":
        int8 = {
            "representative_data": representative_batches(
                exportable,
                config,
                args.representative_batches or DEFAULT_REPRESENTATIVE_BATCHES,
            ),
            "io": "int8" if args.int8_io else "float",
        }
    results = export_all(
        exportable if args.format != "preset" else model,
        args.out,
        name=name,
        formats=(args.format,),
        quantize=(args.quantize,),
        version=args.version,
        # A .keras file has no dataset in a config: export_all makes its own batch.
        parity_batch=None
        if keras_file or args.format == "preset"
        else parity_batch(exportable, config),
        card=_card_facts(args, config),
        **int8,
    )
    result = results[args.format]
    if result.parity is not None:
        print(format_parity_table([result.parity]))
    if exportable is not model:
        print(f"LiteRT signatures (token ids, no strings): {', '.join(result.signatures)}")
    print(f"Exported to {result.path}")
    if args.serving_config:
        from kzoo.export.serving_config import write_serving_config

        for path in write_serving_config(args.out):
            print(f"Wrote {path}")


def _card_facts(args, config):
    """What the model card says of the run: recipe, commands, `kzoo evaluate` figures."""
    from kzoo.export.model_card import read_evaluation

    recipe = config.get("recipe")
    export = f"kzoo export {args.workdir} --format {args.format}"
    if args.quantize != "none":
        export += f" --quantize {args.quantize}"
    if args.representative_batches is not None:
        export += f" --representative-batches {args.representative_batches}"
    if args.int8_io:
        export += " --int8-io"
    return {
        "recipe": recipe,
        "train_command": f"kzoo train {recipe} --workdir {args.workdir}" if recipe else None,
        "export_command": export,
        "evaluation": read_evaluation(args.workdir),
    }


def _check_new_version(args, name):
    """Refuses a `--version` that is not positive or exists (before any slow work)."""
    from kzoo.export.saved_model import export_dirs

    if args.version is None:
        return
    if args.version < 1:
        raise ValueError(
            f"--version must be a positive integer. Received: --version={args.version}"
        )
    path = os.path.join(export_dirs(args.out, name)[args.format], str(args.version))
    if os.path.exists(path):
        raise ValueError(
            f"--version {args.version} already exists ({path}); kzoo export never "
            "overwrites a version. Pick another --version, or leave it out for the next "
            f"free one. Received: --version={args.version}"
        )


def _cmd_demo(args):
    import recipes
    from kzoo.export import export_all, format_parity_table
    from kzoo.training import load_trained_model, train

    config = recipes.get_recipe("vqvae_shapes")
    print(f"== Training vqvae_shapes in {args.workdir} (resumes if interrupted)")
    train(config, args.workdir, steps=args.steps, verbose=2)
    print("== Test-split metrics")
    metrics = evaluate(args.workdir)
    print(json.dumps(metrics, indent=2))
    png = reconstruct(args.workdir, os.path.join(args.workdir, "reconstruction.png"))
    print("== Export: SavedModel (TF Serving layout) + LiteRT float32/float16, parity checked")

    model = load_trained_model(args.workdir)
    results = export_all(
        model,
        args.out,
        name="vqvae_shapes",
        quantize=("none", "float16"),
        parity_batch=parity_batch(model, config),
    )
    print(format_parity_table([result.parity for result in results.values()]))
    print("== Files")
    print(f"  checkpoint, config.json, log.csv : {args.workdir}")
    for result in results.values():
        files = ", ".join(os.path.basename(f) for f in result.files.values())
        print(f"  {result.format:<32} : {result.path}" + (f" ({files})" if files else ""))
    print(f"  {'reconstruction grid (top: input)':<32} : {png}")
