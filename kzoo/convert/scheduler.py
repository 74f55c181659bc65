"""diffusers scheduler configs to `kzoo.diffusion.DiffusionModel` arguments."""

import json
import os

from kzoo.convert._common import SCHEDULER_CONFIG_FILE

_PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = ("linear", "scaled_linear")


def find_scheduler_config(folder):
    """The `scheduler_config.json` of a checkpoint folder or its pipeline, or None.

    Looked for in `folder`, `folder/scheduler/` and, when `folder` is a pipeline's
    model subfolder (`unet/`), in its sibling `scheduler/`.
    """
    candidates = [
        os.path.join(folder, SCHEDULER_CONFIG_FILE),
        os.path.join(folder, "scheduler", SCHEDULER_CONFIG_FILE),
        os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler", SCHEDULER_CONFIG_FILE),
    ]
    return next((path for path in candidates if os.path.isfile(path)), None)


def schedule_from_diffusers(path):
    """`DiffusionModel` arguments (`schedule`, `prediction_type`) of a diffusers scheduler config.

    Only the training noise schedule and the prediction type carry over; sampling
    settings (`clip_sample`, `timestep_spacing`, `variance_type`, ...) belong to
    the sampler, which kzoo picks at `generate` time.
    """
    with open(path) as f:
        config = json.load(f)
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in _BETA_SCHEDULES:
        raise ValueError(
            f"The scheduler config key 'beta_schedule' must be one of {list(_BETA_SCHEDULES)} "
            f"for kzoo.convert. Received: beta_schedule={beta_schedule!r} in {path}"
        )
    if config.get("trained_betas") is not None:
        raise ValueError(
            "The scheduler config key 'trained_betas' is not supported by kzoo.convert. "
            f"Received: trained_betas=[...] in {path}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION_TYPES:
        raise ValueError(
            f"The scheduler config key 'prediction_type' must be one of "
            f"{list(_PREDICTION_TYPES)} for kzoo.convert. Received: prediction_type="
            f"{prediction!r} in {path}"
        )
    return {
        "schedule": {
            "name": beta_schedule,
            "num_train_timesteps": config.get("num_train_timesteps", 1000),
            "beta_start": config.get("beta_start", 1e-4),
            "beta_end": config.get("beta_end", 0.02),
            "rescale_zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False)),
        },
        "prediction_type": _PREDICTION_TYPES[prediction],
    }
