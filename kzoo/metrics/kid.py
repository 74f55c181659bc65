"""Kernel Inception Distance (KID).

Binkowski et al. 2018, "Demystifying MMD GANs", https://arxiv.org/abs/1801.01401,
Section 4 / Appendix D: the squared maximum mean discrepancy between real and
generated features under the cubic polynomial kernel
`k(x, y) = (x . y / d + 1) ** 3` (d = feature size), estimated without bias
(Gretton et al. 2012, Lemma 6) and averaged over random subsets. Unlike FID it has
an unbiased estimator, so its value does not depend on the sample size and small
samples (hundreds of images) are usable; it can be slightly negative.
"""

import numpy as np

from kzoo.metrics.features import check_features, extract_features

_DEFAULT_SUBSET_SIZE = 1000
# Above this many kernel entries (~100 MB of float64), KID loops over subsets.
_MAX_KERNEL_ELEMENTS = 12_000_000


def _polynomial_kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x, y):
    """Unbiased MMD^2 of two feature sets under the cubic polynomial kernel."""
    m, n = len(x), len(y)
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    # Dropping the diagonals (k(x_i, x_i)) is what removes the bias.
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return sum_xx + sum_yy - 2.0 * k_xy.mean()


def _mmd2_of_subsets(real, fake, real_subsets, fake_subsets):
    """`_mmd2_unbiased` of every subset pair, from the whole kernel matrices.

    With 0/1 indicator matrices `S` (N, num_subsets), the kernel sum over a subset
    is `s^T K s`, so all subsets cost three matrix products instead of
    3 * num_subsets kernel evaluations.
    """
    size = real_subsets.shape[1]

    def indicators(subsets, count):
        matrix = np.zeros((count, len(subsets)))
        matrix[subsets.T, np.arange(len(subsets))] = 1.0
        return matrix

    s_real = indicators(real_subsets, len(real))  # (M, num_subsets)
    s_fake = indicators(fake_subsets, len(fake))  # (N, num_subsets)

    def within(features, selection):
        kernel = _polynomial_kernel(features, features)
        total = np.sum(selection * (kernel @ selection), axis=0)
        return (total - np.diag(kernel) @ selection) / (size * (size - 1))

    k_xy = _polynomial_kernel(real, fake)
    across = np.sum(s_real * (k_xy @ s_fake), axis=0) / (size * size)
    return within(real, s_real) + within(fake, s_fake) - 2.0 * across


def kernel_inception_distance(
    real_features, fake_features, num_subsets=100, subset_size=None, seed=0
):
    """KID between two feature sets: mean and std of unbiased MMD^2 over subsets.

    Args:
        real_features: (M, F) features of real images.
        fake_features: (N, F) features of generated images.
        num_subsets: number of random subsets, an int >= 1.
        subset_size: examples drawn (without replacement) from each set per subset,
            an int >= 2 and <= min(M, N); None uses min(1000, M, N).
        seed: seed of the subset draws.

    Returns:
        `(kid_mean, kid_std)`: floats, the mean and standard deviation of the
        subsets' MMD^2 estimates. 0 in expectation for equal distributions.

    Example:
    >>> real = np.random.default_rng(0).normal(size=(500, 16))
    >>> fake = np.random.default_rng(1).normal(0.5, size=(500, 16))
    >>> kernel_inception_distance(real, fake, num_subsets=10)  # about (0.55, 0.04)
    """
    real_features = check_features("real_features", real_features)
    fake_features = check_features("fake_features", fake_features)
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"`real_features` and `fake_features` must have the same feature size. "
            f"Received: real_features.shape={real_features.shape}, "
            f"fake_features.shape={fake_features.shape}"
        )
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 1:
        raise ValueError(f"`num_subsets` must be an integer >= 1. Received: {num_subsets=}")
    largest = min(len(real_features), len(fake_features))
    if subset_size is None:
        subset_size = min(_DEFAULT_SUBSET_SIZE, largest)
    if (
        isinstance(subset_size, bool)
        or not isinstance(subset_size, int)
        or not 2 <= subset_size <= largest
    ):
        raise ValueError(
            f"`subset_size` must be an integer in [2, {largest}] (the smaller feature "
            f"set's size). Received: subset_size={subset_size!r}"
        )
    rng = np.random.default_rng(seed)
    subsets = [
        (
            rng.choice(len(real_features), subset_size, replace=False),
            rng.choice(len(fake_features), subset_size, replace=False),
        )
        for _ in range(num_subsets)
    ]
    m, n = len(real_features), len(fake_features)
    if m * m + n * n + m * n <= _MAX_KERNEL_ELEMENTS:
        real_subsets = np.stack([real for real, _ in subsets])
        fake_subsets = np.stack([fake for _, fake in subsets])
        estimates = _mmd2_of_subsets(real_features, fake_features, real_subsets, fake_subsets)
    else:  # whole kernel matrices would not fit in memory
        estimates = np.array(
            [_mmd2_unbiased(real_features[r], fake_features[f]) for r, f in subsets]
        )
    return float(estimates.mean()), float(estimates.std())


def compute_kid(
    real_images,
    fake_images,
    feature_fn=None,
    num_subsets=100,
    subset_size=None,
    seed=0,
    cache_dir=None,
):
    """KID between two image sets, in the space of `feature_fn`.

    Args:
        real_images: float (M, H, W, 3) images in [-1, 1].
        fake_images: float (N, H, W, 3) images in [-1, 1].
        feature_fn: callable images -> (N, F) features (e.g. an InceptionV3 pool
            layer with your own weights, resizing inside); None uses the
            penultimate layer of the cached `ShapesClassifier` for size H.
        num_subsets, subset_size, seed: as for `kernel_inception_distance`.
        cache_dir: classifier cache directory, as for
            `load_or_train_shapes_classifier` (only when `feature_fn` is None).

    Returns:
        `(kid_mean, kid_std)` floats.

    Example:
    >>> real, _ = kzoo.data.load_arrays("kzoo_shapes", split="test")
    >>> kid_mean, kid_std = compute_kid(real, samples)
    """
    real_features, fake_features = extract_features(real_images, fake_images, feature_fn, cache_dir)
    return kernel_inception_distance(
        real_features, fake_features, num_subsets=num_subsets, subset_size=subset_size, seed=seed
    )
