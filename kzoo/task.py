"""`Task`: the base of kzoo's models for one use, and the capabilities they declare.

keras-hub's tasks (`keras_hub.models.Task`) wrap backbones for one use; kzoo's do
the same (`VQVAE`/`VQGAN`, `CodePrior`/`Generator`, `DualEncoder`, `Captioner`,
`DiffusionModel`) and share what each of them repeated before:

- **Capabilities.** Each task declares what it can be asked for, as a set of names
  in `CAPABILITIES`; the CLI and the trainer ask `capabilities(model)` instead of
  guessing from attributes (`hasattr(model, "encode")`). A model that is not a
  `Task` (a user's `keras.Model`) declares nothing.
- **Optimizer variables built in `compile`.** A task's weights exist once it is
  built, so `compile` creates the optimizer's variables at once. Keras would
  create them inside the first traced train step, where each costs ~50 ms (a
  lifted initializer graph) instead of ~0.1 ms. A task with more than one
  optimizer (VQGAN) overrides `build_optimizers`.
- **Compile on load.** Keras skips compile-on-load for models that override
  `compile`; `compile_from_config` restores the saved compile arguments.

This module imports Keras and `kzoo.presets` only, so `models` and `diffusion`
both inherit from it.
"""

import keras

from kzoo.presets import PresetMixin

CAPABILITIES = {
    "reconstruct": "images -> codes -> images (`encode`, `decode`, `__call__`): VQ autoencoders",
    "sample_codes": "draws code grids for a VQ tokenizer to decode (`next_token_logits`)",
    "generate": "draws images (`generate(num_images=..., labels=...)`)",
    "generate_from_text": "draws images for captions (`generate_from_text(captions)`)",
    "embed": "embeds images and captions in one space (`encode_image`, `encode_text`)",
    "caption": "writes captions for images (`caption(images)`)",
}


def capabilities(model):
    """The capabilities `model` declares: a frozenset of `CAPABILITIES` keys.

    Empty for a model that is not a kzoo `Task`.
    """
    return frozenset(model.capabilities) if isinstance(model, Task) else frozenset()


class Task(PresetMixin, keras.Model):
    """A kzoo model for one use: declared capabilities, eager optimizer variables.

    Subclasses set `capabilities` (a class attribute, or a property where it depends
    on the configuration, as text-to-image `DiffusionModel`s add
    `"generate_from_text"`).
    """

    capabilities = frozenset()

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, then the optimizer's variables (`build_optimizers`)."""
        super().compile(*args, **kwargs)
        self.build_optimizers()

    def build_optimizers(self):
        """Creates the optimizer's variables for the trainable weights, once built."""
        if self.built and self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        # Keras skips compile-on-load for models that override `compile`.
        self.compile(**keras.saving.deserialize_keras_object(config))
