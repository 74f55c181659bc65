"""diffusers `DiTTransformer2DModel` to `kzoo.models.DiT`.

Peebles & Xie 2022, https://arxiv.org/abs/2212.09748, as ported to diffusers as
`facebook/DiT-XL-2-*`. diffusers' layout differs from DiT's code, and the kzoo DiT
is built with the matching options: every block has its own timestep MLP and
class table (`per_block_conditioning=True`; the final layer uses the first
block's), the timestep features use `freq_shift=1`, and the LayerNorm before
each MLP has epsilon `norm_eps` (`mlp_norm_epsilon`).
"""

from kzoo.convert._common import WeightLoader, check_keys, image_size_of
from kzoo.models.dit import DiT

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
    height, width = image_size_of(image_size if image_size is not None else get("sample_size", 32))
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
    loader = WeightLoader(weights, "DiTTransformer2DModel")
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
