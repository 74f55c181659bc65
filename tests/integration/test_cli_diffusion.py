"""`kzoo train/sample/export` end to end on a tiny class-conditional DiT diffusion model."""

import json
import os

import pytest
from PIL import Image

from kzoo.cli import main

from ._tiny import TINY_DIT, TINY_VQVAE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dit") / "run")
    assert main(["train", "dit_shapes", "--workdir", path, "--steps", "2", *TINY_DIT]) == 0
    return path


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_sample_writes_a_grid(workdir, sampler, tmp_path):
    png = str(tmp_path / f"{sampler}.png")
    argv = ["sample", workdir, "--out", png, "--num", "3", "--steps", "2", "--sampler", sampler]
    assert main([*argv, "--guidance-scale", "2.0"]) == 0
    assert Image.open(png).size == (3 * (16 * 2 + 2) + 2, 16 * 2 + 4)


def test_export_generate_and_denoise(workdir, tmp_path, capsys):
    out = str(tmp_path / "exported")
    assert main(["export", workdir, "--format", "saved_model", "--out", out]) == 0
    assert "generate" in capsys.readouterr().out
    with open(os.path.join(out, "dit_shapes", "1", "parity.json")) as f:
        parity = json.load(f)["results"]["saved_model"]
    assert set(parity) >= {"generate", "denoise"}


def test_sample_of_an_autoencoder_is_a_clear_error(tmp_path, capsys):
    from kzoo.training.checkpoint import save_checkpoint, write_json_atomic
    from kzoo.training.trainer import build_model
    from recipes import get_recipe

    # A workdir as `kzoo train vqvae_shapes` leaves it, without the training time.
    vq = tmp_path / "vq"
    vq.mkdir()
    config = get_recipe("vqvae_shapes", TINY_VQVAE[1::2])
    write_json_atomic(str(vq / "config.json"), config)
    model = build_model(config["model"])
    model.compile(optimizer="adam")
    save_checkpoint(model, str(vq), epoch=1, step=1)
    assert main(["sample", str(vq), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not generate images" in capsys.readouterr().err
