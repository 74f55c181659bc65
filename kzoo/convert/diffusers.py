"""diffusers checkpoints to kzoo models: read `config.json` + safetensors, build, load.

The weights are read with the `safetensors` package's NumPy API, so converting
needs no torch. PyTorch and Keras differ in layout, handled here:
- tensors: NCHW in PyTorch, NHWC in Keras, so conv kernels `(out, in, kh, kw)`
  become `(kh, kw, in, out)` and linear weights `(out, in)` become `(in, out)`;
- stride-2 convs: PyTorch's `padding=1` pads one row/column on each side, TF's
  "same" pads one after only; `downsample_padding` picks the kzoo padding
  (`kzoo.layers.Downsample`);
- attention: diffusers' `to_q`, `to_k`, `to_v` (or the older `query`, `key`,
  `value`) become kzoo's one `qkv` projection, heads in the same order;
- the timestep embedding: `flip_sin_to_cos` and `freq_shift` carry over
  (`kzoo.layers.SinusoidalTimestepEmbedding` computes diffusers' formula);
- GroupNorm epsilon: diffusers' `norm_eps` (1e-5 by default; kzoo's default 1e-6).

A config key or value the converter cannot express raises a ValueError naming it,
rather than building a model that computes something else.

Supported: `UNet2DModel` with `DownBlock2D` / `AttnDownBlock2D` / `UpBlock2D` /
`AttnUpBlock2D` (the DDPM layouts of Ho et al. 2020,
https://arxiv.org/abs/2006.11239, as ported to diffusers as `google/ddpm-*`), and
`DiTTransformer2DModel` (Peebles & Xie 2022, https://arxiv.org/abs/2212.09748, as
ported to diffusers as `facebook/DiT-XL-2-*`: every block with its own timestep
and class embedders, `freq_shift=1`, MLP LayerNorm eps `norm_eps`), and `VQModel`
(the taming-transformers VQGAN autoencoder, Esser et al. 2021,
https://arxiv.org/abs/2012.09841, as diffusers holds it) to a `kzoo.models.VQVAE`.
"""

import json
import os

import numpy as np

from kzoo.models.dit import DiT
from kzoo.models.unet import UNet
from kzoo.models.vqvae import VQVAE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"
# Subfolders of a diffusers pipeline folder that hold the denoiser, in search order.
MODEL_SUBFOLDERS = ("unet", "transformer")
# Config keys diffusers writes about the file itself, not about the network.
_METADATA_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")

_UNET_DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UNET_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# UNet2DModel config keys with the values kzoo's UNet can express (None: any value
# the builder below checks itself).
_UNET_KEYS = {
    "sample_size": None,
    "in_channels": None,
    "out_channels": None,
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": None,
    "freq_shift": None,
    "flip_sin_to_cos": None,
    "down_block_types": None,
    "mid_block_type": ("UNetMidBlock2D",),
    "up_block_types": None,
    "block_out_channels": None,
    "layers_per_block": None,
    "mid_block_scale_factor": (1, 1.0),
    "downsample_padding": (0, 1),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "dropout": None,
    "act_fn": ("silu", "swish"),
    "attention_head_dim": None,
    "norm_num_groups": None,
    "attn_norm_num_groups": None,
    "norm_eps": None,
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "add_attention": (True, False),
    "class_embed_type": (None,),
    "num_class_embeds": None,
    # Only read by time_embedding_type="learned", which is refused above.
    "num_train_timesteps": None,
}


