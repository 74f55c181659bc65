"""benchmarks.learning_curve's EMA swap and benchmarks.plot_curve's PNG."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from benchmarks import learning_curve, plot_curve


def _model(use_ema):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.1, use_ema=use_ema), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_ema_swap_scores_the_averages_and_restores_the_raw_weights():
    model = _model(use_ema=True)
    raw = [v.numpy() for v in model.trainable_variables]
    # Averages that differ from the weights, as mid-training (fit swaps them in
    # only after its last epoch).
    averages = [v.numpy() + 1.0 for v in model.trainable_variables]
    for slot, value in zip(model.optimizer._model_variables_moving_average, averages, strict=True):
        slot.assign(value)
    restore = learning_curve._swap_in_ema(model)
    for variable, average in zip(model.trainable_variables, averages, strict=True):
        np.testing.assert_array_equal(variable.numpy(), average)
    learning_curve._restore(model, restore)
    for variable, value in zip(model.trainable_variables, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_without_ema_nothing_is_swapped():
    model = _model(use_ema=False)
    assert learning_curve._swap_in_ema(model) is None


def test_plot_curve_draws_one_line_per_tag(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        {"tag": "a", "step": 1000, "shape_accuracy": 0.4, "shape_accuracy_se": 0.03},
        {"tag": "a", "step": 500, "shape_accuracy": 0.2, "shape_accuracy_se": 0.02},
        {"tag": "b", "step": 500, "shape_accuracy": 0.3},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:2]))
    other = tmp_path / "other.jsonl"  # curves from two results files in one plot
    other.write_text(json.dumps(rows[2]) + "\n")
    curves = plot_curve.load_rows(str(path))
    assert [r["step"] for r in curves["a"]] == [500, 1000]
    out = tmp_path / "curve.png"
    plot_curve.main([str(path), str(other), "--out", str(out), "--chance", "0.1667"])
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (plot_curve.HEIGHT, plot_curve.WIDTH, 3)
    for colour in plot_curve.COLOURS[:2]:  # both tags drawn
        assert np.all(image == colour, axis=-1).sum() > 20
    with pytest.raises(SystemExit, match="No rows to plot"):
        plot_curve.main([str(path), "--out", str(out), "--tags", "missing"])


def test_guidance_sweep_scales_parse_and_bad_ones_are_named():
    from benchmarks import guidance_sweep

    assert guidance_sweep._scales("1,2.5, 8") == [1.0, 2.5, 8.0]
    for bad in ("", "1,x", "-1"):
        with pytest.raises(Exception, match=f"Received: {bad!r}"):
            guidance_sweep._scales(bad)


def test_background_oracle_reads_clean_images_and_is_at_chance_in_pure_noise():
    from benchmarks import background_decision
    from kzoo.data import shapes

    data = shapes.generate_split("validation", num_examples=400, image_size=16)
    images = data["image"].astype("float32") / 127.5 - 1.0
    truth = data["background"]
    means = background_decision.background_means(images, truth, len(shapes.BACKGROUNDS))
    assert means.shape == (4, 3)
    clean = background_decision.oracle_background(images, 1.0, means)
    assert np.mean(clean == truth) == 1.0
    noise = np.random.default_rng(0).standard_normal(images.shape).astype("float32")
    # Pure noise: chance (0.25, binomial SE 0.02 for 400). At a = 0.2 the two nearest
    # background means (gray, blue) lie 8 noise SDs apart at 16 px: read every time.
    for alpha, low, high in ((1e-8, 0.15, 0.35), (0.2, 0.99, 1.0)):
        x_t = np.sqrt(alpha) * images + np.sqrt(1 - alpha) * noise
        accuracy = np.mean(background_decision.oracle_background(x_t, alpha, means) == truth)
        assert low <= accuracy <= high, (alpha, accuracy)


def test_text_scorer_conditions_on_true_wrong_and_empty_captions_and_scores_validation():
    import recipes.text2image_shapes as recipe
    from kzoo.data import shapes
    from kzoo.data.tokenizer import Tokenizer
    from kzoo.diffusion import DiffusionModel
    from kzoo.metrics.features import ShapesClassifier
    from kzoo.models import TextEncoder
    from kzoo.testing import tiny_unet

    keras.utils.set_random_seed(0)
    vocabulary = Tokenizer("kzoo_shapes").vocabulary_size
    model = DiffusionModel(
        tiny_unet(image_size=16, context_dim=16),
        text_encoder=TextEncoder(vocabulary, 16, hidden_dim=16, num_layers=1, num_heads=2),
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": 16},
        schedule={"name": "linear", "num_train_timesteps": 1000},
        prediction_type="v",
    )
    scorer = learning_curve.TextValidationScorer(
        recipe.evaluate, 16, num_samples=4, diagnosis_images=6, classifier=ShapesClassifier(16)
    )
    true, wrong = scorer.captions["true"], scorer.captions["wrong"]
    assert true == [str(c) for c in shapes.generate_split("validation", 6, 16)["caption"]]
    for a, b in zip(true, wrong, strict=True):
        # The same caption with another shape word, and nothing else changed.
        changed = [(x, y) for x, y in zip(a.split(), b.split(), strict=True) if x != y]
        assert len(changed) == 1 and {changed[0][0], changed[0][1]} <= set(shapes.SHAPES)
    assert scorer.captions["null"] == [""] * 6

    rows = scorer.diagnosis(model)
    assert [row["t"] for row in rows] == list(learning_curve.DIAGNOSIS_TIMESTEPS)
    # Each condition's x0 is the model's own prediction for that caption.
    from kzoo.diffusion.schedules import add_noise, predict_x0

    t = np.full((6,), rows[0]["t"], "int32")
    x_t = add_noise(model.schedule, scorer.x0, scorer.noise, t)
    for name in ("true", "wrong", "null"):
        token_ids = model.tokenize(scorer.captions[name])
        output = model([x_t, t.astype("float32"), token_ids])
        x0_hat = np.clip(np.asarray(predict_x0(model.schedule, output, x_t, t, "v")), -1, 1)
        expected = float(np.mean((x0_hat - scorer.x0) ** 2))
        np.testing.assert_allclose(rows[0][f"mse_{name}"], expected, rtol=1e-5)
    assert rows[0]["mse_true"] != rows[0]["mse_wrong"]  # the captions reach the denoiser

    metrics, images = scorer.samples(model, nfe=1, guidance_scale=3.0)
    assert images is None and metrics["evaluate"]["split"] == "validation"
    assert metrics["evaluate"]["num_examples"] == 4
    assert metrics["shape_accuracy"] == metrics["evaluate"]["shape_agreement"]
