"""Reading diffusers checkpoints and loading their tensors into kzoo variables.

Shared by the converters of `kzoo.convert` (`unet.py`, `dit.py`, `vqmodel.py`):
the config and safetensors readers, the config-key check that names what is not
supported, and `WeightLoader`, which converts PyTorch layouts (NCHW conv kernels
`(out, in, kh, kw)` to Keras' `(kh, kw, in, out)`, linear `(out, in)` to
`(in, out)`, separate q/k/v projections to one `qkv`) and checks that every
checkpoint tensor and every kzoo weight is used exactly once.
"""

import json
import os

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"
# Config keys diffusers writes about the file itself, not about the network.
_METADATA_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def read_config(folder):
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
    except ValueError:
        raise ValueError(f"{CONFIG_FILE} is not valid JSON. Received: {path!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_FILE} must hold a JSON object. Received: {path!r}")
    return config


def read_weights(folder):
    """`{name: float32 array}` of the folder's safetensors file (NumPy API, no torch).

    float16 and bfloat16 files are widened to float32 (`ml_dtypes`, which Keras
    depends on, gives NumPy its bfloat16).
    """
    import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, for BF16 files)
    from safetensors.numpy import load_file

    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(path):
        other = [n for n in os.listdir(folder) if n.endswith((".bin", ".safetensors"))]
        hint = f" (found {other}: convert .bin files to safetensors first)" if other else ""
        raise FileNotFoundError(f"No {WEIGHTS_FILE} in the folder{hint}. Received: {folder!r}")
    try:
        tensors = load_file(path)
    except Exception as error:  # a corrupt file, or a dtype NumPy has no form of
        raise ValueError(
            f"{path} cannot be read with safetensors' NumPy API "
            f"({type(error).__name__}: {str(error)[:200]})."
        ) from None
    return {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}


def check_keys(config, supported, class_name):
    """ValueError naming the first config key, or value, `supported` does not allow."""
    for key, value in config.items():
        if key in _METADATA_KEYS:
            continue
        if key not in supported:
            raise ValueError(
                f"The {class_name} config key {key!r} is not supported by kzoo.convert. "
                f"Received: {key}={value!r}"
            )
        allowed = supported[key]
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"The {class_name} config key {key!r} must be one of {list(allowed)} for "
                f"kzoo.convert. Received: {key}={value!r}"
            )


def check_block_types(class_name, kind, types, supported, channels):
    """ValueError unless every entry of `types` is in `supported`, one per `channels`."""
    unknown = [t for t in types if t not in supported]
    if unknown:
        raise ValueError(
            f"The {class_name} block type {unknown[0]!r} is not supported by kzoo.convert "
            f"(supported: {sorted(supported)}). Received: {kind}={types}"
        )
    if len(types) != len(channels):
        raise ValueError(
            f"`{kind}` must have one entry per `block_out_channels` entry. "
            f"Received: {kind}={types}, block_out_channels={list(channels)}"
        )


def image_size_of(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return tuple(value)
    raise ValueError(
        "The image size must be a positive int or (height, width): set `sample_size` in "
        f"config.json or pass image_size=. Received: sample_size={value!r}"
    )


class WeightLoader:
    """Assigns checkpoint tensors to kzoo variables, converting layouts; tracks what is used."""

    def __init__(self, weights, class_name):
        self.weights = dict(weights)
        self.class_name = class_name
        self.assigned = set()

    def take(self, name, shape=None):
        if name not in self.weights:
            raise ValueError(
                f"The {self.class_name} checkpoint lacks the tensor {name!r} its config "
                f"implies. Received: {len(self.weights)} unused tensors, e.g. "
                f"{sorted(self.weights)[:3]}"
            )
        value = self.weights.pop(name)
        if shape is not None and (
            len(value.shape) != len(shape)
            or any(s is not None and s != v for s, v in zip(shape, value.shape, strict=True))
        ):
            raise ValueError(
                f"The tensor {name!r} has shape {value.shape}, the config implies {shape}."
            )
        return value

    def has(self, name):
        return name in self.weights

    def assign(self, variable, value):
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Cannot load a tensor of shape {value.shape} into {variable.path} of shape "
                f"{tuple(variable.shape)}: the config does not match the weights."
            )
        variable.assign(value)
        self.assigned.add(id(variable))

    def computed(self, variables):
        """Marks `variables` as computed by kzoo, not read from the checkpoint."""
        self.assigned.update(id(v) for v in variables)

    def conv(self, layer, prefix):
        # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out).
        self.assign(layer.kernel, self.take(f"{prefix}.weight").transpose(2, 3, 1, 0))
        self.assign(layer.bias, self.take(f"{prefix}.bias"))

    def dense(self, layer, prefix):
        self.assign(layer.kernel, self.take(f"{prefix}.weight").T)  # (out, in) -> (in, out)
        self.assign(layer.bias, self.take(f"{prefix}.bias"))

    def norm(self, layer, prefix):
        self.assign(layer.gamma, self.take(f"{prefix}.weight"))
        self.assign(layer.beta, self.take(f"{prefix}.bias"))

    def resblock(self, block, prefix):
        self.norm(block.norm1, f"{prefix}.norm1")
        self.conv(block.conv1, f"{prefix}.conv1")
        if block.embedding_proj is not None:  # autoencoder blocks have no time embedding
            self.dense(block.embedding_proj, f"{prefix}.time_emb_proj")
        self.norm(block.norm2, f"{prefix}.norm2")
        self.conv(block.conv2, f"{prefix}.conv2")
        if block.skip is not None:
            self.conv(block.skip, f"{prefix}.conv_shortcut")

    def attention(self, attention, prefix):
        self.norm(attention.norm, f"{prefix}.group_norm")
        # Older checkpoints (diffusers' deprecated AttentionBlock, e.g. google/ddpm-*)
        # name the projections query/key/value/proj_attn.
        names = ("to_q", "to_k", "to_v", "to_out.0")
        if not self.has(f"{prefix}.to_q.weight"):
            names = ("query", "key", "value", "proj_attn")
        self.qkv(attention.qkv, prefix, names[:3])
        self.dense(attention.out, f"{prefix}.{names[3]}")

    def qkv(self, layer, prefix, names):
        q, k, v = (self.take(f"{prefix}.{n}.weight").T for n in names)  # (C, C) each
        q_b, k_b, v_b = (self.take(f"{prefix}.{n}.bias") for n in names)
        # kzoo's qkv output is [q | k | v], each split into heads as diffusers splits them.
        self.assign(layer.kernel, np.concatenate([q, k, v], axis=1))
        self.assign(layer.bias, np.concatenate([q_b, k_b, v_b]))

    def finish(self, model):
        if self.weights:
            names = sorted(self.weights)
            raise ValueError(
                f"The {self.class_name} checkpoint has {len(names)} tensors the config does "
                f"not account for, e.g. {names[:3]}: the converter would drop them."
            )
        missing = [w.path for w in model.weights if id(w) not in self.assigned]
        if missing:
            raise ValueError(f"No checkpoint tensor for the kzoo weights {missing[:3]}.")