def from_diffusers(folder, image_size=None):
    """The kzoo model of a diffusers checkpoint folder, with its weights.

    Args:
        folder: a folder with `config.json` and `diffusion_pytorch_model.safetensors`
            (what `save_pretrained` writes), or a pipeline folder with a `unet/`
            subfolder holding them.
        image_size: `(height, width)` or an int; default the config's `sample_size`.

    Returns:
        For `UNet2DModel`: a `kzoo.models.UNet` called as `model([x, t])`, or
        `model([x, t, labels])` with `num_class_embeds`, on NHWC images. Its
        `num_classes` is `num_class_embeds`; the extra label id `num_classes` (kzoo's
        null class for classifier-free guidance) starts as a zero embedding, which
        is the unconditional network.

    Raises:
        FileNotFoundError: the folder or its files are missing.
        ValueError: the model class, a config key or value, or the weights are
            not what the converter supports.

    Example:
    ```python
    unet = kzoo.convert.from_diffusers("ddpm-cifar10-32/unet")
    eps = unet([x_nhwc, timesteps])  # what diffusers' unet(x_nchw, t).sample gives, in NHWC
    ```
    """
    folder = model_folder(folder)
    config = read_config(folder)
    class_name = config.get("_class_name")
    builder = _BUILDERS.get(class_name)
    if builder is None:
        raise ValueError(
            f"kzoo.convert supports the diffusers classes {sorted(_BUILDERS)}. "
            f"Received: _class_name={class_name!r} in {os.path.join(folder, CONFIG_FILE)}"
        )
    weights = read_weights(folder)
    return builder(config, weights, image_size)


