"""Training recipes: one module per recipe, each exposing `get_config(**overrides)`.

A recipe is data (big_vision style): a nested dict naming the model class and
its arguments, the dataset, the optimizer and the training schedule. `kzoo train
RECIPE --set key=value` overrides any leaf, with dotted keys for nested ones
(`--set model.codebook_size=256`); values are parsed to the type of the default.

Own data: `--set dataset=folder:PATH` or `--set dataset=captions:FILE` (see
`kzoo.data.folders`) trains any recipe on your images, and `--set image_size=N`
sets the square image size the recipe's model takes (`image_size` is not a config
key: it rewrites the model's image shape, `set_image_size`). `get_recipe` then fits
the config to the data (`adapt_to_dataset`): class-conditional recipes take their
`num_classes` from the class subfolders (the names saved as `class_names`), and
caption recipes build their vocabulary from the training captions.
"""

import ast
import copy
import importlib
import pkgutil

__all__ = ["adapt_to_dataset", "apply_overrides", "get_recipe", "list_recipes", "set_image_size"]

# Where a model config keeps its square image shape (H, W, C), as key paths.
IMAGE_SHAPE_KEYS = (
    ("model", "image_shape"),
    ("model", "denoiser", "image_shape"),
    ("model", "denoiser", "input_shape"),
    ("model", "image_encoder", "image_shape"),
)
# Model config keys that name the caption vocabulary ("kzoo_shapes" by default).
VOCABULARY_KEYS = ("vocabulary", "caption_vocabulary")


def list_recipes():
    """`{name: one-line summary}` of every recipe module, sorted by name."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    summaries = {}
    for name in names:
        doc = (importlib.import_module(f"recipes.{name}").__doc__ or "").strip()
        summaries[name] = doc.splitlines()[0] if doc else ""
    return summaries


def get_recipe(name, overrides=()):
    """The resolved config of recipe `name` with `key=value` overrides applied."""
    known = list_recipes()
    if name not in known:
        raise ValueError(
            f"Unknown recipe. Expected one of {sorted(known)}. Received: recipe={name!r}"
        )
    config = importlib.import_module(f"recipes.{name}").get_config()
    config["recipe"] = name
    return adapt_to_dataset(apply_overrides(config, overrides))


def apply_overrides(config, overrides):
    """Apply `key=value` strings to a nested config dict (a new dict is returned)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value. Received: --set {item!r}")
        if key == "image_size" and "image_size" not in config:
            set_image_size(config, _parse(key, text, 0))
            continue
        parent, leaf = _locate(config, key)
        parent[leaf] = _parse(key, text, parent[leaf])
    return config


