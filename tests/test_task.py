"""kzoo.task: declared capabilities, optimizer variables built in `compile`, compile on load."""

import keras
import numpy as np
import pytest

from kzoo.diffusion import DiffusionModel
from kzoo.models import (
    VQGAN,
    VQVAE,
    Captioner,
    CodePrior,
    DualEncoder,
    Generator,
    ShapesPerceptual,
)
from kzoo.task import CAPABILITIES, Task, capabilities
from kzoo.testing import tiny_unet

VQ = dict(
    image_shape=(16, 16, 3),
    codebook_size=16,
    embedding_dim=8,
    channels=(8, 16),
    num_res_blocks=1,
    norm_groups=4,
)


def _unet(**overrides):
    return tiny_unet(image_size=16, **overrides)


@pytest.mark.parametrize(
    "cls, expected",
    [
        (VQVAE, {"reconstruct"}),
        (VQGAN, {"reconstruct"}),
        (CodePrior, {"sample_codes"}),
        (Generator, {"generate"}),
        (DualEncoder, {"embed"}),
        (Captioner, {"caption"}),
    ],
)
def test_each_task_declares_its_capabilities(cls, expected):
    assert issubclass(cls, Task)
    assert cls.capabilities == frozenset(expected)
    assert set(cls.capabilities) <= set(CAPABILITIES)


def test_a_diffusion_model_generates_and_a_text_conditional_one_also_from_text():
    from kzoo.data.tokenizer import Tokenizer
    from kzoo.models import TextEncoder

    assert capabilities(DiffusionModel(_unet(num_classes=3))) == {"generate"}
    text_model = DiffusionModel(
        _unet(context_dim=16),
        text_encoder=TextEncoder(
            Tokenizer("kzoo_shapes").vocabulary_size, 8, hidden_dim=16, num_layers=1, num_heads=2
        ),
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": 8},
    )
    assert capabilities(text_model) == {"generate", "generate_from_text"}


def test_a_model_that_is_not_a_task_declares_nothing():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert capabilities(plain) == frozenset()


def test_compile_builds_the_optimizer_at_once_and_a_keras_file_reloads_it(tmp_path):
    model = VQVAE(**VQ)
    model.compile(keras.optimizers.Adam(1e-3))
    # Slots for every trainable weight exist before any step traces.
    assert model.optimizer.built
    assert int(model.optimizer.iterations) == 0
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)
    path = str(tmp_path / "vqvae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # compile_from_config: compiled and built
    assert loaded.optimizer.built
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)


def test_vqgan_builds_each_optimizer_on_its_own_variables():
    model = VQGAN(
        **VQ,
        disc_channels=(8, 16),
        perceptual_model=ShapesPerceptual(image_size=16, filters=(8, 16)),
    )
    model.compile(keras.optimizers.Adam(1e-3))
    generator = {id(v) for v in model.generator_variables}
    discriminator = {id(v) for v in model.discriminator.trainable_variables}
    assert generator and discriminator and not generator & discriminator
    # Adam: two slots per variable, plus iterations and learning rate.
    assert len(model.optimizer.variables) == 2 * len(generator) + 2
    assert len(model.discriminator_optimizer.variables) == 2 * len(discriminator) + 2
    before = [np.array(v) for v in model.discriminator_optimizer.variables]
    model.build_optimizers()  # idempotent: nothing is rebuilt
    for variable, value in zip(model.discriminator_optimizer.variables, before, strict=True):
        np.testing.assert_array_equal(np.array(variable), value)
