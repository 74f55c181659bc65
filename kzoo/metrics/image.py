"""Image quality metrics on images in [-1, 1]."""

import numpy as np


def psnr(images, reconstructions, data_range=2.0):
    """Peak signal-to-noise ratio in dB, averaged over the batch.

    Args:
        images, reconstructions: arrays of equal shape `(B, H, W, C)`.
        data_range: max minus min of the pixel range (2.0 for [-1, 1]).

    Returns:
        float, mean over the batch of `10 * log10(data_range**2 / mse)`.
    """
    images = np.asarray(images, dtype=np.float64)
    reconstructions = np.clip(np.asarray(reconstructions, dtype=np.float64), -1.0, 1.0)
    if images.shape != reconstructions.shape:
        raise ValueError(
            f"`images` and `reconstructions` must have the same shape. "
            f"Received: images.shape={images.shape}, reconstructions.shape={reconstructions.shape}"
        )
    mse = np.mean(np.square(images - reconstructions), axis=tuple(range(1, images.ndim)))
    return float(np.mean(10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-12))))
