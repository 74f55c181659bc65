"""Metrics: image quality, codebook health, KID / FID in a learned feature space, caption words."""

from kzoo.metrics.autoencoder import autoencoder_metrics
from kzoo.metrics.captions import caption_words, word_accuracy
from kzoo.metrics.codebook import codebook_stats
from kzoo.metrics.features import (
    ShapesClassifier,
    extract_features,
    load_or_train_shapes_classifier,
    train_shapes_classifier,
)
from kzoo.metrics.fid import compute_fid, frechet_distance, frechet_distance_from_stats
from kzoo.metrics.image import psnr, ssim
from kzoo.metrics.kid import compute_kid, kernel_inception_distance

__all__ = [
    "ShapesClassifier",
    "autoencoder_metrics",
    "caption_words",
    "codebook_stats",
    "compute_fid",
    "compute_kid",
    "extract_features",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_inception_distance",
    "load_or_train_shapes_classifier",
    "psnr",
    "ssim",
    "train_shapes_classifier",
    "word_accuracy",
]
