"""Image grids as PNG files, for reconstructions and samples."""

import os

import numpy as np


def to_uint8(images):
    """float images in [-1, 1] -> uint8 in [0, 255]."""
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(rows, scale=1, pad=2):
    """Tile a list of image batches (one batch per row) into one uint8 image."""
    rows = [to_uint8(row) for row in rows]
    count = max(len(row) for row in rows)
    height, width, channels = rows[0].shape[1:]
    cell_h, cell_w = height * scale + pad, width * scale + pad
    grid = np.full((len(rows) * cell_h + pad, count * cell_w + pad, channels), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            big = image.repeat(scale, axis=0).repeat(scale, axis=1)
            y, x = pad + r * cell_h, pad + c * cell_w
            grid[y : y + height * scale, x : x + width * scale] = big
    return grid


def save_png(path, image):
    """Write a uint8 image to `path` atomically (temporary name, then rename)."""
    from PIL import Image

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    if image.shape[-1] == 1:
        image = image[..., 0]
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
