"""Test metrics of a VQ autoencoder: PSNR, codebook health, and what its reconstructions keep."""

import numpy as np

from kzoo.metrics.codebook import codebook_stats
from kzoo.metrics.image import psnr


def autoencoder_metrics(model, images, labels=None, classifier=None, batch_size=64):
    """PSNR and codebook statistics of `model` on `images`, and optionally attribute accuracy.

    Args:
        model: a kzoo VQ autoencoder (`VQVAE`, `VQGAN`): `model(images)` reconstructs,
            `model.encode(images)` gives code indices, `model.codebook_size`.
        images: float (N, H, W, C) in [-1, 1].
        labels: with `classifier`, a dict attribute name -> int array (N,) (the
            labels of `kzoo.data.load_arrays`).
        classifier: None, or an object with `attribute_accuracy(images, labels)`
            (`kzoo.metrics.ShapesClassifier`); it scores the reconstructions, so
            `reconstruction_<attribute>_accuracy` says which attributes the codes keep.
        batch_size: reconstruction batch.

    Returns:
        A dict: `test_psnr_db`, `codebook_usage`, `codebook_perplexity`,
        `codebook_dead_codes`, `reconstruction_<attribute>_accuracy` (with a
        classifier) and `num_examples`.
    """
    if (classifier is None) != (labels is None):
        raise ValueError(
            "`labels` and `classifier` go together. "
            f"Received: labels={'None' if labels is None else 'a dict'}, "
            f"classifier={classifier!r}"
        )
    reconstructions = np.concatenate(
        [
            np.asarray(model(images[start : start + batch_size], training=False))
            for start in range(0, len(images), batch_size)
        ]
    )
    indices = model.encode(images)
    results = {"test_psnr_db": round(psnr(images, reconstructions), 2)}
    for key, value in codebook_stats(indices, model.codebook_size).items():
        results[f"codebook_{key}"] = round(value, 4) if isinstance(value, float) else value
    if classifier is not None:
        accuracy = classifier.attribute_accuracy(np.clip(reconstructions, -1.0, 1.0), labels)
        for name, value in accuracy.items():
            results[f"reconstruction_{name}_accuracy"] = round(float(value), 4)
    results["num_examples"] = int(len(images))
    return results
