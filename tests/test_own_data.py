"""Own data: `folder:` and `captions:` datasets in `kzoo.data.load` and in every recipe.

One module-scoped folder of small PNG/JPEG files (two class subfolders, a grayscale
and an RGBA file among them) and captions files beside it; each model family
trains one step on it in this process.
"""

import csv
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import kzoo.data
import recipes
from kzoo.data import folders
from kzoo.data.tokenizer import build_vocabulary
from kzoo.training import checkpoint, trainer

SIZE = 16
COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60)}


def _picture(color, shape, height, width):
    """A flat `color` background with a white `shape` (square or cross) in the middle."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = COLORS[color]
    cy, cx, r = height // 2, width // 2, min(height, width) // 4
    if shape == "square":
        image[cy - r : cy + r, cx - r : cx + r] = 255
    else:
        image[cy - r : cy + r, cx - 1 : cx + 1] = 255
        image[cy - 1 : cy + 1, cx - r : cx + r] = 255
    return image


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """`root/shapes/{cross,square}/...` (10 images, nested, PNG and JPEG) + captions files."""
    root = tmp_path_factory.mktemp("own")
    rows = []
    for shape in ("square", "cross"):  # created out of order: labels follow sorted names
        for index, color in enumerate(["red", "blue", "green", "red"]):
            folder = root / "shapes" / shape / ("more" if index == 3 else "")
            folder.mkdir(parents=True, exist_ok=True)
            # Landscape (short side SIZE: cropped, not resized) and portrait.
            height, width = (SIZE, 24) if index % 2 else (24, 20)
            fmt = "png" if index < 2 else "jpeg"
            path = folder / f"{color}{index}.{fmt}"
            Image.fromarray(_picture(color, shape, height, width)).save(path, format=fmt)
            rows.append((os.path.relpath(path, root), f"a {color} {shape}"))
    gray = root / "shapes" / "cross" / "gray.png"
    Image.fromarray(np.full((18, 18), 100, np.uint8)).save(gray)  # 1 channel
    rgba = root / "shapes" / "square" / "rgba.png"
    Image.fromarray(np.full((18, 18, 4), 200, np.uint8)).save(rgba)  # 4 channels
    rows += [(os.path.relpath(gray, root), "a gray cross"), (os.path.relpath(rgba, root), "light")]
    with open(root / "captions.jsonl", "w") as f:
        for file, caption in rows:
            f.write(json.dumps({"file": file, "caption": caption}) + "\n")
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return root


# === kzoo.data.load ===


def test_folder_labels_follow_sorted_class_names_and_mixed_channels_load_as_rgb(data):
    name = f"folder:{data / 'shapes'}"
    own = folders.index(name)
    assert own.class_names == ["cross", "square"]
    relative = [os.path.relpath(f, data / "shapes") for f in own.files]
    assert relative[:2] == ["cross/blue1.png", "cross/gray.png"]
    assert "cross/more/red3.jpeg" in relative  # recursive
    images, labels = kzoo.data.load_arrays(name, image_size=SIZE)
    assert images.shape == (10, SIZE, SIZE, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels["label"], [0] * 5 + [1] * 5)
    # Grayscale 100 repeats into 3 channels; RGBA drops alpha; both exactly (flat
    # images resize to themselves, uint8 values map linearly to [-1, 1]).
    np.testing.assert_allclose(images[1], 100 / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(
        images[relative.index("square/rgba.png")], 200 / 127.5 - 1, atol=1e-6
    )
    # The 16x24 PNG cross/blue1.png needs no resize: its centre crop is columns 4..19.
    expected = _picture("blue", "cross", SIZE, 24)[:, 4:20] / 127.5 - 1
    np.testing.assert_allclose(images[0], expected, atol=1e-6)


def test_captions_jsonl_and_csv_pair_each_file_with_its_caption(data):
    jsonl, _ = kzoo.data.load_arrays(f"captions:{data / 'captions.jsonl'}", image_size=SIZE)
    images, labels = kzoo.data.load_arrays(f"captions:{data / 'captions.csv'}", image_size=SIZE)
    np.testing.assert_array_equal(images, jsonl)
    assert labels["caption"][0] == "a red square" and labels["caption"][-1] == "light"
    assert "label" not in labels
    batch = next(
        iter(
            kzoo.data.load(
                f"captions:{data / 'captions.csv'}",
                image_size=SIZE,
                batch_size=10,
                shuffle=False,
                outputs=("image", "caption"),
            )
        )
    )
    np.testing.assert_allclose(batch[0].numpy(), images, atol=1e-6)


def test_random_crop_and_flip_are_seeded_windows_of_the_image(tmp_path):
    # One 16x24 image with distinct columns: each served image must be one of its 9
    # windows of 16 columns, flipped or not (short side 16: no resize, exact values).
    picture = np.zeros((SIZE, 24, 3), np.uint8)
    picture[..., 0] = np.arange(24, dtype=np.uint8)[None, :] * 10
    picture[..., 1] = np.arange(SIZE, dtype=np.uint8)[:, None] * 10
    (tmp_path / "one").mkdir()
    Image.fromarray(picture).save(tmp_path / "one" / "a.png")
    windows = {}
    for offset in range(24 - SIZE + 1):
        window = picture[:, offset : offset + SIZE] / 127.5 - 1
        windows[(offset, False)], windows[(offset, True)] = window, window[:, ::-1]
    name = f"folder:{tmp_path / 'one'}?crop=random&flip=true"

    def served(seed):
        dataset = kzoo.data.load(
            name, image_size=SIZE, batch_size=4, seed=seed, deterministic=True, repeat=True
        )
        return np.concatenate([batch.numpy() for batch in dataset.take(6)])

    first = served(0)
    np.testing.assert_array_equal(first, served(0))  # the same on every run
    assert not np.array_equal(first, served(1))
    seen = []
    for image in first:
        matches = [key for key, window in windows.items() if np.allclose(image, window, atol=1e-6)]
        assert matches, "a served image is not a window of the picture"
        seen.append(matches[0])
    assert len(set(seen)) >= 6 and {flip for _, flip in seen} == {False, True}
    # The evaluation arrays keep the centre crop, unflipped.
    images, _ = kzoo.data.load_arrays(name, image_size=SIZE)
    np.testing.assert_allclose(images[0], windows[(4, False)], atol=1e-6)


def test_options_in_the_name_are_checked(data):
    with pytest.raises(ValueError, match=r"Option 'crop' .*Received: dataset='folder:"):
        folders.index(f"folder:{data}?crop=middle")
    with pytest.raises(ValueError, match=r"Unknown option 'flop'"):
        folders.index(f"folder:{data}?flop=true")
    with pytest.raises(ValueError, match=r"`image_size` is needed"):
        kzoo.data.load(f"folder:{data / 'shapes'}")


def test_holdout_splits_files_by_their_path_alone(tmp_path):
    """holdout=F: a share F in validation and in test, the rest train, stable under additions."""
    root = tmp_path / "many"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
    pixel = np.zeros((8, 8, 3), np.uint8)
    for i in range(200):
        Image.fromarray(pixel).save(root / ("a", "b")[i % 2] / f"{i:03d}.png")
    name = f"folder:{root}?holdout=0.2"
    splits = {s: folders.index(name).split(s) for s in folders.SPLITS}
    files = {s: set(data.files) for s, data in splits.items()}
    assert files["train"] | files["validation"] | files["test"] == set(folders.index(name).files)
    assert not files["train"] & files["validation"] and not files["validation"] & files["test"]
    # 200 files at shares 0.2 / 0.2 / 0.6: binomial SD 5.7 / 5.7 / 6.9 files.
    counts = {s: len(f) for s, f in files.items()}
    assert abs(counts["validation"] - 40) < 18 and abs(counts["test"] - 40) < 18, counts
    assert splits["test"].class_names == ["a", "b"]  # the whole folder's label mapping
    label_of = dict(zip(splits["test"].files, splits["test"].labels, strict=True))
    assert all(label_of[f] == (0 if f"{os.sep}a{os.sep}" in f else 1) for f in label_of)
    # The same split on another machine (a path hash, no seed) and after new files.
    for i in range(200, 260):
        Image.fromarray(pixel).save(root / "a" / f"{i:03d}.png")
    after = {s: set(folders.index(name).split(s).files) for s in folders.SPLITS}
    assert all(files[s] <= after[s] for s in folders.SPLITS)
    assert folders.split_of("a/000.png", 0.2) == folders.split_of(f"a{os.sep}000.png", 0.2)
    # Through kzoo.data: training reads train, evaluation reads test.
    images, labels = kzoo.data.load_arrays(name, split="test", image_size=SIZE)
    assert images.shape[0] == len(files["test"]) + len(after["test"] - files["test"])
    # Without holdout every split reads every file (as before).
    assert (
        folders.index(f"folder:{root}").split("validation").files
        == folders.index(f"folder:{root}").files
    )
    with pytest.raises(ValueError, match=r"Option 'holdout' .*\[0, 0.5\).*Received: dataset="):
        folders.index(f"folder:{root}?holdout=0.5")
    with pytest.raises(ValueError, match=r"Option 'holdout'"):
        folders.index(f"folder:{root}?holdout=ten")
    with pytest.raises(ValueError, match=r"Own data has the splits .*Received: split='dev'"):
        kzoo.data.load(name, split="dev", image_size=SIZE)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(pixel).save(tiny / "only.png")
    with pytest.raises(ValueError, match=r"leaves the '(validation|test|train)' split .* empty"):
        for split in folders.SPLITS:
            folders.index(f"folder:{tiny}?holdout=0.3").split(split)


# === Bad data: a clear error naming the argument and value ===


def _write_bad(root):
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "good.png")
    good = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.jpg").write_bytes(b"not an image")
    return root


def test_bad_data_errors_name_the_dataset_and_lose_nothing(data, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"holds no image files.*Received: dataset='folder:"):
        kzoo.data.load(f"folder:{empty}", image_size=SIZE)
    with pytest.raises(ValueError, match=r"is missing. Received: dataset='folder:/nowhere'"):
        kzoo.data.load("folder:/nowhere", image_size=SIZE)

    captions = tmp_path / "c.jsonl"
    captions.write_text(
        json.dumps({"file": str(data / "shapes/cross/gray.png"), "caption": "x"})
        + "\n"
        + json.dumps({"file": "gone.png", "caption": "y"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"1 row\(s\).*line 2: 'gone.png'.*Received: dataset="):
        kzoo.data.load(f"captions:{captions}", image_size=SIZE)
    captions.write_text('{"file": "a.png"}\n')
    with pytest.raises(ValueError, match=r'Line 1 .* has no "caption" string'):
        kzoo.data.load(f"captions:{captions}", image_size=SIZE)

    bad = _write_bad(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"2 of 3 image files .* do not decode.*notes.jpg"):
        kzoo.data.load(f"folder:{bad}", image_size=SIZE)
    with pytest.warns(UserWarning, match=r"Skipped 2 of 3 image files"):
        images, _ = kzoo.data.load_arrays(f"folder:{bad}?bad_images=skip", image_size=SIZE)
    assert images.shape == (1, SIZE, SIZE, 3)

    one_class = tmp_path / "one"
    (one_class / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one_class / "cats" / "a.png")
    for dataset, match in [
        (f"folder:{one_class}", r"needs at least 2 class subfolders; it has 1 \(\['cats'\]\)"),
        (f"folder:{bad}?bad_images=skip", r"images lie in class subfolders"),
        (f"captions:{data / 'captions.csv'}", r"images lie in class subfolders"),
    ]:
        with pytest.raises(ValueError, match=match + r".*Received: dataset="):
            recipes.get_recipe("ddpm_unet_shapes", [f"dataset={dataset}"])
    with pytest.raises(ValueError, match=r"trains on captions: `dataset` must be a captions file"):
        recipes.get_recipe("captioner_shapes", [f"dataset=folder:{data / 'shapes'}"])


# === Every recipe takes it ===

TINY = {
    "vqvae_shapes": [
        "model.channels=(8,16)",
        "model.norm_groups=4",
        "model.codebook_size=16",
    ],
    "vqgan_shapes": [
        "model.channels=(8,16)",
        "model.norm_groups=4",
        "model.codebook_size=16",
        "model.embedding_dim=8",
        "model.disc_channels=(8,8,8)",
        "model.disc_start_step=0",
        "model.disc_warmup_steps=1",
        "model.perceptual_weight=0",
    ],
    "ddpm_unet_shapes": ["model.denoiser.channels=(8,8,8)", "model.denoiser.norm_groups=4"],
    "dit_shapes": [
        "model.denoiser.hidden_size=16",
        "model.denoiser.depth=1",
        "model.denoiser.num_heads=2",
    ],
    "latent_dit_shapes": [
        "model.denoiser.hidden_size=16",
        "model.denoiser.depth=1",
        "model.denoiser.num_heads=2",
    ],
    "text2image_shapes": [
        "model.denoiser.channels=(8,8,8)",
        "model.denoiser.norm_groups=4",
        "model.denoiser.time_embedding_dim=16",
        "model.denoiser.context_dim=16",
        "text_encoder_workdir=",
    ],
    "captioner_shapes": [
        "model.image_encoder.channels=(8,16)",
        "model.image_encoder.hidden_dim=16",
        "model.hidden_dim=16",
        "model.num_layers=1",
        "model.num_heads=2",
    ],
    "clip_shapes": [
        "model.image_encoder.channels=(8,8)",
        "model.image_encoder.norm_groups=4",
        "model.image_encoder.hidden_dim=16",
        "model.text_encoder.hidden_dim=16",
        "model.text_encoder.num_layers=1",
        "model.text_encoder.num_heads=2",
        "model.embedding_dim=8",
    ],
    "code_prior_shapes": [
        "model.codebook_size=16",
        "model.hidden_dim=16",
        "model.num_layers=1",
        "model.num_heads=2",
        # The vqvae_shapes tokenizer below halves the side once (16 -> 8).
        "model.grid_shape=(8,8)",
    ],
}
TINY["caption_prior_shapes"] = TINY["code_prior_shapes"]


def _config(recipe, dataset, *extra):
    overrides = [f"dataset={dataset}", f"image_size={SIZE}", *TINY[recipe], *extra]
    return recipes.get_recipe(recipe, [*overrides, "batch_size=4", "steps_per_epoch=1"])


def _fit(recipe, dataset, *extra):
    """One `fit` step of the recipe on `dataset`, as `trainer.train` builds it.

    Only text2image runs the whole `trainer.train` (its joint text encoder is made
    there): checkpoints, logs and image callbacks would triple this file's time.
    """
    import importlib

    config = _config(recipe, dataset, *extra)
    model_config = dict(config["model"])
    if config.get("autoencoder_workdir"):
        model_config["autoencoder"] = checkpoint.load_trained_model(config["autoencoder_workdir"])
    model = trainer.build_model(model_config)
    # Eager: one step costs a fraction of tracing the train step (the same math).
    model.compile(optimizer=trainer.build_optimizer(config), run_eagerly=True)
    build = getattr(importlib.import_module(f"recipes.{recipe}"), "build_dataset", None)
    model.fit((build or trainer.train_dataset)(config, model), steps_per_epoch=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    return model, config


@pytest.fixture(scope="module")
def vq_workdir(data, tmp_path_factory):
    """vqvae_shapes fit one step on the folder at 16 px, checkpointed (the priors' tokenizer)."""
    workdir = tmp_path_factory.mktemp("vqvae")
    model, config = _fit("vqvae_shapes", f"folder:{data / 'shapes'}?flip=true")
    assert model.image_shape == (SIZE, SIZE, 3) and config["model"]["image_shape"] == (16, 16, 3)
    assert "class_names" not in config  # not class-conditional: labels unused
    checkpoint.save_checkpoint(model, str(workdir), epoch=1, step=1)
    return str(workdir)


@pytest.mark.slow  # five in-process trainings of tiny models (one step each)
def test_class_conditional_recipes_take_their_classes_from_the_folder(data, vq_workdir, tmp_path):
    name = f"folder:{data / 'shapes'}?crop=random&flip=true"
    # The U-Net and the DiT in pixels, the DiT over the latents of the folder's VQ-VAE.
    for recipe in ("ddpm_unet_shapes", "dit_shapes", "latent_dit_shapes"):
        extra = [f"autoencoder_workdir={vq_workdir}"] if recipe == "latent_dit_shapes" else []
        model, config = _fit(recipe, name, *extra)
        assert config["class_names"] == ["cross", "square"]  # saved with the run
        assert model.num_classes == 2 and config["model"]["num_classes"] == 2
        assert config["model"]["denoiser"]["num_classes"] == 2
        assert model.image_shape == (SIZE, SIZE, 3)
    assert config["model"]["denoiser"]["input_shape"] == (SIZE // 2, SIZE // 2, 32)
    model, config = _fit("code_prior_shapes", name, f"vq_workdir={vq_workdir}")
    assert model.num_classes == 2 and config["class_names"] == ["cross", "square"]


@pytest.mark.slow  # one in-process training of a tiny model (one step)
def test_vqgan_trains_on_a_folder_with_its_discriminator(data):
    model, config = _fit("vqgan_shapes", f"folder:{data / 'shapes'}?flip=true")
    assert model.image_shape == (SIZE, SIZE, 3) and "class_names" not in config
    # disc_start_step=0: the one step trained the discriminator too.
    assert int(model.discriminator_optimizer.iterations.numpy()) == 1


@pytest.mark.slow  # four in-process trainings of tiny models (one traced step each)
def test_caption_recipes_build_their_vocabulary_from_the_captions(
    data, vq_workdir, tmp_path, monkeypatch
):
    name = f"captions:{data / 'captions.jsonl'}"
    captions = [json.loads(line)["caption"] for line in open(data / "captions.jsonl")]
    words = build_vocabulary(captions)
    assert words[:2] == ["a", "cross"] and "light" in words

    # The whole trainer: `text_encoder_workdir=` (empty) makes a text encoder that
    # trains with the U-Net, and the run's config.json and checkpoint keep the words.
    config = _config("text2image_shapes", name)
    compile_model = keras.Model.compile  # eager steps, as in `_fit`
    monkeypatch.setattr(
        keras.Model,
        "compile",
        lambda self, **kw: compile_model(self, **{**kw, "run_eagerly": True}),
    )
    model = trainer.train(config, str(tmp_path / "t2i"), steps=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert model.text_encoder.trainable and model.tokenizer.vocabulary == words
    with open(tmp_path / "t2i" / "config.json") as f:
        assert json.load(f)["model"]["tokenizer"]["vocabulary"] == words
    reloaded = checkpoint.load_trained_model(str(tmp_path / "t2i"))
    assert reloaded.tokenizer.vocabulary == words  # saved with the model
    ids = reloaded.tokenize(["a gray cross"]).numpy()[0]
    assert list(ids[:3]) == [4 + words.index(w) for w in ("a", "gray", "cross")]

    model, _ = _fit("captioner_shapes", name)
    assert model.vocabulary == words and model.image_shape == (SIZE, SIZE, 3)
    model, _ = _fit("clip_shapes", name)
    assert model.tokenizer.vocabulary == words
    model, _ = _fit("caption_prior_shapes", name, f"vq_workdir={vq_workdir}")
    assert model.caption_vocabulary == words
