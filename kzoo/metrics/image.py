"""Image quality metrics on images in [-1, 1]: PSNR and SSIM.

SSIM: Wang et al. 2004, "Image Quality Assessment: From Error Visibility to
Structural Similarity", https://ece.uwaterloo.ca/~z70wang/publications/ssim.pdf,
computed by `tf.image.ssim` (11x11 Gaussian window, sigma 1.5, k1 = 0.01,
k2 = 0.03).
"""

import numpy as np
import tensorflow as tf


def _check_pair(images, reconstructions):
    images = np.asarray(images, dtype=np.float64)
    reconstructions = np.clip(np.asarray(reconstructions, dtype=np.float64), -1.0, 1.0)
    if images.shape != reconstructions.shape:
        raise ValueError(
            f"`images` and `reconstructions` must have the same shape. "
            f"Received: images.shape={images.shape}, reconstructions.shape={reconstructions.shape}"
        )
    return images, reconstructions


def psnr(images, reconstructions, data_range=2.0):
    """Peak signal-to-noise ratio in dB, averaged over the batch.

    Args:
        images, reconstructions: arrays of equal shape `(B, H, W, C)`;
            reconstructions are clipped to [-1, 1].
        data_range: max minus min of the pixel range (2.0 for [-1, 1]).

    Returns:
        float, mean over the batch of `10 * log10(data_range**2 / mse)`, with the
        mse floored at 1e-12 so identical images give a finite value.

    Example:
    >>> images = np.zeros((2, 8, 8, 3))
    >>> psnr(images, images + 0.02)  # 10 * log10(4 / 0.0004) = 40.0
    """
    images, reconstructions = _check_pair(images, reconstructions)
    mse = np.mean(np.square(images - reconstructions), axis=tuple(range(1, images.ndim)))
    return float(np.mean(10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-12))))


def ssim(images, reconstructions, filter_size=11):
    """Structural similarity (SSIM), averaged over the batch, by `tf.image.ssim`.

    SSIM's luminance term is not shift-invariant and is defined on non-negative
    intensities, so the [-1, 1] images are shifted to [0, 2] and compared with
    `max_val=2`: exactly the SSIM of the same images as uint8 with `max_val=255`
    (straight [-1, 1] input gives other, lower values: 0.211 vs 0.228 on noisy
    kzoo_shapes images).

    Args:
        images, reconstructions: float arrays of equal shape `(B, H, W, C)` in
            [-1, 1], with H and W >= `filter_size`; reconstructions are clipped to
            [-1, 1].
        filter_size: side of the Gaussian window, an int >= 1 (11 in the paper;
            smaller for images under 11 pixels).

    Returns:
        float in [-1, 1], 1 for identical images.

    Example:
    >>> images, _ = kzoo.data.load_arrays("kzoo_shapes", num_examples=8)
    >>> ssim(images, images)  # 1.0
    """
    images, reconstructions = _check_pair(images, reconstructions)
    if isinstance(filter_size, bool) or not isinstance(filter_size, int) or filter_size < 1:
        raise ValueError(f"`filter_size` must be an integer >= 1. Received: {filter_size=}")
    if images.ndim != 4 or min(images.shape[1:3]) < filter_size:
        raise ValueError(
            f"`images` must be a batch (B, H, W, C) with H and W >= filter_size={filter_size}. "
            f"Received: images.shape={images.shape}"
        )
    values = tf.image.ssim(
        tf.constant(images + 1.0, tf.float32),
        tf.constant(reconstructions + 1.0, tf.float32),
        max_val=2.0,
        filter_size=filter_size,
    )
    return float(tf.reduce_mean(values))
