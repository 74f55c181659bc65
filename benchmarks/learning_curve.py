"""learning_curve: train a diffusion recipe, scored on validation as it trains.

Every `--eval-every` steps the EMA weights (or the raw ones without EMA) are swapped
in and scored on the kzoo_shapes **validation** split, one JSON line each:

- `shape_accuracy` (+ `shape_accuracy_se`, the binomial standard error): the
  fraction of `--samples` samples whose shape the `ShapesClassifier` reads as the
  requested one; labels are the shapes of `validation[:N]`, the initial noise is
  fixed (seed 0), DPM-Solver++ 2M with `--nfe` steps and `--guidance-scale`.
- `kid_mean`, `kid_std`: KID of those samples against `validation[N:]` in the
  classifier's features.
- `background_share`: the fraction of samples the classifier reads as each
  background (black, white, gray, blue; 0.25 each in the data).
- `diagnosis`: per training timestep t, on `--diagnosis-images` validation images
  with fixed noise, the x0 implied by the model's output with the true label, a
  wrong label and the null label: its MSE to the clean image (`mse_true`,
  `mse_wrong`, `mse_null`) and the classifier's shape accuracy on it
  (`shape_true`, `shape_wrong`, `shape_null`; for the wrong label, the fraction
  read as the *true* shape). A condition the model uses shows as mse_true <
  mse_null < mse_wrong; the t where `shape_true` falls towards chance is where the
  shape is decided. A latent model (`autoencoder_workdir` in the recipe) is
  diagnosed in its latent space: MSE in scaled latent units, shape read on the
  decoded x0.

A text-to-image recipe (`text2image_shapes`) is scored by the recipe's own
`evaluate` on the first `--samples` validation captions (its sampler and settings;
`--nfe` and `--guidance-scale` as given): per attribute the agreement with the
caption, overall and under `"novel"` on the captions whose attribute combination
never occurs in train. Its `diagnosis` conditions on the true caption, a wrong one
(the same caption with another shape word) and the empty caption (the null
condition of guidance); `shape_wrong` is again the fraction read as the true shape.

Usage:
    python -m benchmarks.learning_curve RECIPE --steps 4000 --eval-every 1000 \
        [--set key=value ...] [--samples 300] [--out FILE.jsonl] [--workdir DIR]

Nothing here reads the test split: recipe choices are made on these figures and
the test split is scored once, at the end, by `benchmarks.quality_diffusion`.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

BENCHMARK = "learning_curve"
DIAGNOSIS_TIMESTEPS = (100, 300, 500, 700, 900)


def log(message):
    print(f"[learning_curve] {message}", file=sys.stderr, flush=True)


class ValidationScorer:
    """Scores a class-conditional `DiffusionModel` on the kzoo_shapes validation split."""

    def __init__(self, image_size, num_samples, diagnosis_images, num_classes):
        from kzoo.data import shapes
        from kzoo.metrics import load_or_train_shapes_classifier

        data = shapes.generate_split("validation", image_size=image_size)
        images = data["image"].astype("float32") / 127.5 - 1.0
        self.labels = data["shape"][:num_samples].astype("int32")
        self.classifier = load_or_train_shapes_classifier(image_size=image_size)
        self.reference = self.classifier.features(images[num_samples:])
        self.num_classes = num_classes
        self.num_backgrounds = len(shapes.BACKGROUNDS)
        rng = np.random.default_rng(0)
        self.x0 = images[:diagnosis_images]
        self.x0_labels = data["shape"][:diagnosis_images].astype("int32")
        self.noise = rng.standard_normal(self.x0.shape).astype("float32")
        offset = rng.integers(1, num_classes, size=diagnosis_images)
        self.wrong_labels = ((self.x0_labels + offset) % num_classes).astype("int32")

    def _shape_accuracy(self, images, labels):
        return float(self.classifier.attribute_accuracy(images, {"shape": labels})["shape"])

    def samples(self, model, nfe, guidance_scale, sampler="dpmpp_2m"):
        from kzoo.metrics import kernel_inception_distance

        t0 = time.perf_counter()
        images = model.generate(
            labels=self.labels,
            num_steps=nfe,
            sampler=sampler,
            guidance_scale=guidance_scale,
            seed=0,
        )
        wall = time.perf_counter() - t0
        accuracy = self._shape_accuracy(images, self.labels)
        # The four backgrounds are equally likely in the data; a sampler whose
        # trajectory collapses towards the mean image draws mostly gray ones.
        backgrounds = self.classifier.predict_attributes(images)["background"]
        counts = np.bincount(backgrounds, minlength=self.num_backgrounds)
        background_share = counts / len(backgrounds)
        kid_mean, kid_std = kernel_inception_distance(
            self.reference, self.classifier.features(images), num_subsets=100, seed=0
        )
        n = len(self.labels)
        return {
            "shape_accuracy": accuracy,
            "shape_accuracy_se": float(np.sqrt(accuracy * (1 - accuracy) / n)),
            "kid_mean": float(kid_mean),
            "kid_std": float(kid_std),
            "background_share": [round(float(v), 4) for v in background_share],
            "sample_s": round(wall, 1),
        }, images

    def diagnosis(self, model):
        from keras import ops

        from kzoo.diffusion.schedules import add_noise, predict_x0

        rows = []
        null = np.full_like(self.x0_labels, self.num_classes)
        # A latent model is diagnosed in its latent space (the clean latents noised with
        # fixed noise); MSE is then in latent units and the shape is read on the decoded x0.
        x0, noise = ops.convert_to_tensor(self.x0), self.noise
        if model.autoencoder is not None:
            x0 = model._encode(x0) * model._current_latent_scale()
            noise = np.random.default_rng(1).standard_normal(tuple(x0.shape)).astype("float32")
        for t in DIAGNOSIS_TIMESTEPS:
            timesteps = ops.full((len(self.x0),), t, "int32")
            x_t = add_noise(model.schedule, x0, noise, timesteps)
            row = {"t": t}
            for name, labels in (
                ("true", self.x0_labels),
                ("wrong", self.wrong_labels),
                ("null", null),
            ):
                inputs = [x_t, ops.cast(timesteps, "float32"), ops.convert_to_tensor(labels)]
                output = model.denoiser(inputs, training=False)
                x0_hat = predict_x0(model.schedule, output, x_t, timesteps, model.prediction_type)
                if model.autoencoder is None:
                    x0_hat = np.clip(np.asarray(x0_hat), -1.0, 1.0)
                    row[f"mse_{name}"] = float(np.mean((x0_hat - self.x0) ** 2))
                else:
                    row[f"mse_{name}"] = float(np.mean((np.asarray(x0_hat) - np.asarray(x0)) ** 2))
                    x0_hat = np.asarray(model._decode(x0_hat))
                row[f"shape_{name}"] = self._shape_accuracy(x0_hat, self.x0_labels)
            rows.append(row)
        return rows


class TextValidationScorer:
    """Scores a text-to-image `DiffusionModel` on the kzoo_shapes validation split."""

    def __init__(self, evaluate, image_size, num_samples, diagnosis_images, classifier=None):
        from kzoo.data import shapes
        from kzoo.metrics import load_or_train_shapes_classifier

        self.evaluate = evaluate
        self.num_samples = num_samples
        data = shapes.generate_split(
            "validation", num_examples=diagnosis_images, image_size=image_size
        )
        self.classifier = classifier or load_or_train_shapes_classifier(image_size=image_size)
        self.x0 = data["image"].astype("float32") / 127.5 - 1.0
        self.x0_labels = data["shape"].astype("int32")
        rng = np.random.default_rng(0)
        self.noise = rng.standard_normal(self.x0.shape).astype("float32")
        offset = rng.integers(1, len(shapes.SHAPES), size=diagnosis_images)
        wrong_shapes = (data["shape"] + offset) % len(shapes.SHAPES)
        factors = [data[name] for name in shapes.LABEL_NAMES[1:]]
        self.captions = {
            "true": [str(c) for c in data["caption"]],
            "wrong": [
                shapes.make_caption(shape, *rest)
                for shape, *rest in zip(wrong_shapes, *factors, strict=True)
            ],
            "null": [""] * diagnosis_images,
        }

    def samples(self, model, nfe, guidance_scale):
        results = self.evaluate(
            model,
            num_examples=self.num_samples,
            num_steps=nfe,
            guidance_scale=guidance_scale,
            classifier=self.classifier,
            split="validation",
        )
        metrics = {
            "shape_accuracy": results["shape_agreement"],
            "shape_accuracy_se": results["shape_agreement_se"],
            "evaluate": results,
        }
        return metrics, None

    def diagnosis(self, model):
        from keras import ops

        from kzoo.diffusion.schedules import add_noise, predict_x0

        x0 = ops.convert_to_tensor(self.x0)
        texts = {
            name: model.encode_text(model.tokenize(captions))
            for name, captions in self.captions.items()
        }
        rows = []
        for t in DIAGNOSIS_TIMESTEPS:
            timesteps = ops.full((len(self.x0),), t, "int32")
            x_t = add_noise(model.schedule, x0, self.noise, timesteps)
            row = {"t": t}
            for name, text in texts.items():
                output = model._denoise(x_t, ops.cast(timesteps, "float32"), text, training=False)
                x0_hat = predict_x0(model.schedule, output, x_t, timesteps, model.prediction_type)
                x0_hat = np.clip(np.asarray(x0_hat), -1.0, 1.0)
                row[f"mse_{name}"] = float(np.mean((x0_hat - self.x0) ** 2))
                row[f"shape_{name}"] = float(
                    self.classifier.attribute_accuracy(x0_hat, {"shape": self.x0_labels})["shape"]
                )
            rows.append(row)
        return rows


def make_scorer(recipe, model, num_samples, diagnosis_images):
    """The validation scorer for `model`: by caption for text-to-image, else by label."""
    if model.text_conditional:
        import importlib

        evaluate = importlib.import_module(f"recipes.{recipe}").evaluate
        return TextValidationScorer(evaluate, model.image_shape[0], num_samples, diagnosis_images)
    return ValidationScorer(model.image_shape[0], num_samples, diagnosis_images, model.num_classes)


def _swap_in_ema(model):
    """Assign the optimizer's EMA to the model; return the raw values to restore."""
    optimizer = model.optimizer
    if not getattr(optimizer, "use_ema", False):
        return None
    raw = [v.numpy() for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)
    return raw


