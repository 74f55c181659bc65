"""Run a recipe config: build the model and data, `fit` with checkpoints, resume.

The data pipeline is deterministic and each resumed run skips the batches the
checkpointed epochs consumed; the checkpoint restores the raw weights, the
optimizer (EMA averages included) and every seed generator. So a run interrupted
at any point and started again, or stopped at N steps and continued to 2N, ends
with the same weights as an uninterrupted one.

A workdir with a checkpoint keeps its run's `config.json`: resuming with another
config raises, except for `steps`.
"""

import json
import math
import os
import warnings
from typing import NamedTuple

import keras

from kzoo.task import capabilities
from kzoo.training import checkpoint as ckpt
from kzoo.training.distribute import STRATEGIES

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
ADAM_BETAS = ("beta_1", "beta_2")


MODEL_PACKAGES = ("kzoo.models", "kzoo.diffusion")


def build_model(model_config):
    """Instantiate a model from a recipe's `model` dict.

    `class_name` names a class of `kzoo.models` or `kzoo.diffusion`; the other
    entries are its constructor arguments. A nested dict with a `class_name` (a
    diffusion model's `denoiser`, say) is built the same way first.
    """
    import importlib

    args = {
        key: build_model(value) if isinstance(value, dict) and "class_name" in value else value
        for key, value in model_config.items()
        if key != "class_name"
    }
    class_name = model_config["class_name"]
    known = []
    for package in MODEL_PACKAGES:
        module = importlib.import_module(package)
        if hasattr(module, class_name):
            return getattr(module, class_name)(**args)
        known += getattr(module, "__all__", [])
    raise ValueError(
        f"Unknown model class. Expected one of {sorted(known)}. "
        f"Received: model.class_name={class_name!r}"
    )


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config):
    """The recipe's learning rate: a float, or linear warmup then cosine decay.

    Optional recipe keys: `lr_schedule` ("constant", the default, or "cosine":
    decay to 0 over the steps after warmup, SGDR's cosine without restarts,
    Loshchilov & Hutter 2017) and `warmup_steps` (linear warmup from 0, default 0).
    The schedule is stored with the optimizer, so a resumed run keeps the one it
    was built with.
    """
    schedule = config.get("lr_schedule", "constant")
    warmup = config.get("warmup_steps", 0)
    if schedule == "constant" and not warmup:
        return config["learning_rate"]
    decay_steps = max(config["steps"] - warmup, 1) if schedule == "cosine" else 10**12
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config["learning_rate"],
        decay_steps=decay_steps,
        warmup_target=config["learning_rate"] if warmup else None,
        warmup_steps=warmup,
    )


def build_optimizer(config):
    return keras.optimizers.AdamW(
        learning_rate=learning_rate(config),
        weight_decay=config["weight_decay"],
        use_ema=bool(config.get("ema", False)),
        ema_momentum=config.get("ema_momentum", 0.99),
        gradient_accumulation_steps=(
            config["grad_accum_steps"] if config.get("grad_accum_steps", 1) > 1 else None
        ),
        # Optional recipe keys (GAN recipes use taming's 0.5, 0.9); Keras' defaults otherwise.
        **{key: config[key] for key in ADAM_BETAS if key in config},
    )


