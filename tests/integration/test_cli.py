"""`kzoo` end to end on a tiny VQ-VAE: train, resume, evaluate, reconstruct, export, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kzoo.cli import main

from ._tiny import TINY_VQVAE

TINY = TINY_VQVAE

pytestmark = pytest.mark.slow


def _weights(workdir):
    from kzoo.training import load_trained_model

    return [np.asarray(w) for w in load_trained_model(workdir).get_weights()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained 4 steps straight, and one trained 2 steps then resumed to 4."""
    root = tmp_path_factory.mktemp("cli")
    straight, resumed = str(root / "straight"), str(root / "resumed")
    assert main(["train", "vqvae_shapes", "--workdir", straight, "--steps", "4", *TINY]) == 0
    assert main(["train", "vqvae_shapes", "--workdir", resumed, "--steps", "2", *TINY]) == 0
    assert main(["train", "vqvae_shapes", "--workdir", resumed, "--steps", "4", *TINY]) == 0
    return root, straight, resumed


def test_recipes_lists_summaries(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "vqvae_shapes" in out and "VQ-VAE" in out


def test_train_writes_config_checkpoint_and_resumes_exactly(trained):
    _, straight, resumed = trained
    with open(os.path.join(straight, "config.json")) as f:
        config = json.load(f)
    assert config["model"]["channels"] == [8, 16] and config["steps"] == 4
    with open(os.path.join(resumed, "state.json")) as f:
        state = json.load(f)
    assert state == {"epoch": 2, "step": 4, "checkpoint": "checkpoint-00000004.keras"}
    # TensorBoard: losses and a reconstruction grid per epoch.
    assert os.listdir(os.path.join(straight, "logs", "train"))
    assert os.listdir(os.path.join(straight, "logs", "images"))
    # Only the current checkpoint is kept, and no temporary file is left behind.
    assert sorted(f for f in os.listdir(resumed) if "checkpoint" in f) == [
        "checkpoint-00000004.keras"
    ]
    # Resuming restores weights, optimizer state and data position: same result.
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with open(os.path.join(resumed, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]


def test_evaluate_and_reconstruct(trained, capsys):
    root, straight, _ = trained
    assert main(["evaluate", straight, "--num-examples", "32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_examples"] == 32
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["test_psnr_db"] > 0
    png = str(root / "grid.png")
    assert main(["reconstruct", straight, "--out", png, "--num", "4"]) == 0
    width, height = Image.open(png).size
    assert (width, height) == (4 * (16 * 2 + 2) + 2, 2 * (16 * 2 + 2) + 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "nope"], "Unknown recipe. Expected one of ['caption_prior_shapes', "),
        (["train", "vqvae_shapes", "--set", "nope=1"], "Unknown config key"),
        (["train", "vqvae_shapes", "--set", "batch_size=big"], "Received: batch_size='big'"),
        (["train", "vqvae_shapes", "--set", "precision=fp8"], "Received: precision='fp8'"),
        (["train", "vqvae_shapes", "--set", "model.codebook_size=0"], "codebook_size=0"),
        (["train", "vqgan_shapes", "--set", "beta_2=1.0"], "Received: beta_2=1.0"),
        (["evaluate", "/nonexistent/workdir"], "Received: workdir='/nonexistent/workdir'"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--workdir", str(tmp_path / "w"), "--steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kzoo: error: ") and message in err and "\n" not in err, err


def test_untrained_and_corrupt_workdirs(trained, tmp_path, capsys):
    _, straight, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(open(os.path.join(straight, "config.json")).read())
    assert main(["export", str(empty), "--format", "saved_model"]) == 2
    assert "holds no trained model" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("config.json", "state.json"):
        (corrupt / name).write_text(open(os.path.join(straight, name)).read())
    (corrupt / "checkpoint-00000004.keras").write_bytes(b"not a zip file")
    assert main(["reconstruct", str(corrupt), "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot be loaded" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_process_prints_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "kzoo", "train", "vqvae_shapes", "--set", "steps=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "kzoo: error: `steps` must be a positive integer. Received: steps=-1"
    )


def test_export_both_formats_with_parity_on_real_images(trained, capsys):
    root, straight, _ = trained
    out = str(root / "exported")
    assert main(["export", straight, "--format", "saved_model", "--out", out]) == 0
    assert (
        main(["export", straight, "--format", "litert", "--quantize", "float16", "--out", out]) == 0
    )
    capsys.readouterr()
    assert sorted(os.listdir(out)) == ["vqvae_shapes", "vqvae_shapes_litert"]
    assert sorted(os.listdir(os.path.join(out, "vqvae_shapes"))) == ["1", "README.md"]
    # Each folder numbers its own versions: LiteRT's first is 1 beside SavedModel's 1.
    assert sorted(os.listdir(os.path.join(out, "vqvae_shapes_litert", "1"))) == [
        "float16.tflite",
        "parity.json",
        "signatures.json",
    ]
    with open(os.path.join(out, "vqvae_shapes", "1", "parity.json")) as f:
        text = f.read()
    assert "reconstruction" in text and "index_agreement" in text
    assert main(["export", straight, "--format", "saved_model", "--quantize", "float16"]) == 2
    assert "--quantize applies to LiteRT only" in capsys.readouterr().err


def test_train_under_mirrored_strategy_and_bad_strategy(tmp_path, capsys):
    workdir = str(tmp_path / "mirrored")
    argv = ["train", "vqvae_shapes", "--workdir", workdir, "--steps", "2", *TINY]
    assert main([*argv, "--set", "strategy=mirrored"]) == 0
    assert os.path.exists(os.path.join(workdir, "checkpoint-00000002.keras"))
    assert main([*argv, "--set", "strategy=tpu"]) == 2
    assert "Received: strategy='tpu'" in capsys.readouterr().err
    assert main([*argv, "--set", "strategy=mirrored", "--set", "jit_compile=true"]) == 2
    assert "not supported with strategy='mirrored' on CPU" in capsys.readouterr().err
