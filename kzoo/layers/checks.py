"""Argument checks shared by every kzoo room (layers, models, diffusion, export).

Each raises `ValueError` naming the argument, the value received and what was
expected, as Keras core does: "`num_heads` must be a positive integer. Received:
num_heads=0". Python and NumPy scalars count as numbers; `bool` never does.
"""

import numpy as np


def is_int(value):
    """True for a Python or NumPy integer that is not a `bool`."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_number(value):
    """True for a Python or NumPy integer or float that is not a `bool`."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def is_finite_positive(value):
    """True for a number in (0, inf)."""
    return is_number(value) and 0 < value < float("inf")


def check_positive_int(name, value):
    """Returns `value` if it is a Python int >= 1, else raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value
