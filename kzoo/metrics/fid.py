"""Fréchet Inception Distance (FID).

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium", https://arxiv.org/abs/1706.08500, Eq. 6: the Fréchet
(2-Wasserstein) distance between Gaussians fitted to real and generated features,

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

scipy (`sqrtm`) is not available, and `S_1 S_2` is not symmetric, so the trace
term uses the symmetric matrix `A = S_1^(1/2) S_2 S_1^(1/2)`, similar to `S_1 S_2`
(same eigenvalues, all >= 0), so `Tr (S_1 S_2)^(1/2) = sum_i sqrt(lambda_i(A))`,
with both square roots taken by `np.linalg.eigh` and round-off negatives clipped.
FID is biased upwards for small samples (it shrinks as N grows); compare values
only at equal sample sizes, or use KID.
"""

import numpy as np

from kzoo.metrics.features import check_features, extract_features


def _psd_sqrt(matrix):
    """Square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _check_stats(name, mu, sigma):
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"`mu{name}` must be a vector (F,) and `sigma{name}` a matrix (F, F). "
            f"Received: mu{name}.shape={mu.shape}, sigma{name}.shape={sigma.shape}"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"`mu{name}` and `sigma{name}` must be finite. Received: NaN or inf")
    return mu, (sigma + sigma.T) / 2.0


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: mean vectors (F,).
        sigma1, sigma2: covariance matrices (F, F), symmetric positive semi-definite.

    Returns:
        float, `||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`.

    Example:
    >>> frechet_distance_from_stats(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
    4.0
    """
    mu1, sigma1 = _check_stats("1", mu1, sigma1)
    mu2, sigma2 = _check_stats("2", mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"Both Gaussians must have the same dimension. "
            f"Received: mu1.shape={mu1.shape}, mu2.shape={mu2.shape}"
        )
    sqrt_sigma1 = _psd_sqrt(sigma1)
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    distance = np.sum(np.square(mu1 - mu2)) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    # Round-off can take identical Gaussians a hair below zero.
    return float(max(distance, 0.0))


def feature_statistics(features):
    """Mean (F,) and covariance (F, F) of a feature array (N, F), N >= 2."""
    features = check_features("features", features)
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(
        features.shape[1], features.shape[1]
    )


def frechet_distance(real_features, fake_features):
    """FID between two feature sets: the Fréchet distance of their fitted Gaussians.

    Args:
        real_features: (M, F) features of real images, M >= 2.
        fake_features: (N, F) features of generated images, N >= 2.

    Returns:
        float >= 0.

    Example:
    >>> real = np.random.default_rng(0).normal(size=(2000, 8))
    >>> frechet_distance(real, real + 1.0)  # 8.0: the means moved by 1 on 8 axes
    """
    real_features = check_features("real_features", real_features)
    fake_features = check_features("fake_features", fake_features)
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"`real_features` and `fake_features` must have the same feature size. "
            f"Received: real_features.shape={real_features.shape}, "
            f"fake_features.shape={fake_features.shape}"
        )
    mu1, sigma1 = feature_statistics(real_features)
    mu2, sigma2 = feature_statistics(fake_features)
    return frechet_distance_from_stats(mu1, sigma1, mu2, sigma2)


def compute_fid(real_images, fake_images, feature_fn=None, cache_dir=None):
    """FID between two image sets, in the space of `feature_fn`.

    Args:
        real_images: float (M, H, W, 3) images in [-1, 1].
        fake_images: float (N, H, W, 3) images in [-1, 1].
        feature_fn: callable images -> (N, F) features; None uses the penultimate
            layer of the cached `ShapesClassifier` for size H (F = 128, so use
            well over 128 images of each set).
        cache_dir: classifier cache directory (only when `feature_fn` is None).

    Returns:
        float >= 0.

    Example:
    >>> real, _ = kzoo.data.load_arrays("kzoo_shapes", split="test")
    >>> compute_fid(real, samples)
    """
    return frechet_distance(*extract_features(real_images, fake_images, feature_fn, cache_dir))