def validate_config(config):
    """Check the training knobs of a resolved recipe config; raise a clear error."""
    if config["precision"] not in PRECISIONS:
        raise ValueError(
            f"Unknown precision. Expected one of {list(PRECISIONS)}. "
            f"Received: precision={config['precision']!r}"
        )
    strategy = config.get("strategy", "default")
    if strategy not in STRATEGIES:
        raise ValueError(
            f"Unknown distribution strategy. Expected one of {list(STRATEGIES)}. "
            f"Received: strategy={strategy!r}"
        )
    for key in ("batch_size", "steps", "steps_per_epoch", "grad_accum_steps"):
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{key}` must be a positive integer. Received: {key}={value!r}")
    if not config["learning_rate"] > 0:
        raise ValueError(
            f"`learning_rate` must be positive. Received: learning_rate={config['learning_rate']!r}"
        )
    if config.get("lr_schedule", "constant") not in LR_SCHEDULES:
        raise ValueError(
            f"Unknown learning-rate schedule. Expected one of {list(LR_SCHEDULES)}. "
            f"Received: lr_schedule={config['lr_schedule']!r}"
        )
    warmup = config.get("warmup_steps", 0)
    # A run shorter than its warmup (`--steps 50` on a recipe that warms up for 200)
    # is allowed: it stops on the way up, as a run stopped early would.
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(
            f"`warmup_steps` must be an integer >= 0. Received: warmup_steps={warmup!r}"
        )
    for key in (*ADAM_BETAS, "ema_momentum"):
        if key not in config:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"`{key}` must be a float in [0, 1). Received: {key}={value!r}")


class RunPlan(NamedTuple):
    """Where `train` starts in a workdir and how far it goes (`plan_run`)."""

    config: dict  # the resolved config, `steps` applied
    step: int  # optimizer steps the workdir's checkpoint holds (0: a new run)
    steps_per_epoch: int
    initial_epoch: int
    epochs: int

    @property
    def finished(self):
        """True when the checkpoint already holds `config["steps"]` steps or more."""
        return self.initial_epoch >= self.epochs


def plan_run(config, workdir, steps=None):
    """Check `config` for training in `workdir`; return the `RunPlan`.

    A workdir with a checkpoint resumes its run, with its epochs of
    `step / epoch` steps, and must be asked for the same config as its
    `config.json` except for `steps`.

    Raises:
        ValueError: a bad training setting, or a config that differs from the
            workdir run's (naming each key with its saved and requested value).
    """
    config = dict(config)
    if steps is not None:
        config["steps"] = steps
    validate_config(config)
    _check_strategy_supported(config)
    state = ckpt.read_state(workdir) if os.path.isdir(workdir) else None
    if state is None:
        steps_per_epoch, initial_epoch, step = min(config["steps_per_epoch"], config["steps"]), 0, 0
    else:
        saved_path = os.path.join(workdir, ckpt.CONFIG_FILE)
        if os.path.exists(saved_path):
            with open(saved_path) as f:
                check_unchanged_config(json.load(f), config, workdir)
        step, initial_epoch = state["step"], state["epoch"]
        steps_per_epoch = step // initial_epoch
    epochs = math.ceil(config["steps"] / steps_per_epoch)
    return RunPlan(config, step, steps_per_epoch, initial_epoch, epochs)


def check_unchanged_config(saved, requested, workdir):
    """Raise if `requested` differs from a workdir run's `saved` config but in `steps`.

    The model, optimizer and data come from the checkpoint and the run's
    config, so any other change would be silently ignored or would break the
    resume (a new batch size moves the data position).
    """
    differences = []

    def compare(old, new, prefix):
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}{key}"
            if path == "steps":
                continue
            a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
            if isinstance(a, dict) and isinstance(b, dict):
                compare(a, b, f"{path}.")
            elif a != b:
                differences.append(f"{path}={b!r} (saved: {a!r})")

    compare(ckpt.as_json(saved), ckpt.as_json(requested), "")
    if differences:
        raise ValueError(
            f"The workdir holds a run trained with another config; resuming keeps its "
            f"config.json and only `steps` may change (train in a new workdir to change "
            f"the rest). Received: {', '.join(differences)} for workdir={workdir!r}"
        )


def train_dataset(config, model, skip_batches=0):
    """The recipe's infinite, deterministic training dataset, `skip_batches` in."""
    import kzoo.data

    height, width = model.image_shape[:2]
    dataset = kzoo.data.load(
        config["dataset"],
        split="train",
        batch_size=config["batch_size"],
        image_size=height if height == width else (height, width),
        shuffle=True,
        seed=config["seed"],
        deterministic=True,
        repeat=True,
        drop_remainder=True,
        outputs=tuple(config.get("outputs", ("image",))),
    )
    return dataset.skip(skip_batches) if skip_batches else dataset


def _build_optimizer_eagerly(model):
    """Create the optimizer's variables now rather than while `fit` traces its step.

    With no distribution strategy, Keras 3.15 defers `optimizer.build` to the first
    traced train step (`_maybe_symbolic_build` in keras/src/backend/tensorflow/
    trainer.py returns early). A variable created inside a `tf.function` trace gets
    a lifted initializer graph: about 50 ms each, 10-15 s for the Adam slots of a
    small U-Net. Built eagerly they cost milliseconds. A model not built yet, or
    whose `compile` built its optimizers (VQGAN), is left as it is.
    """
    if not model.built or model.optimizer is None or model.optimizer.built:
        return
    model.optimizer.build(model.trainable_variables)


def train(config, workdir, steps=None, verbose="auto", dataset_fn=None):
    """Train (or resume) the recipe `config` in `workdir`; return the trained model.

    Args:
        config: a resolved recipe config (`recipes.get_recipe`).
        workdir: directory for `config.json`, checkpoints and `log.csv`.
        steps: total optimizer steps; overrides `config["steps"]`.
        verbose: passed to `fit`.
        dataset_fn: `dataset_fn(config, model, skip_batches=N)` for recipes whose
            data is not images of `config["dataset"]` (a code prior's token
            grids, say); default `train_dataset`.

    Returns:
        The trained `keras.Model` to serve: with `ema`, the moving averages are
        its weights (as `fit` leaves them), while the workdir's checkpoint keeps
        the raw ones to resume from. A workdir already at `steps` trains nothing
        and returns its model (`plan_run(...).finished` tells beforehand).

    Raises:
        ValueError: a bad setting, or a workdir whose run has another config
            (`check_unchanged_config`).
    """
    plan = plan_run(config, workdir, steps)
    config = plan.config
    strategy = _strategy(config)
    warn_slow_settings(config)
    keras.mixed_precision.set_global_policy(config["precision"])
    keras.utils.set_random_seed(config["seed"])
    if plan.finished:
        with strategy.scope():
            return ckpt.load_trained_model(workdir)
    os.makedirs(workdir, exist_ok=True)

    with strategy.scope():
        model, _ = ckpt.load_checkpoint(workdir)
        if model is None:
            model = build_model(resolve_model_config(config))
            model.compile(optimizer=build_optimizer(config), jit_compile=config["jit_compile"])
        _build_optimizer_eagerly(model)
    if config.get("strategy") == "multi_worker":
        from kzoo.training.distribute import enable_multi_worker_fit

        enable_multi_worker_fit(model)
    if _is_chief(strategy):
        ckpt.write_json_atomic(os.path.join(workdir, ckpt.CONFIG_FILE), config)

    steps_per_epoch = plan.steps_per_epoch
    dataset = (dataset_fn or train_dataset)(config, model, skip_batches=plan.step)
    model.fit(
        dataset,
        epochs=plan.epochs,
        initial_epoch=plan.initial_epoch,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the dataset shuffles itself, deterministically
        callbacks=[
            keras.callbacks.TerminateOnNaN(),
            *(
                [
                    ckpt.CheckpointCallback(workdir, steps_per_epoch),
                    keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True),
                    keras.callbacks.TensorBoard(os.path.join(workdir, "logs")),
                    *_image_callbacks(config, model, workdir),
                ]
                # Only the chief writes: every worker holds the same weights, and
                # workers on one filesystem would race on the same files.
                if _is_chief(strategy)
                else []
            ),
        ],
        verbose=verbose,
    )
    return model


def _frozen_text_encoder(workdir):
    """The text tower of another workdir's trained model (a `clip_shapes` DualEncoder), frozen.

    Text-to-image on a frozen pretrained text encoder, as Stable Diffusion uses
    CLIP's (Rombach et al. 2022, https://arxiv.org/abs/2112.10752).
    """
    try:
        source = ckpt.load_trained_model(workdir)
    except ValueError as error:  # missing, empty or unreadable: name the config key
        raise ValueError(
            "`text_encoder_workdir` must be the workdir of a trained model with a text "
            "encoder (for text2image_shapes: `kzoo train clip_shapes --workdir "
            f"runs/clip_shapes` first). {error} Received: text_encoder_workdir={workdir!r}"
        ) from error
    text_encoder = getattr(source, "text_encoder", None)
    if not isinstance(text_encoder, keras.Model):
        raise ValueError(
            "`text_encoder_workdir` must hold a model with a `text_encoder` (a trained "
            f"DualEncoder, say). Received: text_encoder_workdir={workdir!r} holding a "
            f"{type(source).__name__}"
        )
    text_encoder.trainable = False
    return text_encoder


