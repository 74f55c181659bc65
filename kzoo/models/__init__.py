"""kzoo assembled networks."""

from kzoo.models.vqvae import VQVAE

__all__ = ["VQVAE"]
