"""`TensorSeed`: a seed tensor where `keras.random` expects a seed generator."""

import keras
from keras import ops


class TensorSeed(keras.random.SeedGenerator):
    """A "seed generator" that always returns one given `(2,)` int32 seed tensor.

    `keras.random` takes a Python int or a `SeedGenerator`, not a seed tensor. This
    lets a seed computed in the graph (a served request's seed, a sampling loop's
    step) drive a stateless draw: equal seeds give equal draws, no state variable
    is created, and an exported endpoint can take the seed as an input.
    """

    def __init__(self, seed):  # no super().__init__: it would create a state variable
        self.name = "tensor_seed"
        self._initial_seed = None
        self._seed = ops.cast(seed, "int32")

    def next(self, ordered=True):
        return self._seed