def resolve_model_config(config):
    """The recipe's `model` config with the models it takes from other workdirs.

    `autoencoder_workdir` (latent diffusion) adds that workdir's trained model as the
    frozen `autoencoder`; `text_encoder_workdir` (text-to-image) adds the frozen text
    tower of that workdir's model, or, when it is `""`, a new text encoder trained
    jointly (`joint_text_encoder`).
    """
    model_config = dict(config["model"])
    if config.get("autoencoder_workdir"):
        model_config["autoencoder"] = ckpt.load_trained_model(config["autoencoder_workdir"])
    if config.get("text_encoder_workdir"):
        model_config["text_encoder"] = _frozen_text_encoder(config["text_encoder_workdir"])
    elif "text_encoder_workdir" in config and "text_encoder" not in model_config:
        model_config["text_encoder"] = joint_text_encoder(model_config)
    return model_config


def joint_text_encoder(model_config):
    """A new `TextEncoder` to train with a text-to-image model (`text_encoder_workdir=""`).

    Sized as the `clip_shapes` text tower (2 layers, 4 heads; 1 head when 4 does
    not divide the width), as wide as the denoiser's `context_dim`, for the
    model's tokenizer (vocabulary size and sequence length).
    """
    from kzoo.data.tokenizer import Tokenizer
    from kzoo.models import TextEncoder

    tokenizer = model_config.get("tokenizer")
    width = (model_config.get("denoiser") or {}).get("context_dim")
    if not isinstance(tokenizer, dict) or not width:
        raise ValueError(
            "`text_encoder_workdir` may be empty (a text encoder trained jointly) only for a "
            "text-to-image model: a `tokenizer` dict and a denoiser with `context_dim`. "
            "Received: text_encoder_workdir=''"
        )
    tokenizer = Tokenizer(**tokenizer)
    return TextEncoder(
        tokenizer.vocabulary_size,
        tokenizer.sequence_length,
        hidden_dim=width,
        num_layers=2,
        num_heads=4 if width % 4 == 0 else 1,
    )


