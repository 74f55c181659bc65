"""diffusers `VQModel` to `kzoo.models.VQVAE`.

The taming-transformers VQGAN autoencoder (Esser et al. 2021,
https://arxiv.org/abs/2012.09841) as diffusers holds it: `DownEncoderBlock2D` /
`UpDecoderBlock2D` levels, a middle block with self-attention, 1x1 convs around a
vector quantizer (`beta` 0.25, the two VQ-VAE loss terms). kzoo's VQVAE has the
same layout, GroupNorm epsilon (1e-6) and stride-2 padding (TF's "same", as
diffusers' `Downsample2D(padding=0)` pads).
"""

from kzoo.convert._common import WeightLoader, check_block_types, check_keys, image_size_of
from kzoo.models.vqvae import VQVAE

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
        check_block_types("VQModel", kind, list(get(kind, (expected,))), {expected}, channels)
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
    height, width = image_size_of(image_size if image_size is not None else get("sample_size", 32))
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
    loader = WeightLoader(weights, "VQModel")
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
