"""CodePrior (transformer over VQ codes), Generator export, and the two recipes (tiny configs)."""

import os

import keras
import numpy as np
import pytest

from kzoo.models import VQVAE, CodePrior, Generator

CODEBOOK, GRID, CLASSES = 8, (2, 3), 4


def toy_codes(count=64):
    """Deterministic per-class patterns: code at position i is (label + i) % 8."""
    labels = np.arange(count) % CLASSES
    codes = (labels[:, None] + np.arange(6)[None]) % CODEBOOK
    return codes.reshape(-1, *GRID).astype("int32"), labels.astype("int32")


def tiny_prior(**overrides):
    args = dict(
        codebook_size=CODEBOOK,
        grid_shape=GRID,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        num_classes=CLASSES,
    )
    args.update(overrides)
    return CodePrior(**args)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    prior = tiny_prior()
    prior.compile(optimizer=keras.optimizers.Adam(3e-3))
    codes, labels = toy_codes()
    tokens, targets = prior.prepare_inputs(codes, labels)
    history = prior.fit(tokens, targets, batch_size=16, epochs=8, verbose=0).history
    return prior, history


def test_fit_learns_the_toy_patterns(trained):
    prior, history = trained
    assert history["loss"][0] > 1.5 and history["loss"][-1] < 0.1, history["loss"]
    # Greedy sampling (top_k=1) reproduces each class's pattern.
    codes = np.asarray(prior.sample(labels=[0, 1, 2, 3], top_k=1, seed=0))
    expected, _ = toy_codes(4)
    np.testing.assert_array_equal(codes, expected)


def test_prepare_inputs_shift_codes_behind_a_class_start_token():
    prior = tiny_prior(num_layers=1)
    codes, labels = toy_codes(2)
    tokens, targets = (np.asarray(t) for t in prior.prepare_inputs(codes, labels))
    np.testing.assert_array_equal(targets, codes.reshape(2, -1))
    np.testing.assert_array_equal(tokens[:, 0], CODEBOOK + labels)
    np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])


def test_sampling_is_deterministic_for_a_seed():
    prior = tiny_prior(num_layers=1)
    first = np.asarray(prior.sample(labels=[0, 1, 2], temperature=1.5, seed=7))
    again = np.asarray(prior.sample(labels=[0, 1, 2], temperature=1.5, seed=7))
    other = np.asarray(prior.sample(labels=[0, 1, 2], temperature=1.5, seed=8))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (3, *GRID) and first.min() >= 0 and first.max() < CODEBOOK
    assert not np.array_equal(first, other)


def test_top_k_restricts_samples_and_k1_is_greedy():
    prior = tiny_prior(num_layers=1)  # untrained: broad distributions
    labels = np.array([0, 1, 2, 3, 0, 1])
    for top_k in (1, 2):
        codes = np.asarray(prior.sample(labels=labels, temperature=2.0, top_k=top_k, seed=3))
        tokens, targets = prior.prepare_inputs(codes, labels)
        logits = np.asarray(prior(tokens))  # (B, L, K): logits at each sampled position
        ranks = (logits > np.take_along_axis(logits, np.asarray(targets)[..., None], -1)).sum(-1)
        assert ranks.max() < top_k, ranks
    # k=1 equals step-by-step greedy decoding.
    greedy = np.asarray(prior.start_tokens(labels))[:, None]
    for _ in range(6):
        step = np.asarray(prior.next_token_logits(greedy)).argmax(-1)
        greedy = np.concatenate([greedy, step[:, None]], axis=1)
    np.testing.assert_array_equal(
        codes_k1 := np.asarray(prior.sample(labels=labels, top_k=1, seed=11)).reshape(6, -1),
        greedy[:, 1:],
    )
    assert codes_k1.shape == (6, 6)


def test_unconditional_prior_samples_by_count():
    prior = tiny_prior(num_classes=None, num_layers=1)
    assert np.asarray(prior.sample(num_samples=3, seed=0)).shape == (3, *GRID)
    with pytest.raises(ValueError, match="num_samples=None"):
        prior.sample(seed=0)
    with pytest.raises(ValueError, match="labels is not None"):
        prior.sample(labels=[0], seed=0)


def test_keras_round_trip(trained, tmp_path):
    prior, _ = trained
    path = os.path.join(tmp_path, "prior.keras")
    prior.save(path)
    reloaded = keras.saving.load_model(path)
    tokens, _ = prior.prepare_inputs(*toy_codes(4))
    np.testing.assert_array_equal(reloaded(tokens), prior(tokens))
    np.testing.assert_array_equal(
        reloaded.sample(labels=[1, 2], top_k=3, seed=5),
        prior.sample(labels=[1, 2], top_k=3, seed=5),
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"codebook_size": 0}, "codebook_size=0"),
        ({"grid_shape": (2,)}, r"grid_shape=\(2,\)"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"num_layers": 0}, "num_layers=0"),
    ],
)
def test_bad_constructor_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_prior(**overrides)


