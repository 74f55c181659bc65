"""Training recipes: one module per recipe, each exposing `get_config(**overrides)`.

A recipe is data (big_vision style): a nested dict naming the model class and
its arguments, the dataset, the optimizer and the training schedule. `kzoo train
RECIPE --set key=value` overrides any leaf, with dotted keys for nested ones
(`--set model.codebook_size=256`); values are parsed to the type of the default.
"""

import ast
import copy
import importlib
import pkgutil

__all__ = ["apply_overrides", "get_recipe", "list_recipes"]


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
    return apply_overrides(config, overrides)


def apply_overrides(config, overrides):
    """Apply `key=value` strings to a nested config dict (a new dict is returned)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value. Received: --set {item!r}")
        parent, leaf = _locate(config, key)
        parent[leaf] = _parse(key, text, parent[leaf])
    return config


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
