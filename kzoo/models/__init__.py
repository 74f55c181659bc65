"""kzoo assembled networks."""

from kzoo.models.dit import DIT_SIZES, DiT
from kzoo.models.unet import UNet
from kzoo.models.vqvae import VQVAE

__all__ = ["VQVAE", "UNet", "DiT", "DIT_SIZES"]
