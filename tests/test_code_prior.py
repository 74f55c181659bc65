"""CodePrior (transformer over VQ codes), Generator export, and the recipes (tiny configs)."""

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


def test_prior_diagnosis_nll_is_low_with_the_true_label_and_high_with_a_wrong_one(trained):
    from benchmarks.prior_diagnosis import _nll_per_position

    prior, history = trained
    codes, labels = toy_codes(8)
    nll_true = _nll_per_position(prior, codes, labels)
    nll_wrong = _nll_per_position(prior, codes, (labels + 1) % CLASSES)
    assert nll_true.shape == (8, GRID[0] * GRID[1])
    # Teacher-forced NLL with the true label is the training loss on these codes.
    np.testing.assert_allclose(nll_true.mean(), history["loss"][-1], atol=0.05)
    # The toy pattern's first code is the label itself: a wrong label makes it unlikely
    # (the later codes follow from the first, so only position 0 must differ).
    assert nll_wrong[:, 0].mean() > 2.0 > 0.1 > nll_true[:, 0].mean()


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


def test_per_example_seeds_give_each_sample_its_draw_alone():
    """One seed per sample: a sample is the same alone and inside a mixed batch."""
    prior = tiny_prior(num_layers=1)  # untrained: broad distributions, seeds matter
    labels, seeds = np.array([0, 2, 1, 2]), [5, 6, 7, 8]
    mixed = np.asarray(prior.sample(labels=labels, temperature=2.0, seed=seeds))
    for index in range(len(seeds)):
        alone = prior.sample(labels=labels[index : index + 1], temperature=2.0, seed=[seeds[index]])
        np.testing.assert_array_equal(mixed[index : index + 1], np.asarray(alone))
    # Same label, other seed: another draw (6 codes of 8 at temperature 2).
    assert not np.array_equal(mixed[1], mixed[3])
    # Reversed batch order, reversed samples.
    reversed_ = prior.sample(labels=labels[::-1], temperature=2.0, seed=seeds[::-1])
    np.testing.assert_array_equal(np.asarray(reversed_), mixed[::-1])
    # Unconditional: the batch is the number of seeds.
    unconditional = tiny_prior(num_classes=None, num_layers=1)
    both = np.asarray(unconditional.sample(temperature=2.0, seed=[1, 2]))
    assert both.shape == (2, *GRID)
    np.testing.assert_array_equal(both[1:], unconditional.sample(temperature=2.0, seed=[2]))
    with pytest.raises(ValueError, match=r"one entry per sample \(4\)"):
        prior.sample(labels=labels, seed=[1, 2])
    with pytest.raises(ValueError, match="seed=\\[\\[1\\]\\]"):
        prior.sample(labels=labels[:1], seed=[[1]])


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
    assert result.signatures == ["serving_default", "generate", "generate_png"]
    loaded = tf.saved_model.load(result.path)
    generate = loaded.signatures["generate"]
    # Every input per example (TF Serving batches along dimension 0).
    labels, seeds = np.array([0, 1, 3], "int32"), np.array([5, 6, 7], "int32")
    served = generate(labels=tf.constant(labels), seed=tf.constant(seeds))["images"].numpy()
    expected = np.asarray(generator.generate(labels=labels, seed=seeds))
    np.testing.assert_allclose(served, expected, atol=1e-4)
    for index in range(len(seeds)):
        alone = generate(labels=labels[index : index + 1], seed=seeds[index : index + 1])
        # Same codes (same per-example draw), so the same image up to the decoder's
        # float32 convolutions and norms summing in another order for another batch
        # size (measured 1.4e-6); another code would move it by O(0.1).
        np.testing.assert_allclose(served[index : index + 1], alone["images"], rtol=0, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be in"):
        generate(labels=tf.constant([9]), seed=tf.constant([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must have one entry per"):
        generate(labels=tf.constant(labels), seed=tf.constant([0]))

    path = export_litert(prior, str(tmp_path / "step.tflite"))
    tokens, _ = prior.prepare_inputs(np.arange(32).reshape(2, 4, 4) % CODEBOOK, [1, 2])
    for length in (1, 5, 16):
        step = np.asarray(tokens)[:, :length]
        got = run_litert(path, "next_token_logits", {"tokens": step})["logits"]
        np.testing.assert_allclose(got, prior.next_token_logits(step), atol=1e-4)


@pytest.mark.slow
def test_recipes_build_and_run_two_steps(tmp_path):
    from kzoo.training import trainer
    from recipes import caption_prior_shapes, code_prior_shapes, get_recipe

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
    # The recipe's taming betas reach both optimizers (the discriminator's copies the config).
    for optimizer in (tokenizer.optimizer, tokenizer.discriminator_optimizer):
        assert (optimizer.beta_1, optimizer.beta_2) == (0.5, 0.9)

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

    # The caption recipe: same data path, each image's caption as the prefix.
    config = get_recipe("caption_prior_shapes", ["model.max_caption_length=12"])
    config["model"].update(codebook_size=16, grid_shape=(4, 4), hidden_dim=16, num_layers=1)
    config.update(vq_workdir=vq_workdir, num_examples=16, batch_size=4)
    prior = trainer.build_model(config["model"])
    prior.compile(optimizer=trainer.build_optimizer(config))
    dataset = caption_prior_shapes.build_dataset(config, prior)
    tokens, targets = (np.asarray(t) for t in next(iter(dataset)))
    assert tokens.shape == (4, 12 + 16) and targets.shape == (4, 16)
    # kzoo_shapes captions: 11 or 12 words, all in the vocabulary (ids 4+, offset by 17).
    assert np.all(tokens[:, :11] >= 17 + 4) and np.all(tokens[:, 12 - 1] != 17 + 1)
    np.testing.assert_array_equal(tokens[:, 12], 16)  # the start token
    np.testing.assert_array_equal(tokens[:, 13:], targets[:, :-1])
    history = prior.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


# === Caption-conditional prior ===
WORDS = ["red", "green", "blue", "yellow", "a", "shape", "the"]
MAX_CAPTION = 4


def toy_captions(count=64):
    """Per-colour patterns as for `toy_codes`, under captions of varying length and case."""
    codes, labels = toy_codes(count)
    templates = ("{}", "a {} shape", "The {}!")
    captions = [
        templates[(i // CLASSES) % 3].format(WORDS[label].upper() if i % 3 == 2 else WORDS[label])
        for i, label in enumerate(labels)
    ]
    return codes, captions


def caption_prior(**overrides):
    args = dict(num_classes=None, caption_vocabulary=WORDS, max_caption_length=MAX_CAPTION)
    args.update(overrides)
    return tiny_prior(**args)


@pytest.fixture(scope="module")
def caption_trained():
    keras.utils.set_random_seed(0)
    prior = caption_prior()
    prior.compile(optimizer=keras.optimizers.Adam(3e-3))
    codes, captions = toy_captions()
    tokens, targets = prior.prepare_inputs(codes, captions=captions)
    history = prior.fit(tokens, targets, batch_size=16, epochs=10, verbose=0).history
    return prior, history


def test_caption_fit_learns_the_pattern_of_each_caption(caption_trained):
    prior, history = caption_trained
    assert history["loss"][0] > 1.5 and history["loss"][-1] < 0.1, history["loss"]
    # Greedy samples follow the caption's colour word, whatever the caption's form.
    codes = np.asarray(
        prior.sample(captions=["red", "a green shape", "The BLUE", "yellow"], top_k=1)
    )
    expected, _ = toy_codes(4)
    np.testing.assert_array_equal(codes, expected)


def test_caption_prepare_inputs_prefix_the_caption_and_target_codes_only():
    prior = caption_prior(num_layers=1)
    codes, captions = toy_captions(3)  # "red", "green", "BLUE"
    tokens, targets = (np.asarray(t) for t in prior.prepare_inputs(codes, captions=captions))
    offset = CODEBOOK + 1  # caption token t is codebook_size + 1 + t; [PAD] (t=0) = 9
    assert prior.caption_token_offset == offset and prior.vocabulary_size == offset + 4 + 7
    words = np.array([[4, 0, 0, 0], [5, 0, 0, 0], [6, 0, 0, 0]])  # ids 4+ are the words
    np.testing.assert_array_equal(tokens[:, :MAX_CAPTION], offset + words)
    np.testing.assert_array_equal(tokens[:, MAX_CAPTION], CODEBOOK)  # the start token
    np.testing.assert_array_equal(tokens[:, MAX_CAPTION + 1 :], targets[:, :-1])
    np.testing.assert_array_equal(targets, codes.reshape(3, -1))
    # Logits exist at code positions only, so the loss never covers caption tokens.
    logits = np.asarray(prior(tokens))
    assert logits.shape == (3, 6, CODEBOOK) and tokens.shape == (3, MAX_CAPTION + 6)
    prior.compile()
    loss = prior.evaluate(tokens, targets, verbose=0, return_dict=True)["loss"]
    manual = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    np.testing.assert_allclose(loss, np.mean(manual), rtol=1e-5)


def test_a_caption_changes_the_logits_and_padding_is_masked():
    prior = caption_prior(num_layers=1)
    codes = np.repeat(toy_codes(1)[0], 2, axis=0)  # two equal grids: rows differ by caption only

    def logits(captions):
        return np.asarray(prior(prior.prepare_inputs(codes, captions=captions)[0]))

    red = logits(["red", "red"])
    assert np.abs(red - logits(["blue", "red"]))[0].min() > 1e-6  # every code position moves
    np.testing.assert_array_equal(red[1], logits(["blue", "red"])[1])
    # Standardization and truncation to max_caption_length (the first 4 words).
    np.testing.assert_array_equal(logits(["RED!", "red"]), red)
    np.testing.assert_array_equal(
        logits(["red blue green yellow red blue", "red"]), logits(["red blue green yellow", "red"])
    )
    # [PAD] is never attended to: changing its embedding changes nothing.
    table = prior.token_embedding.embeddings
    table.assign(
        keras.ops.where(
            keras.ops.arange(prior.vocabulary_size)[:, None] == prior.caption_token_offset,
            100.0,
            table,
        )
    )
    np.testing.assert_allclose(logits(["red", "red"]), red, atol=1e-5)


def test_caption_prior_config_and_keras_round_trip(caption_trained, tmp_path):
    prior, _ = caption_trained
    config = prior.get_config()
    assert config["caption_vocabulary"] == WORDS and config["max_caption_length"] == MAX_CAPTION
    assert CodePrior.from_config(config).get_config() == config
    path = os.path.join(tmp_path, "caption_prior.keras")
    prior.save(path)
    reloaded = keras.saving.load_model(path)
    codes, captions = toy_captions(4)
    tokens, _ = prior.prepare_inputs(codes, captions=captions)
    np.testing.assert_array_equal(reloaded(tokens), prior(tokens))
    captions = ["a red shape", "yellow", ""]
    np.testing.assert_array_equal(
        reloaded.sample(captions=captions, temperature=1.5, seed=5),
        prior.sample(captions=captions, temperature=1.5, seed=5),
    )
    # Token ids (what LiteRT takes) sample exactly as the strings they come from.
    np.testing.assert_array_equal(
        prior.sample(captions=prior.tokenize(captions), temperature=1.5, seed=5),
        prior.sample(captions=captions, temperature=1.5, seed=5),
    )


def test_caption_bad_inputs():
    with pytest.raises(ValueError, match="num_classes=4, caption_vocabulary="):
        tiny_prior(caption_vocabulary=WORDS)
    with pytest.raises(ValueError, match="num_classes=4.*max_caption_length=8"):
        tiny_prior(max_caption_length=8)
    with pytest.raises(ValueError, match="caption_vocabulary=None, max_caption_length=8"):
        tiny_prior(num_classes=None, max_caption_length=8)
    with pytest.raises(ValueError, match="max_caption_length=0"):
        caption_prior(max_caption_length=0)
    with pytest.raises(ValueError, match="special tokens"):
        caption_prior(caption_vocabulary=["red", "[PAD]"])

    class_prior = tiny_prior(num_layers=1)
    with pytest.raises(ValueError, match=r"class-conditional.*pass `labels`.*captions is not None"):
        class_prior.sample(captions=["red"])
    with pytest.raises(ValueError, match="unconditional.*captions is not None"):
        tiny_prior(num_classes=None, num_layers=1).sample(num_samples=1, captions=["red"])

    prior = caption_prior(num_layers=1)
    codes, _ = toy_codes(2)
    with pytest.raises(ValueError, match="pass `captions`, not `labels`"):
        prior.sample(labels=[0])
    with pytest.raises(ValueError, match="captions=None"):
        prior.prepare_inputs(codes)
    with pytest.raises(ValueError, match="wrap one string in a list"):
        prior.sample(captions="red")
    with pytest.raises(ValueError, match="3 captions for 2 code grids"):
        prior.prepare_inputs(codes, captions=["red", "blue", "green"])
    with pytest.raises(ValueError, match=r"captions.shape=\(1, 5\)"):
        prior.sample(captions=np.zeros((1, 5), "int32"))
    with pytest.raises(ValueError, match="captions.*max=11"):
        prior.sample(captions=np.full((1, MAX_CAPTION), 11, "int32"))
    with pytest.raises(ValueError, match="captions.dtype=float32"):
        prior.sample(captions=np.zeros((1, MAX_CAPTION), "float32"))


@pytest.mark.slow
def test_caption_generate_endpoint_and_step_litert_parity(tmp_path):
    import tensorflow as tf

    from kzoo.export import check_parity, export_all, reference_outputs

    prior = caption_prior(grid_shape=(4, 4), num_layers=1)
    generator = Generator(prior, tiny_tokenizer(), top_k=4, max_batch=4)
    captions = ["a red shape", "", "BLUE green yellow red blue the"]
    seeds = np.array([2, 3, 4], "int32")
    images = np.asarray(generator.generate(captions=captions, seed=seeds))
    assert images.shape == (3, 8, 8, 3) and np.all(np.isfinite(images))

    # SavedModel: strings in, tokenized in the graph. Parity in a fresh process on the
    # model's parity batch, its captions passed as bytes: the generic check would store
    # them as a NumPy object array, which the runner cannot load (allow_pickle=False).
    saved = export_all(
        generator, str(tmp_path), name="gen", formats=("saved_model",), check_parity=False
    )["saved_model"]
    assert saved.signatures == ["serving_default", "generate", "generate_png"]
    reference = reference_outputs(generator, generator.export_parity_batch())
    batch = reference.inputs["generate"]
    batch["captions"] = batch["captions"].astype(np.bytes_)
    parity = check_parity(reference, saved_model_dir=saved.path)
    assert parity["ok"] and not parity["saved_model_runner"]["kzoo_modules_loaded"], parity
    loaded = tf.saved_model.load(saved.path)
    served = loaded.signatures["generate"](captions=tf.constant(captions), seed=tf.constant(seeds))
    np.testing.assert_allclose(served["images"].numpy(), images, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch of captions must be at most 4"):
        loaded.signatures["generate"](captions=tf.constant(["red"] * 5), seed=tf.zeros(5, tf.int32))

    # LiteRT: the prior's single step on token ids (parity on the model's own batch).
    litert = export_all(prior, str(tmp_path), name="step", formats=("litert",), quantize="none")
    litert = litert["litert"]
    assert litert.parity["ok"], litert.parity
    from kzoo.export import litert_signatures, run_litert

    inputs = litert_signatures(litert.files["float32"])["next_token_logits"]["inputs"]
    assert inputs == {
        "caption_ids": {"shape": [-1, MAX_CAPTION], "dtype": "int32"},
        "tokens": {"shape": [-1, -1], "dtype": "int32"},
    }
    tokens, _ = prior.prepare_inputs(
        np.arange(32).reshape(2, 4, 4) % CODEBOOK, captions=captions[:2]
    )
    tokens = np.asarray(tokens)
    for length in (1, 7, 16):  # start token + codes so far
        step = tokens[:, MAX_CAPTION : MAX_CAPTION + length]
        got = run_litert(
            litert.files["float32"],
            "next_token_logits",
            {"caption_ids": np.asarray(prior.tokenize(captions[:2])), "tokens": step},
        )["logits"]
        expected = prior.next_token_logits(tokens[:, : MAX_CAPTION + length])
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_cli_sample_takes_captions_for_a_caption_prior_only(tmp_path, capsys):
    import json

    from PIL import Image

    from kzoo.cli import main
    from kzoo.training.checkpoint import save_checkpoint

    vq_workdir = str(tmp_path / "vq")
    os.makedirs(vq_workdir)
    save_checkpoint(tiny_tokenizer(), vq_workdir, epoch=1, step=1)
    workdirs = {}
    for kind, prior in (
        ("caption", caption_prior(grid_shape=(4, 4), num_layers=1)),
        ("class", tiny_prior(grid_shape=(4, 4), num_layers=1)),
    ):
        workdirs[kind] = str(tmp_path / kind)
        os.makedirs(workdirs[kind])
        save_checkpoint(prior, workdirs[kind], epoch=1, step=1)
        with open(os.path.join(workdirs[kind], "config.json"), "w") as f:
            json.dump({"vq_workdir": vq_workdir, "dataset": "kzoo_shapes"}, f)

    png = str(tmp_path / "samples.png")
    argv = ["sample", workdirs["caption"], "--out", png, "--num", "3", "--top-k", "2"]
    assert main([*argv, "--caption", "a red shape", "--caption", "blue"]) == 0
    assert Image.open(png).size == (3 * (8 * 2 + 2) + 2, 8 * 2 + 4)
    assert main(argv) == 2
    assert "caption-conditional: pass --caption TEXT" in capsys.readouterr().err
    assert main(["sample", workdirs["class"], "--out", png, "--caption", "red"]) == 2
    error = capsys.readouterr().err
    assert "class-conditional (num_classes=4)" in error and error.count("\n") == 1
