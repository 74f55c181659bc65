"""Presets: a kzoo model as a directory of plain files, in keras-hub's layout.

```
<preset_dir>/
  config.json                     the model's Keras config (`serialize_keras_object`)
  model.weights.h5                its weights (`Model.save_weights`)
  metadata.json                   kzoo and Keras versions, class, parameter count
  assets/tokenizer/vocabulary.txt one token per line, line i = token id i (text models)
  assets/tokenizer/tokenizer.json sequence length, BOS/EOS flags, special tokens
  README.md                       the model card
```

keras-hub writes the same `config.json` / `model.weights.h5` / `metadata.json` /
`assets/` / `README.md` (https://keras.io/keras_hub/api/base_classes/backbone/,
`save_to_preset`). A kzoo model's config holds its whole tokenizer vocabulary, so
`from_preset` rebuilds the model from `config.json` alone; the tokenizer assets are
for clients without Python (a mobile app reads `vocabulary.txt`), and `from_preset`
checks they still match the config.

Every kzoo model mixes in `PresetMixin`, so `VQVAE.from_preset(dir)` and
`model.save_to_preset(dir)` work for each; `load_preset(dir)` returns whatever model
the preset holds. This module imports Keras only: `models` and `diffusion` both
import it.

Example:
```python
model.save_to_preset("presets/vqvae_shapes")
same = kzoo.models.VQVAE.from_preset("presets/vqvae_shapes")
```
"""

import json
import os
import shutil
import uuid

import keras

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
MODEL_CARD_FILE = "README.md"
TOKENIZER_ASSETS = os.path.join("assets", "tokenizer")
VOCABULARY_FILE = "vocabulary.txt"
TOKENIZER_FILE = "tokenizer.json"
PRESET_FORMAT = 1


def find_tokenizers(model):
    """The kzoo tokenizers inside `model` (layers with `get_vocabulary` and
    `sequence_length`), outermost first, each once."""
    found, seen = [], set()
    for layer in [model, *model._flatten_layers(include_self=False)]:
        if callable(getattr(layer, "get_vocabulary", None)) and hasattr(layer, "sequence_length"):
            if id(layer) not in seen:
                seen.add(id(layer))
                found.append(layer)
    return found


def tokenizer_files(tokenizer):
    """`{filename: text}` of a tokenizer's client assets: `vocabulary.txt`, `tokenizer.json`."""
    vocabulary = [str(token) for token in tokenizer.get_vocabulary()]
    description = {
        "vocabulary_file": VOCABULARY_FILE,
        "vocabulary_size": len(vocabulary),
        "sequence_length": int(tokenizer.sequence_length),
        "add_bos": bool(getattr(tokenizer, "add_bos", False)),
        "add_eos": bool(getattr(tokenizer, "add_eos", False)),
        "special_tokens": {token: vocabulary.index(token) for token in vocabulary[:4]},
        "standardize": "lowercase, ASCII punctuation replaced by spaces, split on whitespace",
        "padding": "right, with token id 0 up to sequence_length; longer inputs truncated",
    }
    return {
        VOCABULARY_FILE: "\n".join(vocabulary) + "\n",
        TOKENIZER_FILE: json.dumps(description, indent=2) + "\n",
    }


def _metadata(model):
    import kzoo

    return {
        "preset_format": PRESET_FORMAT,
        "kzoo_version": kzoo.__version__,
        "keras_version": keras.__version__,
        "class_name": type(model).__name__,
        "registered_name": keras.saving.get_registered_name(type(model)),
        "parameter_count": int(model.count_params()),
    }