def _strategy(config):
    """The config's `tf.distribute` strategy, created before any other TF work."""
    import tensorflow as tf

    name = config.get("strategy", "default")
    if name == "default":
        return tf.distribute.get_strategy()
    from kzoo.training.distribute import get_strategy

    return get_strategy(name)


def _check_strategy_supported(config):
    """Raise for a strategy this machine cannot run with the config's other settings."""
    name = config.get("strategy", "default")
    if name == "default" or not config["jit_compile"]:
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        # MirroredStrategy + jit_compile fails on CPU: with 2 logical CPU devices
        # XLA reads a resource on CPU:1 from CPU:0 (measured on TF 2.21); and XLA
        # cannot compile MultiWorkerMirrored's cross-worker collectives.
        raise ValueError(
            f"jit_compile=true is not supported with strategy={name!r} on CPU. "
            "Received: jit_compile=True"
        )


def warn_slow_settings(config):
    """Warn about a config that trains, but needlessly slowly, on this machine.

    `jit_compile=True` with `precision="mixed_bfloat16"` without a GPU: XLA's CPU
    kernels skip the bfloat16 matrix units (AMX) that TensorFlow's oneDNN kernels
    use, 2.0-2.5x slower per step in benchmarks/README.md.
    """
    import tensorflow as tf

    if (
        config["jit_compile"]
        and config["precision"] == "mixed_bfloat16"
        and not tf.config.list_physical_devices("GPU")
    ):
        warnings.warn(
            "jit_compile=True with precision='mixed_bfloat16' on CPU is 2.0-2.5x slower "
            "per step than without XLA (XLA's CPU kernels skip the bfloat16 matrix units "
            "that oneDNN uses); set jit_compile=false. Received: jit_compile=True, "
            "precision='mixed_bfloat16'",
            UserWarning,
            stacklevel=3,
        )


def _is_chief(strategy):
    extended = strategy.extended
    return getattr(extended, "should_checkpoint", True)


def _image_callbacks(config, model, workdir):
    """TensorBoard image grids: reconstructions of fixed test images, or samples."""
    from kzoo.training.callbacks import ImageGridCallback

    log_dir = os.path.join(workdir, "logs", "images")
    if "reconstruct" in capabilities(model):
        import kzoo.data

        fixed, _ = kzoo.data.load_arrays(
            config["dataset"], split="test", num_examples=8, image_size=model.image_shape[0]
        )
        # An eager call of 8 images costs milliseconds; `predict` would trace a
        # predict function (seconds) for each new model.
        return [
            ImageGridCallback(
                log_dir, lambda m: [fixed, m(fixed, training=False)], name="reconstructions"
            )
        ]
    if "generate" in capabilities(model):
        num_classes = getattr(model, "num_classes", None)
        labels = None if not num_classes else [i % num_classes for i in range(8)]

        def samples(m):
            if labels is None:
                return m.generate(num_images=8, num_steps=20, seed=0)
            return m.generate(labels=labels, num_steps=20, seed=0)

        return [ImageGridCallback(log_dir, samples, every_n_epochs=5, name="samples")]
    return []
