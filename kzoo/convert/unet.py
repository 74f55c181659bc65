"""diffusers `UNet2DModel` to `kzoo.models.UNet`.

The DDPM layouts (Ho et al. 2020, https://arxiv.org/abs/2006.11239), as ported to
diffusers as `google/ddpm-*`: `DownBlock2D` / `AttnDownBlock2D` / `UpBlock2D` /
`AttnUpBlock2D`. Layout options set on the kzoo UNet: stride-2 conv padding
(PyTorch's `padding=1` pads one row/column on each side, TF's "same" one after
only), `attention_head_dim`, `flip_sin_to_cos` and `freq_shift` of the timestep
embedding, and GroupNorm epsilon `norm_eps` (1e-5 by default; kzoo's 1e-6).
"""

import numpy as np

from kzoo.convert._common import WeightLoader, check_block_types, check_keys, image_size_of
from kzoo.models.unet import UNet

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
    # Only read with time_embedding_type="learned", which the check above refuses.
    "num_train_timesteps": None,
}


def unet_kwargs(config, image_size=None):
    """`kzoo.models.UNet` arguments equivalent to a diffusers `UNet2DModel` config."""
    check_keys(config, _UNET_KEYS, "UNet2DModel")
    get = config.get
    down_types, up_types = list(get("down_block_types", ())), list(get("up_block_types", ()))
    channels = tuple(get("block_out_channels", ()))
    check_block_types("UNet2DModel", "down_block_types", down_types, _UNET_DOWN_BLOCKS, channels)
    check_block_types("UNet2DModel", "up_block_types", up_types, _UNET_UP_BLOCKS, channels)
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
    height, width = image_size_of(image_size if image_size is not None else get("sample_size"))
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


def unet_from_diffusers(config, weights, image_size=None):
    """A `kzoo.models.UNet` built from a `UNet2DModel` config, with `weights` loaded."""
    kwargs = unet_kwargs(config, image_size)
    model = UNet(**kwargs)
    loader = WeightLoader(weights, "UNet2DModel")
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