def model_folder(folder):
    """`folder` itself when it holds `config.json`, else its `unet/` (pipeline) subfolder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The checkpoint folder does not exist. Received: {folder!r}")
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return folder
    for sub in MODEL_SUBFOLDERS:
        if os.path.isfile(os.path.join(folder, sub, CONFIG_FILE)):
            return os.path.join(folder, sub)
    raise FileNotFoundError(
        f"The folder has no {CONFIG_FILE} (nor {', '.join(MODEL_SUBFOLDERS)}/{CONFIG_FILE}): "
        f"not a diffusers checkpoint. Received: folder={folder!r}"
    )


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


# ---------------------------------------------------------------- UNet2DModel


def unet_kwargs(config, image_size=None):
    """`kzoo.models.UNet` arguments equivalent to a diffusers `UNet2DModel` config."""
    check_keys(config, _UNET_KEYS, "UNet2DModel")
    get = config.get
    down_types, up_types = list(get("down_block_types", ())), list(get("up_block_types", ()))
    channels = tuple(get("block_out_channels", ()))
    for kind, types, known in (
        ("down_block_types", down_types, _UNET_DOWN_BLOCKS),
        ("up_block_types", up_types, _UNET_UP_BLOCKS),
    ):
        unknown = [t for t in types if t not in known]
        if unknown:
            raise ValueError(
                f"The UNet2DModel block type {unknown[0]!r} is not supported by kzoo.convert "
                f"(supported: {sorted(known)}). Received: {kind}={types}"
            )
        if len(types) != len(channels):
            raise ValueError(
                f"`{kind}` must have one entry per `block_out_channels` entry. "
                f"Received: {kind}={types}, block_out_channels={list(channels)}"
            )
    down_attention = [_UNET_DOWN_BLOCKS[t] for t in down_types]
    up_attention = [_UNET_UP_BLOCKS[t] for t in reversed(up_types)]
    if down_attention != up_attention:
        raise ValueError(
            "kzoo's UNet runs attention at the same levels on the way down and up: "
            "`up_block_types` must mirror `down_block_types`. "
            f"Received: down_block_types={down_types}, up_block_types={up_types}"
        )
    in_channels, out_channels = get("in_channels", 3), get("out_channels", 3)
    if in_channels != out_channels:
        raise ValueError(
            "kzoo's UNet predicts a tensor shaped like its input: `in_channels` must equal "
            f"`out_channels`. Received: in_channels={in_channels}, out_channels={out_channels}"
        )
    height, width = _image_size(image_size if image_size is not None else get("sample_size"))
    norm_groups = get("norm_num_groups", 32)
    if norm_groups is None:
        raise ValueError(
            "The UNet2DModel config key 'norm_num_groups' must be an integer for "
            "kzoo.convert. Received: norm_num_groups=None"
        )
    shift = get("resnet_time_scale_shift", "default")
    add_attention = get("add_attention", True)
    attn_groups = get("attn_norm_num_groups")
    # diffusers' mid-block attention has no GroupNorm at all with scale-shift and no
    # attn_norm_num_groups; kzoo's attention always normalises with norm_groups.
    expected_attn_groups = norm_groups if shift == "default" else None
    if add_attention and attn_groups not in (None, norm_groups):
        raise ValueError(
            "The UNet2DModel config key 'attn_norm_num_groups' must be None or equal "
            f"to norm_num_groups={norm_groups}. Received: attn_norm_num_groups={attn_groups!r}"
        )
    if add_attention and (attn_groups or expected_attn_groups) is None:
        raise ValueError(
            "The UNet2DModel config key 'resnet_time_scale_shift' = 'scale_shift' with "
            "attn_norm_num_groups=None gives a mid-block attention without GroupNorm, "
            "which kzoo's UNet does not have. Received: resnet_time_scale_shift='scale_shift'"
        )
    level_sizes = [height // 2**level for level in range(len(channels))]
    return {
        "image_shape": (height, width, in_channels),
        "channels": channels,
        "num_res_blocks": get("layers_per_block", 2),
        "attention_resolutions": tuple(
            size for size, attended in zip(level_sizes, down_attention, strict=True) if attended
        ),
        "norm_groups": norm_groups,
        "time_embedding_dim": get("time_embedding_dim") or 4 * channels[0],
        "num_classes": get("num_class_embeds"),
        "dropout": get("dropout", 0.0),
        "mid_attention": add_attention,
        "scale_shift_norm": shift == "scale_shift",
        "norm_epsilon": get("norm_eps", 1e-5),
        # None in diffusers: one head over all channels, kzoo's num_heads=1.
        "attention_head_dim": get("attention_head_dim", 8),
        "downsample_padding": "symmetric" if get("downsample_padding", 1) == 1 else "same",
        "flip_sin_to_cos": bool(get("flip_sin_to_cos", True)),
        "freq_shift": get("freq_shift", 0),
    }


def _image_size(value):
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


def unet_from_diffusers(config, weights, image_size=None):
    """A `kzoo.models.UNet` built from a `UNet2DModel` config, with `weights` loaded."""
    kwargs = unet_kwargs(config, image_size)
    model = UNet(**kwargs)
    loader = _WeightLoader(weights, "UNet2DModel")
    layer = model.get_layer
    loader.conv(layer("conv_in"), "conv_in")
    loader.dense(layer("time_embedding_1"), "time_embedding.linear_1")
    loader.dense(layer("time_embedding_2"), "time_embedding.linear_2")
    if kwargs["num_classes"] is not None:
        table = loader.take("class_embedding.weight", (kwargs["num_classes"], None))
        null_row = np.zeros((1, table.shape[1]), np.float32)
        loader.assign(layer("class_embedding").embeddings, np.concatenate([table, null_row]))
    levels = len(kwargs["channels"])
    attended = [
        kwargs["image_shape"][0] // 2**level in kwargs["attention_resolutions"]
        for level in range(levels)
    ]
    for level in range(levels):
        prefix = f"down_blocks.{level}"
        for block in range(kwargs["num_res_blocks"]):
            loader.resblock(layer(f"down{level}_res{block}"), f"{prefix}.resnets.{block}")
            if attended[level]:
                loader.attention(layer(f"down{level}_attn{block}"), f"{prefix}.attentions.{block}")
        if level < levels - 1:
            loader.conv(layer(f"down{level}_downsample").conv, f"{prefix}.downsamplers.0.conv")
    loader.resblock(layer("mid_res0"), "mid_block.resnets.0")
    if kwargs["mid_attention"]:
        loader.attention(layer("mid_attn"), "mid_block.attentions.0")
    loader.resblock(layer("mid_res1"), "mid_block.resnets.1")
    for index in range(levels):
        level, prefix = levels - 1 - index, f"up_blocks.{index}"
        for block in range(kwargs["num_res_blocks"] + 1):
            loader.resblock(layer(f"up{level}_res{block}"), f"{prefix}.resnets.{block}")
            if attended[level]:
                loader.attention(layer(f"up{level}_attn{block}"), f"{prefix}.attentions.{block}")
        if level > 0:
            loader.conv(layer(f"up{level}_upsample").conv, f"{prefix}.upsamplers.0.conv")
    loader.norm(layer("norm_out"), "conv_norm_out")
    loader.conv(layer("conv_out"), "conv_out")
    loader.finish(model)
    return model


# ---------------------------------------------------------- DiTTransformer2DModel

_DIT_KEYS = {
    "num_attention_heads": None,
    "attention_head_dim": None,
    "in_channels": None,
    "out_channels": None,
    "num_layers": None,
    "dropout": (0, 0.0),
    # Read by diffusers' 2-D transformers without patches only; DiT has no GroupNorm.
    "norm_num_groups": None,
    "attention_bias": (True,),
    "sample_size": None,
    "patch_size": None,
    "activation_fn": ("gelu-approximate",),
    "num_embeds_ada_norm": None,
    # Precision of the attention scores: kzoo's softmax runs in float32 anyway.
    "upcast_attention": (False, True),
    "norm_type": ("ada_norm_zero",),
    "norm_elementwise_affine": (False,),
    "norm_eps": None,
}


def dit_kwargs(config, image_size=None):
    """`kzoo.models.DiT` arguments equivalent to a diffusers `DiTTransformer2DModel` config."""
    check_keys(config, _DIT_KEYS, "DiTTransformer2DModel")
    get = config.get
    in_channels = get("in_channels", 4)
    out_channels = get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            "kzoo's DiT predicts `in_channels` channels, or twice that with the variance: "
            f"`out_channels` must be {in_channels} or {2 * in_channels}. "
            f"Received: out_channels={out_channels}"
        )
    num_classes = get("num_embeds_ada_norm", 1000)
    if num_classes is None:
        raise ValueError(
            "The DiTTransformer2DModel config key 'num_embeds_ada_norm' must be an integer "
            "(the class count). Received: num_embeds_ada_norm=None"
        )
    height, width = _image_size(image_size if image_size is not None else get("sample_size", 32))
    heads = get("num_attention_heads", 16)
    return {
        "input_shape": (height, width, in_channels),
        "patch_size": get("patch_size", 2),
        "hidden_size": heads * get("attention_head_dim", 72),
        "depth": get("num_layers", 28),
        "num_heads": heads,
        "mlp_ratio": 4.0,
        "num_classes": num_classes,
        "learn_sigma": out_channels == 2 * in_channels,
        "freq_shift": 1,
        "mlp_norm_epsilon": get("norm_eps", 1e-5),
        "per_block_conditioning": True,
    }


def dit_from_diffusers(config, weights, image_size=None):
    """A `kzoo.models.DiT` built from a `DiTTransformer2DModel` config, with `weights` loaded."""
    kwargs = dit_kwargs(config, image_size)
    model = DiT(**kwargs)
    loader = _WeightLoader(weights, "DiTTransformer2DModel")
    layer = model.get_layer
    loader.conv(layer("patch_embedding").proj, "pos_embed.proj")
    # The fixed sin-cos positions are not in the file (a non-persistent buffer in
    # diffusers): kzoo computes the same table (MAE's, at interpolation scale 1).
    loader.computed(layer("position_embedding").weights)
    rows = (kwargs["num_classes"] + 1, kwargs["hidden_size"])  # the null row is in the table
    for index in range(kwargs["depth"]):
        prefix, suffix = f"transformer_blocks.{index}", f"_block{index}" if index else ""
        loader.dense(
            layer("time_embedding_1" + suffix), f"{prefix}.norm1.emb.timestep_embedder.linear_1"
        )
        loader.dense(
            layer("time_embedding_2" + suffix), f"{prefix}.norm1.emb.timestep_embedder.linear_2"
        )
        loader.assign(
            layer("class_embedding" + suffix).embeddings,
            loader.take(f"{prefix}.norm1.emb.class_embedder.embedding_table.weight", rows),
        )
        block = layer(f"block{index}")
        loader.dense(block.modulation, f"{prefix}.norm1.linear")
        loader.qkv(block.qkv, f"{prefix}.attn1", ("to_q", "to_k", "to_v"))
        loader.dense(block.attn_out, f"{prefix}.attn1.to_out.0")
        loader.dense(block.mlp_in, f"{prefix}.ff.net.0.proj")
        loader.dense(block.mlp_out, f"{prefix}.ff.net.2")
    final = layer("final_layer")
    loader.dense(final.modulation, "proj_out_1")
    loader.dense(final.linear, "proj_out_2")
    loader.finish(model)
    return model


# ------------------------------------------------------------------- VQModel

_VQ_KEYS = {
    "in_channels": None,
    "out_channels": None,
    "down_block_types": None,
    "up_block_types": None,
    "block_out_channels": None,
    "layers_per_block": None,
    "act_fn": ("silu", "swish"),
    "latent_channels": None,
    "sample_size": None,
    "num_vq_embeddings": None,
    "norm_num_groups": None,
    "vq_embed_dim": None,
    # The latent multiplier of diffusion pipelines, not part of the autoencoder:
    # pass it to DiffusionModel(latent_scale=...) for latent diffusion.
    "scaling_factor": None,
    "norm_type": ("group",),
    "mid_block_add_attention": (True, False),
    # How `decode` is called (indices or latents), and the decode precision.
    "lookup_from_codebook": (True, False),
    "force_upcast": (True, False),
}


def vqvae_kwargs(config, image_size=None):
    """`kzoo.models.VQVAE` arguments equivalent to a diffusers `VQModel` config."""
    check_keys(config, _VQ_KEYS, "VQModel")
    get = config.get
    channels = tuple(get("block_out_channels", (64,)))
    for kind, expected in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        types = list(get(kind, (expected,)))
        unknown = [t for t in types if t != expected]
        if unknown:
            raise ValueError(
                f"The VQModel block type {unknown[0]!r} is not supported by kzoo.convert "
                f"(supported: {expected!r}). Received: {kind}={types}"
            )
        if len(types) != len(channels):
            raise ValueError(
                f"`{kind}` must have one entry per `block_out_channels` entry. "
                f"Received: {kind}={types}, block_out_channels={list(channels)}"
            )
    in_channels, out_channels = get("in_channels", 3), get("out_channels", 3)
    if in_channels != out_channels:
        raise ValueError(
            "kzoo's VQVAE reconstructs its input: `in_channels` must equal `out_channels`. "
            f"Received: in_channels={in_channels}, out_channels={out_channels}"
        )
    latent_channels = get("latent_channels", 3)
    vq_embed_dim = get("vq_embed_dim") or latent_channels
    if vq_embed_dim != latent_channels:
        raise ValueError(
            "kzoo's VQVAE quantizes `latent_channels`-wide vectors: `vq_embed_dim` must be "
            f"None or {latent_channels}. Received: vq_embed_dim={vq_embed_dim}"
        )
    height, width = _image_size(image_size if image_size is not None else get("sample_size", 32))
    return {
        "image_shape": (height, width, in_channels),
        "codebook_size": get("num_vq_embeddings", 256),
        "embedding_dim": latent_channels,
        "channels": channels,
        "num_res_blocks": get("layers_per_block", 1),
        "norm_groups": get("norm_num_groups", 32),
        # diffusers' VectorQuantizer(beta=0.25, legacy=True): the same two loss terms.
        "commitment_cost": 0.25,
        "attention": get("mid_block_add_attention", True),
    }


def vqvae_from_diffusers(config, weights, image_size=None):
    """A `kzoo.models.VQVAE` built from a `VQModel` config, with `weights` loaded."""
    kwargs = vqvae_kwargs(config, image_size)
    model = VQVAE(**kwargs)
    loader = _WeightLoader(weights, "VQModel")
    levels = len(kwargs["channels"])
    encoder, decoder = model.encoder.get_layer, model.decoder.get_layer

    def middle(get, prefix):
        loader.resblock(get("mid_res0"), f"{prefix}.mid_block.resnets.0")
        if kwargs["attention"]:
            loader.attention(get("mid_attn"), f"{prefix}.mid_block.attentions.0")
        loader.resblock(get("mid_res1"), f"{prefix}.mid_block.resnets.1")

    loader.conv(encoder("conv_in"), "encoder.conv_in")
    for level in range(levels):
        prefix = f"encoder.down_blocks.{level}"
        for block in range(kwargs["num_res_blocks"]):
            loader.resblock(encoder(f"down{level}_res{block}"), f"{prefix}.resnets.{block}")
        if level < levels - 1:
            loader.conv(encoder(f"down{level}_downsample").conv, f"{prefix}.downsamplers.0.conv")
    middle(encoder, "encoder")
    loader.norm(encoder("norm_out"), "encoder.conv_norm_out")
    loader.conv(encoder("conv_out"), "encoder.conv_out")
    loader.conv(encoder("quant_conv"), "quant_conv")
    loader.assign(
        model.quantizer.codebook,
        loader.take("quantize.embedding.weight", (kwargs["codebook_size"], None)),
    )
    loader.conv(decoder("post_quant_conv"), "post_quant_conv")
    loader.conv(decoder("conv_in"), "decoder.conv_in")
    middle(decoder, "decoder")
    for index in range(levels):
        level, prefix = levels - 1 - index, f"decoder.up_blocks.{index}"
        for block in range(kwargs["num_res_blocks"] + 1):
            loader.resblock(decoder(f"up{level}_res{block}"), f"{prefix}.resnets.{block}")
        if level > 0:
            loader.conv(decoder(f"up{level}_upsample").conv, f"{prefix}.upsamplers.0.conv")
    loader.norm(decoder("norm_out"), "decoder.conv_norm_out")
    loader.conv(decoder("conv_out"), "decoder.conv_out")
    loader.finish(model)
    return model


class _WeightLoader:
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


_BUILDERS = {
    "UNet2DModel": unet_from_diffusers,
    "DiTTransformer2DModel": dit_from_diffusers,
    "VQModel": vqvae_from_diffusers,
}


# ------------------------------------------------------------------ scheduler

_PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = ("linear", "scaled_linear")


def find_scheduler_config(folder):
    """The `scheduler_config.json` of a checkpoint folder or its pipeline, or None.

    Looked for in `folder`, `folder/scheduler/` and, when `folder` is a pipeline's
    model subfolder (`unet/`), in its sibling `scheduler/`.
    """
    candidates = [
        os.path.join(folder, SCHEDULER_CONFIG_FILE),
        os.path.join(folder, "scheduler", SCHEDULER_CONFIG_FILE),
        os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler", SCHEDULER_CONFIG_FILE),
    ]
    return next((path for path in candidates if os.path.isfile(path)), None)


def schedule_from_diffusers(path):
    """`DiffusionModel` arguments (`schedule`, `prediction_type`) of a diffusers scheduler config.

    Only the training noise schedule and the prediction type carry over; sampling
    settings (`clip_sample`, `timestep_spacing`, `variance_type`, ...) belong to
    the sampler, which kzoo picks at `generate` time.
    """
    with open(path) as f:
        config = json.load(f)
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in _BETA_SCHEDULES:
        raise ValueError(
            f"The scheduler config key 'beta_schedule' must be one of {list(_BETA_SCHEDULES)} "
            f"for kzoo.convert. Received: beta_schedule={beta_schedule!r} in {path}"
        )
    if config.get("trained_betas") is not None:
        raise ValueError(
            "The scheduler config key 'trained_betas' is not supported by kzoo.convert. "
            f"Received: trained_betas=[...] in {path}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION_TYPES:
        raise ValueError(
            f"The scheduler config key 'prediction_type' must be one of "
            f"{list(_PREDICTION_TYPES)} for kzoo.convert. Received: prediction_type="
            f"{prediction!r} in {path}"
        )
    return {
        "schedule": {
            "name": beta_schedule,
            "num_train_timesteps": config.get("num_train_timesteps", 1000),
            "beta_start": config.get("beta_start", 1e-4),
            "beta_end": config.get("beta_end", 0.02),
            "rescale_zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False)),
        },
        "prediction_type": _PREDICTION_TYPES[prediction],
    }
