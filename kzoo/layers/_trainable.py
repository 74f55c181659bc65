"""Make a model's `trainable=False` reach its layers, whoever built the model.

Keras 3.15's `Functional.__init__` applies `trainable` before it tracks its layers
(keras/src/models/functional.py), so `TextEncoder(..., trainable=False)` (and
every model deserialized from a config that says `"trainable": false`) reports
`trainable=False` while its variables stay trainable: a parent model's
`trainable_variables` still lists them and `fit` updates them. The kzoo models
call this in their constructors; `DiffusionModel`, `DualEncoder` and `Captioner`
on every sub-model they are given (a user's Functional model has the same flaw).
It lives in `layers` so that `models` and `diffusion` can both import it.
"""

import keras


def apply_trainable_flag(model):
    """Re-apply `model.trainable` now that its layers are tracked; return `model`."""
    if isinstance(model, keras.Layer) and not model.trainable:
        # True first: the False -> False assignment may be short-circuited by TF's
        # attribute tracking and never reach the sublayers.
        model.trainable = True
        model.trainable = False
    return model