def set_image_size(config, image_size):
    """Make the recipe's model take `image_size` x `image_size` images (in place).

    Rewrites the height and width of every `IMAGE_SHAPE_KEYS` entry the config has;
    a recipe whose image size lives elsewhere (a latent or code grid) defines
    `apply_image_size(config, image_size)` in its module, which is used instead.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(
            f"`image_size` must be an integer >= 8. Received: image_size={image_size!r}"
        )
    recipe = config.get("recipe")
    hook = None
    if recipe:
        hook = getattr(importlib.import_module(f"recipes.{recipe}"), "apply_image_size", None)
    if hook is not None:
        hook(config, image_size)
        return config
    found = False
    for path in IMAGE_SHAPE_KEYS:
        parent = config
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), list | tuple):
            parent[path[-1]] = (image_size, image_size, *tuple(parent[path[-1]])[2:])
            found = True
    if not found:
        raise ValueError(
            f"Recipe {recipe!r} has no image shape for `image_size` to set. "
            f"Received: image_size={image_size!r}"
        )
    return config


def adapt_to_dataset(config):
    """Fit a resolved config to its `dataset` when it is own data (`folder:`/`captions:`).

    - A recipe trained on labels (`outputs` holds "label", or a code prior's
      `label="label"`) needs a folder with at least 2 class subfolders; every
      non-None `num_classes` of the model becomes their number and the names, in
      label order, are saved as `class_names`.
    - A recipe trained on captions (`outputs` holds "caption", or `label="caption"`)
      needs a captions file; every `vocabulary`/`caption_vocabulary` of the model
      that is "kzoo_shapes" becomes the words of the training captions
      (`kzoo.data.tokenizer.build_vocabulary`), so the model saves them.

    Other datasets are returned unchanged. Raises ValueError for data that cannot
    train the recipe, naming `dataset`.
    """
    name = config.get("dataset")
    from kzoo.data import folders

    if not folders.is_own_data(name):
        return config
    outputs = tuple(config.get("outputs", ("image",)))
    needs = {key for key in ("label", "caption") if key in outputs or config.get("label") == key}
    data = folders.index(name)
    recipe = config.get("recipe", "this recipe")
    if "label" in needs:
        if data.labels is None:
            raise ValueError(
                f"Recipe {recipe!r} is class-conditional: `dataset` must be a folder whose "
                f"images lie in class subfolders (folder:PATH with PATH/CLASS/IMAGE). "
                f"Received: dataset={name!r}"
            )
        if len(data.class_names) < 2:
            raise ValueError(
                f"Recipe {recipe!r} is class-conditional: `dataset` needs at least 2 class "
                f"subfolders; it has {len(data.class_names)} ({data.class_names}). "
                f"Received: dataset={name!r}"
            )
        config = copy.deepcopy(config)
        _replace(config["model"], "num_classes", lambda v: v is not None, len(data.class_names))
        config["class_names"] = list(data.class_names)
    if "caption" in needs:
        if data.captions is None:
            raise ValueError(
                f"Recipe {recipe!r} trains on captions: `dataset` must be a captions file "
                f"(captions:FILE.jsonl or .csv of file, caption). Received: dataset={name!r}"
            )
        from kzoo.data.tokenizer import build_vocabulary

        config = copy.deepcopy(config)
        # The train split's words (with `holdout`, held-out captions stay unseen).
        vocabulary = build_vocabulary(data.split("train").captions)
        if not vocabulary:
            raise ValueError(f"The captions of `dataset` have no words. Received: dataset={name!r}")
        for key in VOCABULARY_KEYS:
            _replace(config["model"], key, lambda v: v == "kzoo_shapes", vocabulary)
    return config


def _replace(node, key, condition, value):
    """Set `key` to `value` wherever `condition(old)` holds, at any depth of `node`."""
    for name, item in node.items():
        if name == key and condition(item):
            node[name] = copy.deepcopy(value)
        elif isinstance(item, dict):
            _replace(item, key, condition, value)


def _locate(config, key):
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            scope = ".".join(parts[:depth])
            keys = sorted(_leaf_keys(node, scope)) if isinstance(node, dict) else []
            raise ValueError(f"Unknown config key. Expected one of {keys}. Received: {key}")
        if depth == len(parts) - 1:
            return node, part
        node = node[part]
    raise AssertionError("unreachable")


def _leaf_keys(node, prefix):
    for name, value in node.items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            yield from _leaf_keys(value, path)
        else:
            yield path


def _parse(key, text, default):
    """Parse `text` to the type of `default` (bool, int, float, str, tuple, None-able)."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    expected = type(default).__name__
    try:
        if isinstance(default, bool):
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list | tuple):
            value = ast.literal_eval(text)
            value = tuple(value) if isinstance(value, list | tuple) else (value,)
            if default and not all(isinstance(v, type(default[0])) for v in value):
                raise ValueError
            return value
        if isinstance(default, dict):
            raise ValueError
        if default is None:
            # No type to follow: take a Python literal, else the plain string.
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    except (ValueError, SyntaxError):
        raise ValueError(
            f"Config key {key} expects a value of type {expected} (default {default!r}). "
            f"Received: {key}={text!r}"
        ) from None
