"""What `ResidualVQ` and `GroupedVQ` share: their `VectorQuantizer` stages and the
options they pass to them (see `residual.py` and `grouped.py` for the papers)."""

import inspect

from kzoo.layers.quantizers.vector import VectorQuantizer

# VectorQuantizer arguments a composite sets on each stage itself.
_SET_BY_COMPOSITE = ("codebook_size", "embedding_dim", "seed")


class _StageQuantizer(VectorQuantizer):
    """A VectorQuantizer inside ResidualVQ/GroupedVQ: the parent reports the metrics."""

    _tracks_health = False


def stage_option_names():
    """Every named `VectorQuantizer` argument but those a composite sets itself.

    Read from the constructor's signature, so a new `VectorQuantizer` option can be
    passed to the stages without being listed here.
    """
    parameters = inspect.signature(VectorQuantizer.__init__).parameters.values()
    return tuple(
        parameter.name
        for parameter in parameters
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD
        and parameter.name not in ("self", *_SET_BY_COMPOSITE)
    )


def split_quantizer_options(quantizer_options, kwargs):
    """The stages' options and what remains of `kwargs` for the base layer.

    Args:
        quantizer_options: None or a dict of `VectorQuantizer` options.
        kwargs: the composite's other keyword arguments. A `VectorQuantizer` option
            among them joins the stages' options: a shorthand, and the form in which
            configs saved before `quantizer_options` existed hold them.

    Returns:
        `(options, kwargs)`: a new dict with only the options given (each stage
        takes its own defaults for the rest), and `kwargs` without them.
    """
    names = stage_option_names()
    if quantizer_options is None:
        quantizer_options = {}
    if not isinstance(quantizer_options, dict) or any(
        key not in names for key in quantizer_options
    ):
        raise ValueError(
            "`quantizer_options` must be a dict of VectorQuantizer options, keys among "
            f"{names}. Received: quantizer_options={quantizer_options!r}"
        )
    options = dict(quantizer_options)
    for name in names:
        if name in kwargs:
            value = kwargs.pop(name)
            if name in options and options[name] != value:
                raise ValueError(
                    f"`{name}` was given both as an argument and in `quantizer_options`, "
                    f"with different values. Received: {name}={value!r} and "
                    f"quantizer_options={quantizer_options!r}"
                )
            options[name] = value
    return options, kwargs


def make_stages(count, codebook_size, embedding_dim, seed, options):
    """`count` stage quantizers; stage `i` draws from `seed + 1 + i` (None: unseeded)."""
    return [
        _StageQuantizer(
            codebook_size,
            embedding_dim,
            seed=None if seed is None else seed + 1 + i,
            dtype="float32",
            name=f"quantizer_{i}",
            **options,
        )
        for i in range(count)
    ]
