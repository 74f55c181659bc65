"""diffusers checkpoints to kzoo models: read `config.json` + safetensors, build, load.

The weights are read with the `safetensors` package's NumPy API, so converting
needs no torch. Each supported class has its converter, which maps every config
key to the kzoo model's options (layout differences included) and every tensor
to a kzoo weight; a config key or value it cannot express raises a ValueError
naming it, rather than building a model that computes something else:
- `UNet2DModel` -> `kzoo.models.UNet` (`kzoo/convert/unet.py`);
- `DiTTransformer2DModel` -> `kzoo.models.DiT` (`kzoo/convert/dit.py`);
- `VQModel` -> `kzoo.models.VQVAE` (`kzoo/convert/vqmodel.py`).
"""

import os

from kzoo.convert._common import CONFIG_FILE, read_config, read_weights
from kzoo.convert.dit import dit_from_diffusers
from kzoo.convert.unet import unet_from_diffusers
from kzoo.convert.vqmodel import vqvae_from_diffusers

# Subfolders of a diffusers pipeline folder that hold the denoiser, in search order.
MODEL_SUBFOLDERS = ("unet", "transformer")


def from_diffusers(folder, image_size=None):
    """The kzoo model of a diffusers checkpoint folder, with its weights.

    Args:
        folder: a folder with `config.json` and `diffusion_pytorch_model.safetensors`
            (what `save_pretrained` writes), or a pipeline folder with a `unet/`
            subfolder holding them.
        image_size: `(height, width)` or an int; default the config's `sample_size`.

    Returns:
        For `UNet2DModel`: a `kzoo.models.UNet` called as `model([x, t])`, or
        `model([x, t, labels])` with `num_class_embeds`, on NHWC images. Its
        `num_classes` is `num_class_embeds`; the extra label id `num_classes` (kzoo's
        null class for classifier-free guidance) starts as a zero embedding, which
        is the unconditional network. For `DiTTransformer2DModel`: a
        `kzoo.models.DiT` called as `model([x, t, labels])` (label id
        `num_embeds_ada_norm` is diffusers' null class too). For `VQModel`: a
        `kzoo.models.VQVAE` (`encode`, `decode`, `model(images)`).

    Raises:
        FileNotFoundError: the folder or its files are missing.
        ValueError: the model class, a config key or value, or the weights are
            not what the converter supports.

    Example:
    ```python
    unet = kzoo.convert.from_diffusers("ddpm-cifar10-32/unet")
    eps = unet([x_nhwc, timesteps])  # what diffusers' unet(x_nchw, t).sample gives, in NHWC
    ```
    """
    folder = model_folder(folder)
    config = read_config(folder)
    class_name = config.get("_class_name")
    builder = _BUILDERS.get(class_name)
    if builder is None:
        raise ValueError(
            f"kzoo.convert supports the diffusers classes {sorted(_BUILDERS)}. "
            f"Received: _class_name={class_name!r} in {os.path.join(folder, CONFIG_FILE)}"
        )
    weights = read_weights(folder)
    return builder(config, weights, image_size)


def model_folder(folder):
    """`folder` itself when it holds `config.json`, else its `unet/` (pipeline) subfolder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The checkpoint folder does not exist. Received: {folder!r}")
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return folder
    for sub in MODEL_SUBFOLDERS:
        if os.path.isfile(os.path.join(folder, sub, CONFIG_FILE)):
            return os.path.join(folder, sub)
    raise FileNotFoundError(
        f"The folder has no {CONFIG_FILE} (nor {', '.join(MODEL_SUBFOLDERS)}/{CONFIG_FILE}): "
        f"not a diffusers checkpoint. Received: folder={folder!r}"
    )


_BUILDERS = {
    "UNet2DModel": unet_from_diffusers,
    "DiTTransformer2DModel": dit_from_diffusers,
    "VQModel": vqvae_from_diffusers,
}
