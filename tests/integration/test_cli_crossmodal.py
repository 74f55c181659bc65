"""`kzoo evaluate/export` end to end on a tiny captioner and a tiny CLIP dual encoder."""

import json
import os

import pytest

from kzoo.cli import main

from ._tiny import TINY_CLIP, overrides

pytestmark = pytest.mark.slow

TINY_CAPTIONER = overrides(
    "model.image_encoder.image_shape=(16,16,3)",
    "model.image_encoder.channels=(8,16)",
    "model.image_encoder.hidden_dim=16",
    "model.hidden_dim=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "batch_size=8",
    "steps_per_epoch=2",
)
RECIPES = {"captioner_shapes": TINY_CAPTIONER, "clip_shapes": TINY_CLIP}
NUM_EXAMPLES = 16


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """`{recipe: workdir}`, each trained 2 steps."""
    root = tmp_path_factory.mktemp("crossmodal")
    paths = {}
    for recipe, tiny in RECIPES.items():
        paths[recipe] = str(root / recipe)
        argv = ["train", recipe, "--workdir", paths[recipe], "--steps", "2", *tiny]
        assert main(argv) == 0
    return paths


def _evaluate(workdir, capsys):
    capsys.readouterr()
    assert main(["evaluate", workdir, "--num-examples", str(NUM_EXAMPLES)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics.pop("num_examples") == NUM_EXAMPLES
    assert all(0 <= value <= 1 for value in metrics.values()), metrics
    return metrics


def test_evaluate_captioner_prints_word_accuracies(workdirs, capsys):
    metrics = _evaluate(workdirs["captioner_shapes"], capsys)
    assert set(metrics) == {
        "shape_accuracy",
        "color_accuracy",
        "both_accuracy",
        "caption_exact_match",
    }


def test_evaluate_dual_encoder_prints_zero_shot_and_recall(workdirs, capsys):
    metrics = _evaluate(workdirs["clip_shapes"], capsys)
    recalls = {
        f"{scope}_{direction}_recall@{k}"
        # In-batch recall over one batch of all the examples (fewer than the recipe's 100).
        for scope in ("all", f"batch{NUM_EXAMPLES}")
        for direction in ("i2t", "t2i")
        for k in (1, 5)
    }
    # At least these (the recipe may add more zero-shot variants).
    assert set(metrics) >= {
        "zero_shot_shape_accuracy",
        "zero_shot_shape_accuracy_ensemble",
        "zero_shot_color_accuracy",
        "caption_swap_shape_accuracy",
        *recalls,
    }
    assert 0.0 <= metrics["caption_swap_shape_accuracy"] <= 1.0


def test_evaluate_bad_input_is_one_clear_line(workdirs, tmp_path, capsys):
    workdir = workdirs["captioner_shapes"]
    assert main(["evaluate", workdir, "--num-examples", "0"]) == 2
    assert "Received: --num-examples=0" in capsys.readouterr().err
    # A captioner whose config names no recipe has no metrics to fall back on.
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    for name in os.listdir(workdir):
        if name.endswith(".keras") or name == "state.json":
            (orphan / name).write_bytes(open(os.path.join(workdir, name), "rb").read())
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    (orphan / "config.json").write_text(json.dumps({**config, "recipe": None}))
    assert main(["evaluate", str(orphan)]) == 2
    err = capsys.readouterr().err.strip()
    assert "(Captioner) has no test-split metrics" in err
    assert err.endswith(f"Received: workdir={str(orphan)!r}")


@pytest.mark.parametrize(
    "recipe, text_input",
    [
        ("captioner_shapes", ("next_token_logits", "token_ids")),
        ("clip_shapes", ("encode_text", "token_ids")),
    ],
)
def test_export_litert_uses_the_token_id_endpoints(workdirs, recipe, text_input, tmp_path, capsys):
    from kzoo.export import litert_signatures

    out = str(tmp_path / "exported")
    capsys.readouterr()
    assert main(["export", workdirs[recipe], "--format", "litert", "--out", out]) == 0
    printed = capsys.readouterr().out
    version_dir = os.path.join(out, f"{recipe}_litert", "1")
    assert printed.strip().endswith(f"Exported to {version_dir}")
    # Text models ship their tokenizer beside the .tflite (an app needs no Python).
    assert sorted(os.listdir(version_dir)) == [
        "float32.tflite",
        "parity.json",
        "signatures.json",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    with open(os.path.join(version_dir, "parity.json")) as f:
        parity = json.load(f)
    assert parity["ok"], parity
    signatures = litert_signatures(os.path.join(version_dir, "float32.tflite"))
    signature, name = text_input
    assert signatures[signature]["inputs"][name]["dtype"] == "int32"
    assert "encode_image" in signatures and "encode_image" in printed