def test_bad_sampling_and_input_arguments():
    prior = tiny_prior(num_layers=1)
    with pytest.raises(ValueError, match="temperature=0"):
        prior.sample(labels=[0], temperature=0)
    with pytest.raises(ValueError, match="top_k=9"):
        prior.sample(labels=[0], top_k=9)
    with pytest.raises(ValueError, match="labels=None"):
        prior.sample(seed=0)
    with pytest.raises(ValueError, match="labels.*max=4"):
        prior.sample(labels=[4])
    with pytest.raises(ValueError, match=r"codes.shape=\(1, 3, 2\)"):
        prior.prepare_inputs(np.zeros((1, 3, 2), "int32"), [0])
    with pytest.raises(ValueError, match="codes.*max=8"):
        prior.prepare_inputs(np.full((1, *GRID), 8, "int32"), [0])


def tiny_tokenizer():
    return VQVAE(
        image_shape=(8, 8, 3),
        codebook_size=CODEBOOK,
        embedding_dim=4,
        channels=(4, 8),
        norm_groups=4,
        attention=False,
    )


def test_generator_checks_the_tokenizer_and_decodes_samples():
    tokenizer = tiny_tokenizer()
    prior = tiny_prior(grid_shape=(4, 4), num_layers=1)
    generator = Generator(prior, tokenizer, top_k=2)
    images = np.asarray(generator.generate(labels=[0, 3], seed=1))
    assert images.shape == (2, 8, 8, 3) and np.all(np.isfinite(images))
    np.testing.assert_array_equal(images, generator.generate(labels=[0, 3], seed=1))
    with pytest.raises(ValueError, match="codebook_size"):
        Generator(tiny_prior(num_layers=1), tokenizer)  # grid (2, 3) vs (4, 4)
    with pytest.raises(ValueError, match="top_k=0"):
        Generator(prior, tokenizer, top_k=0)


@pytest.mark.slow
def test_generate_endpoint_saved_model_and_step_litert_parity(tmp_path):
    import tensorflow as tf

    from kzoo.export import export_litert, export_saved_model, run_litert

    tokenizer = tiny_tokenizer()
    prior = tiny_prior(grid_shape=(4, 4), num_layers=1)
    generator = Generator(prior, tokenizer, top_k=4)
    result = export_saved_model(generator, str(tmp_path / "sm"), check_parity=False)
    assert result.signatures == ["serving_default", "generate"]
    loaded = tf.saved_model.load(result.path)
    labels = np.array([0, 1, 3], "int32")
    served = loaded.signatures["generate"](labels=tf.constant(labels), seed=tf.constant(5))
    expected = np.asarray(generator.generate(labels=labels, seed=5))
    np.testing.assert_allclose(served["images"].numpy(), expected, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be in"):
        loaded.signatures["generate"](labels=tf.constant([9]), seed=tf.constant(0))

    path = export_litert(prior, str(tmp_path / "step.tflite"))
    tokens, _ = prior.prepare_inputs(np.arange(32).reshape(2, 4, 4) % CODEBOOK, [1, 2])
    for length in (1, 5, 16):
        step = np.asarray(tokens)[:, :length]
        got = run_litert(path, "next_token_logits", {"tokens": step})["logits"]
        np.testing.assert_allclose(got, prior.next_token_logits(step), atol=1e-4)


@pytest.mark.slow
def test_recipes_build_and_run_two_steps(tmp_path):
    from kzoo.training import trainer
    from recipes import code_prior_shapes, get_recipe

    config = get_recipe("vqgan_shapes")
    config["model"].update(
        image_shape=(16, 16, 3),
        codebook_size=16,
        embedding_dim=8,
        channels=(8, 16, 16),
        norm_groups=4,
        disc_channels=(8, 16),
        disc_start_step=1,
        perceptual_weight=0.0,
        quantizer_options={"seed": 0},
    )
    config.update(batch_size=4, steps_per_epoch=2)
    vq_workdir = str(tmp_path / "vqgan")
    tokenizer = trainer.train(config, vq_workdir, steps=2, verbose=0)
    assert int(tokenizer.optimizer.iterations) == 2
    assert int(tokenizer.discriminator_optimizer.iterations) == 1

    config = get_recipe("code_prior_shapes")
    config["model"].update(codebook_size=16, grid_shape=(4, 4), hidden_dim=16, num_layers=1)
    config.update(vq_workdir=vq_workdir, num_examples=16, batch_size=4)
    prior = trainer.build_model(config["model"])
    prior.compile(optimizer=trainer.build_optimizer(config))
    dataset = code_prior_shapes.build_code_dataset(config, prior)
    tokens, targets = next(iter(dataset))
    assert tokens.shape == (4, 16) and targets.shape == (4, 16)
    np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])
    assert np.all(tokens[:, 0] >= 16)  # class start tokens
    history = prior.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    bad = dict(config, vq_workdir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="vq_workdir="):
        code_prior_shapes.build_code_dataset(bad, prior)