def save_to_preset(model, preset_dir, model_card=None):
    """Writes `model` as a preset directory (see the module docstring for the layout).

    The directory is written under a temporary name beside it and renamed into place,
    so a reader never sees half a preset.

    Args:
        model: a built kzoo model.
        preset_dir: the directory to create; must not exist yet.
        model_card: the text of `README.md`; default a short card naming the class,
            its parameter count and how to load it.

    Returns:
        `preset_dir`.

    Raises:
        ValueError: `preset_dir` exists, or the model is not built.

    Example:
    ```python
    save_to_preset(model, "presets/vqvae_shapes")
    ```
    """
    preset_dir = os.fspath(preset_dir)
    if os.path.exists(preset_dir):
        raise ValueError(
            "`preset_dir` must not exist yet (a preset is never overwritten). "
            f"Received: preset_dir={preset_dir!r}"
        )
    if not model.built:
        raise ValueError(
            "Build the model (call it on a batch, or load it) before saving a preset. "
            f"Received: model={model.name!r} with built=False"
        )
    parent = os.path.dirname(os.path.abspath(preset_dir))
    os.makedirs(parent, exist_ok=True)
    temp = os.path.join(parent, f".tmp-{os.path.basename(preset_dir)}-{uuid.uuid4().hex[:8]}")
    os.mkdir(temp)
    try:
        config = keras.saving.serialize_keras_object(model)
        _write_text(temp, CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        model.save_weights(os.path.join(temp, WEIGHTS_FILE))
        _write_text(temp, METADATA_FILE, json.dumps(_metadata(model), indent=2) + "\n")
        tokenizers = find_tokenizers(model)
        for index, tokenizer in enumerate(tokenizers):
            folder = TOKENIZER_ASSETS if index == 0 else f"{TOKENIZER_ASSETS}_{index}"
            for filename, text in tokenizer_files(tokenizer).items():
                _write_text(temp, os.path.join(folder, filename), text)
        if model_card is None:
            model_card = default_model_card(model)
        _write_text(temp, MODEL_CARD_FILE, model_card)
        os.replace(temp, preset_dir)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return preset_dir


def _write_text(directory, filename, text):
    path = os.path.join(directory, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def default_model_card(model):
    """A minimal model card: the class, its summary line, size and how to load it."""
    doc = (type(model).__doc__ or "").strip().splitlines()
    summary = doc[0] if doc else type(model).__name__
    name = type(model).__name__
    return (
        f"# {model.name}\n\n"
        f"A kzoo `{name}`: {summary}\n\n"
        f"Parameters: {model.count_params():,}.\n\n"
        "## Load\n\n"
        "```python\n"
        "import kzoo\n"
        f'model = kzoo.presets.load_preset("{model.name}")\n'
        "```\n"
    )


def load_preset(preset_dir, cls=None):
    """Loads the model a preset directory holds.

    Args:
        preset_dir: a directory written by `save_to_preset`.
        cls: optional class the model must be an instance of.

    Returns:
        The model, with its weights.

    Raises:
        ValueError: not a preset directory, a model of another class than `cls`,
            or tokenizer assets that differ from the model's tokenizer.

    Example:
    ```python
    model = load_preset("presets/vqvae_shapes")
    ```
    """
    import kzoo  # noqa: F401  (registers every kzoo class before deserializing)

    preset_dir = os.fspath(preset_dir)
    missing = [
        f for f in (CONFIG_FILE, WEIGHTS_FILE) if not os.path.isfile(os.path.join(preset_dir, f))
    ]
    if missing:
        raise ValueError(
            f"Not a kzoo preset directory (missing {', '.join(missing)}). "
            f"Received: preset_dir={preset_dir!r}"
        )
    with open(os.path.join(preset_dir, CONFIG_FILE), encoding="utf-8") as f:
        config = json.load(f)
    if cls is not None:
        registered = config.get("registered_name") or config.get("class_name")
        expected = keras.saving.get_registered_name(cls)
        if registered != expected and not _is_subclass_name(registered, cls):
            raise ValueError(
                f"The preset holds a {registered}, not a {expected}; load it with "
                f"`kzoo.presets.load_preset` or that class. Received: preset_dir={preset_dir!r}"
            )
    model = keras.saving.deserialize_keras_object(config)
    if cls is not None and not isinstance(model, cls):
        raise ValueError(
            f"The preset holds a {type(model).__name__}, not a {cls.__name__}. "
            f"Received: preset_dir={preset_dir!r}"
        )
    model.load_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    _check_tokenizer_assets(model, preset_dir)
    return model


def _is_subclass_name(registered, cls):
    registered_cls = keras.saving.get_registered_object(registered)
    return isinstance(registered_cls, type) and issubclass(registered_cls, cls)


def _check_tokenizer_assets(model, preset_dir):
    for index, tokenizer in enumerate(find_tokenizers(model)):
        folder = TOKENIZER_ASSETS if index == 0 else f"{TOKENIZER_ASSETS}_{index}"
        path = os.path.join(preset_dir, folder, VOCABULARY_FILE)
        if not os.path.isfile(path):
            continue  # assets are for clients; the config holds the vocabulary
        with open(path, encoding="utf-8") as f:
            assets = f.read().splitlines()
        if assets != [str(t) for t in tokenizer.get_vocabulary()]:
            raise ValueError(
                f"The preset's {os.path.join(folder, VOCABULARY_FILE)} differs from the "
                "vocabulary in its config.json (edited by hand?). "
                f"Received: preset_dir={preset_dir!r}"
            )


class PresetMixin:
    """`save_to_preset(dir)` and `from_preset(dir)` for a kzoo model (keras-hub style)."""

    def save_to_preset(self, preset_dir, model_card=None):
        """Writes this model as a preset directory; see `kzoo.presets.save_to_preset`.

        Example:
        ```python
        model.save_to_preset("presets/my_model")
        ```
        """
        return save_to_preset(self, preset_dir, model_card=model_card)

    @classmethod
    def from_preset(cls, preset_dir):
        """Loads a preset written by `save_to_preset`; it must hold this class.

        Example:
        ```python
        model = kzoo.models.VQVAE.from_preset("presets/vqvae_shapes")
        ```
        """
        return load_preset(preset_dir, cls=cls)
