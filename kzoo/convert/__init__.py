"""Convert PyTorch checkpoints to kzoo models: `from_diffusers(folder)` and `convert`.

This package sits on top of kzoo, as `kzoo.export` does: it imports models and
`diffusion`, and nothing in kzoo imports it. Weights are read with safetensors'
NumPy API; torch is never imported.

Example:
```python
import kzoo.convert

unet = kzoo.convert.from_diffusers("my-ddpm/unet")  # a kzoo.models.UNet
eps = unet([x_nhwc, timesteps])
kzoo.convert.convert("my-ddpm", "ddpm.keras")  # a DiffusionModel: fit, generate, export
```
"""

import os

from kzoo.convert.diffusers import from_diffusers, model_folder
from kzoo.convert.dit import dit_kwargs
from kzoo.convert.scheduler import find_scheduler_config, schedule_from_diffusers
from kzoo.convert.unet import unet_kwargs
from kzoo.convert.vqmodel import vqvae_kwargs
from kzoo.models.vqvae import VQVAE

__all__ = [
    "convert",
    "dit_kwargs",
    "find_scheduler_config",
    "from_diffusers",
    "schedule_from_diffusers",
    "unet_kwargs",
    "vqvae_kwargs",
]


def convert(folder, out, image_size=None, denoiser_only=False):
    """Convert a diffusers checkpoint folder and save it as a `.keras` file.

    For a denoiser (`UNet2DModel`, `DiTTransformer2DModel`) the file holds a
    `kzoo.diffusion.DiffusionModel` around it (so `fit`, `generate` and
    `kzoo export` work on it), with the noise schedule
    and prediction type of the folder's `scheduler_config.json` when there is one
    (`find_scheduler_config`), else DDPM's linear schedule (1e-4 to 0.02 over
    1000 steps, diffusers' `DDPMScheduler` defaults) and noise prediction. A
    `VQModel` is saved as the converted `kzoo.models.VQVAE` itself. The file is
    written under a temporary name and renamed.

    Args:
        folder: a diffusers model folder or pipeline folder (see `from_diffusers`).
        out: the `.keras` path to write; an existing file is replaced.
        image_size: see `from_diffusers`.
        denoiser_only: save the bare converted denoiser instead.

    Returns:
        `(model, scheduler_config_path_or_None)`: the saved model, and the scheduler
        config that was used.
    """
    import kzoo.diffusion

    if not isinstance(out, str) or not out.endswith(".keras"):
        raise ValueError(f"`out` must be a path ending in .keras. Received: out={out!r}")
    denoiser = from_diffusers(folder, image_size=image_size)
    scheduler_path = None
    model = denoiser
    if getattr(denoiser, "learn_sigma", False) and not denoiser_only:
        raise ValueError(
            "This DiT also predicts the variance (out_channels = 2 * in_channels), and "
            "kzoo's DiffusionModel takes a denoiser whose output is shaped like its "
            "input: convert it with denoiser_only=True (`--denoiser-only`). "
            f"Received: folder={folder!r}"
        )
    if not denoiser_only and not isinstance(denoiser, VQVAE):
        scheduler_path = find_scheduler_config(model_folder(folder))
        kwargs = schedule_from_diffusers(scheduler_path) if scheduler_path else {}
        model = kzoo.diffusion.DiffusionModel(denoiser, **kwargs)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(out)}")
    try:
        model.save(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return model, scheduler_path
