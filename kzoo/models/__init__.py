"""kzoo assembled networks."""

from kzoo.models.dit import DIT_SIZES, DiT
from kzoo.models.unet import UNet
from kzoo.models.vqvae import VQVAE

__all__ = ["VQVAE", "UNet", "DiT", "DIT_SIZES"]

from kzoo.models.dual_encoder import DualEncoder  # noqa: E402
from kzoo.models.image_encoder import ImageEncoder  # noqa: E402
from kzoo.models.text_encoder import TextEncoder  # noqa: E402

__all__ += ["DualEncoder", "ImageEncoder", "TextEncoder"]

from kzoo.models.perceptual import (  # noqa: E402
    ShapesPerceptual,
    load_or_train_shapes_perceptual,
    perceptual_distance,
)
from kzoo.models.vqgan import VQGAN, Discriminator  # noqa: E402

__all__ += [
    "Discriminator",
    "ShapesPerceptual",
    "VQGAN",
    "load_or_train_shapes_perceptual",
    "perceptual_distance",
]

from kzoo.models.code_prior import CodePrior, Generator  # noqa: E402

__all__ += ["CodePrior", "Generator"]

from kzoo.models.captioner import Captioner  # noqa: E402

__all__ += ["Captioner"]
