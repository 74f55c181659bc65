"""Metrics: image quality and codebook health."""

from kzoo.metrics.codebook import codebook_stats
from kzoo.metrics.image import psnr

__all__ = ["codebook_stats", "psnr"]