def _restore(model, raw):
    if raw is not None:
        for variable, value in zip(model.trainable_variables, raw, strict=True):
            variable.assign(value)


def build_recipe_model(recipe, overrides, steps):
    """`(config, model)`: the recipe with `overrides` and `steps`, compiled as `kzoo train` does."""
    import keras

    import recipes
    from kzoo.training import trainer

    config = recipes.get_recipe(recipe, overrides)
    config["steps"] = steps
    trainer.validate_config(config)
    keras.mixed_precision.set_global_policy(config["precision"])
    keras.utils.set_random_seed(config["seed"])
    model = trainer.build_model(trainer.resolve_model_config(config))
    model.compile(optimizer=trainer.build_optimizer(config), jit_compile=config["jit_compile"])
    trainer._build_optimizer_eagerly(model)
    return config, model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--diagnosis-images", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--workdir",
        default=None,
        help="save config.json, the checkpoint and samples of every evaluated point here",
    )
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)

    import keras

    from kzoo.training import checkpoint, trainer

    config, model = build_recipe_model(args.recipe, args.overrides, args.steps)
    dataset = trainer.train_dataset(config, model)
    scorer = make_scorer(args.recipe, model, args.samples, args.diagnosis_images)
    out = open(args.out, "a") if args.out else sys.stdout
    base = {
        "benchmark": BENCHMARK,
        "recipe": args.recipe,
        "tag": args.tag,
        "overrides": args.overrides,
        "batch_size": config["batch_size"],
        "precision": config["precision"],
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "params": int(model.denoiser.count_params()),
    }
    state = {"train_s": 0.0, "t0": time.perf_counter()}

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            state["train_s"] += time.perf_counter() - state["t0"]
            step = (epoch + 1) * args.eval_every
            raw = _swap_in_ema(model)
            metrics, images = scorer.samples(model, args.nfe, args.guidance_scale)
            row = {
                **base,
                "step": step,
                "train_s": round(state["train_s"], 1),
                "loss": float(logs.get("loss", float("nan"))),
                "nfe": args.nfe,
                "guidance_scale": args.guidance_scale,
                "split": "validation",
                **metrics,
                "diagnosis": scorer.diagnosis(model),
            }
            _restore(model, raw)
            print(json.dumps(row), file=out, flush=True)
            kid = f" KID {metrics['kid_mean']:.3f}" if "kid_mean" in metrics else ""
            log(
                f"step {step}: shape {metrics['shape_accuracy']:.3f}{kid} "
                f"loss {row['loss']:.4f} train {state['train_s']:.0f}s"
            )
            if args.workdir:
                # Every evaluated point is also a workdir like `kzoo train`'s (for `kzoo
                # sample` and benchmarks.quality_diffusion), so a run stopped early keeps it.
                os.makedirs(args.workdir, exist_ok=True)
                if images is not None:
                    np.save(os.path.join(args.workdir, "samples.npy"), images)
                checkpoint.write_json_atomic(
                    os.path.join(args.workdir, checkpoint.CONFIG_FILE), config
                )
                checkpoint.save_checkpoint(model, args.workdir, epoch + 1, step)
            state["t0"] = time.perf_counter()

    model.fit(
        dataset,
        epochs=args.steps // args.eval_every,
        steps_per_epoch=args.eval_every,
        callbacks=[Evaluate()],
        verbose=0,
    )


if __name__ == "__main__":
    main()
