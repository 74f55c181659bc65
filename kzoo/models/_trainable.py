"""Make a Functional model's `trainable=False` constructor argument freeze its layers.

Keras 3.15's `Functional.__init__` applies `trainable` before it tracks its layers
(keras/src/models/functional.py), so `TextEncoder(..., trainable=False)` (and
every model deserialized from a config that says `"trainable": false`) reports
`trainable=False` while its variables stay trainable: a parent model's
`trainable_variables` still lists them and `fit` updates them. The kzoo models
apply it in their constructors; `DualEncoder` and `Captioner` to any encoder they
are given (`DiffusionModel`, which does not import models, has its own copy).
"""


def apply_trainable_flag(model):
    """Re-apply `model.trainable` now that its layers are tracked; return `model`."""
    if not model.trainable:
        # True first: the False -> False assignment may be short-circuited by TF's
        # attribute tracking and never reach the sublayers.
        model.trainable = True
        model.trainable = False
    return model
