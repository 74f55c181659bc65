"""Diffusion math in `keras.ops`: noise schedules, samplers and classifier-free guidance.

Nothing here imports a model: samplers take the denoiser as an argument.
"""

from kzoo.diffusion.guidance import GuidedDenoiser, drop_labels, guided_denoiser
from kzoo.diffusion.samplers import (
    SAMPLERS,
    TIMESTEP_SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EulerSampler,
    HeunSampler,
    Sampler,
    make_sampler,
    sample,
)
from kzoo.diffusion.schedules import (
    PREDICTION_TYPES,
    SCHEDULE_NAMES,
    NoiseSchedule,
    add_noise,
    make_schedule,
    min_snr_loss_weight,
    predict_eps,
    predict_v,
    predict_x0,
    sigma_to_timestep,
    snr,
    timestep_to_sigma,
    training_target,
    velocity_target,
)

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULE_NAMES",
    "TIMESTEP_SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverMultistepSampler",
    "EulerSampler",
    "GuidedDenoiser",
    "HeunSampler",
    "NoiseSchedule",
    "Sampler",
    "add_noise",
    "drop_labels",
    "guided_denoiser",
    "make_sampler",
    "make_schedule",
    "min_snr_loss_weight",
    "predict_eps",
    "predict_v",
    "predict_x0",
    "sample",
    "sigma_to_timestep",
    "snr",
    "timestep_to_sigma",
    "training_target",
    "velocity_target",
]

# DiffusionModel: training, generation and export around any denoiser.
from kzoo.diffusion.diffusion_model import DiffusionModel, resolve_schedule  # noqa: E402

__all__ += ["DiffusionModel", "resolve_schedule"]
