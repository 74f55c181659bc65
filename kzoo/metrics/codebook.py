"""Codebook health: how many codes a quantizer uses and how evenly."""

import numpy as np


def codebook_stats(indices, codebook_size):
    """Usage fraction, perplexity and dead-code count of integer code `indices`.

    Returns:
        dict with `usage` (fraction of codes used at least once), `perplexity`
        (exp of the entropy of the code distribution) and `dead_codes`.
    """
    counts = np.bincount(np.asarray(indices).reshape(-1), minlength=codebook_size)
    probs = counts / max(counts.sum(), 1)
    nonzero = probs[probs > 0]
    return {
        "usage": float(np.mean(counts > 0)),
        "perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        "dead_codes": int(np.sum(counts == 0)),
    }
