"""`kzoo train` on a workdir with a checkpoint resumes its run's own config.

Only `steps` may change; any other `--set` that differs from the saved
`config.json` fails naming the key and both values, and a run already at its
step count says so instead of "Trained". No test here trains: the workdir is
written as `kzoo train` leaves it.
"""

import json
import os

import pytest
from integration._tiny import TINY_VQVAE

import recipes
from kzoo.cli import main
from kzoo.training.checkpoint import save_checkpoint, write_json_atomic
from kzoo.training.trainer import build_model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny vqvae_shapes run at step 4 of 4 (2 epochs of 2 steps)."""
    path = tmp_path_factory.mktemp("resume") / "run"
    path.mkdir()
    config = recipes.get_recipe("vqvae_shapes", [*TINY_VQVAE[1::2], "steps=4"])
    write_json_atomic(str(path / "config.json"), config)
    model = build_model(config["model"])
    model.compile(optimizer="adam")
    save_checkpoint(model, str(path), epoch=2, step=4)
    return str(path)


def _train(workdir, *argv):
    return main(["train", "vqvae_shapes", "--workdir", workdir, *TINY_VQVAE, *argv])


def _files(workdir):
    return {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}


def test_a_finished_run_says_so_instead_of_trained(workdir, capsys):
    before = _files(workdir)
    assert _train(workdir) == 0
    assert capsys.readouterr().out == (
        f"{workdir} is already at step 4 of 4; nothing to train. "
        "Use --set steps=N with N > 4 to train further.\n"
    )
    assert _train(workdir, "--steps", "3") == 0
    assert f"{workdir} is already at step 4 (requested steps=3); nothing to train." in (
        capsys.readouterr().out
    )
    assert _files(workdir) == before  # config.json keeps steps=4


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.codebook_size=32", "model.codebook_size=32 (saved: 16)"),
        ("model.channels=(8,32)", "model.channels=[8, 32] (saved: [8, 16])"),
        ("batch_size=16", "batch_size=16 (saved: 8)"),
        ("learning_rate=0.5", "learning_rate=0.5 (saved: 0.001)"),
        ("ema=true", "ema=True (saved: False)"),
    ],
)
def test_set_of_anything_but_steps_on_a_resumed_run_fails_naming_it(
    workdir, override, expected, capsys
):
    assert _train(workdir, "--set", override, "--set", "steps=8") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kzoo: error: The workdir holds a run trained with another config")
    assert "only `steps` may change" in err and "\n" not in err
    assert err.endswith(f"Received: {expected} for workdir={workdir!r}")


def test_resuming_uses_the_saved_config_not_the_recipe_defaults(workdir, tmp_path, capsys):
    """The recipe's defaults may have changed since the run started: the run keeps its own."""
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["learning_rate"] != 0.123
    older = tmp_path / "older"
    older.mkdir()
    for name in os.listdir(workdir):
        (older / name).write_bytes(open(os.path.join(workdir, name), "rb").read())
    write_json_atomic(str(older / "config.json"), {**saved, "learning_rate": 0.123})
    assert _train(str(older)) == 0  # no --set: the saved 0.123 is no change
    assert "is already at step 4 of 4" in capsys.readouterr().out
    assert _train(str(older), "--set", "learning_rate=0.123") == 0
    capsys.readouterr()
    assert _train(str(older), "--set", "learning_rate=0.001") == 2
    assert "learning_rate=0.001 (saved: 0.123)" in capsys.readouterr().err


def test_another_recipe_on_the_workdir_fails(workdir, capsys):
    argv = ["train", "dit_shapes", "--workdir", workdir, "--steps", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a run of recipe 'vqvae_shapes'" in err
    assert err.endswith(f"Received: recipe='dit_shapes', workdir={workdir!r}")
