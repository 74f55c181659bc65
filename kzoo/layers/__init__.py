"""kzoo building blocks, written in `keras.ops` only."""

from kzoo.layers.attention import SpatialSelfAttention
from kzoo.layers.conditioning import AdaLNFinalLayer, AdaLNZeroBlock
from kzoo.layers.embeddings import (
    PatchEmbedding,
    SinCosPositionEmbedding2D,
    SinusoidalTimestepEmbedding,
)
from kzoo.layers.normalization import GroupNorm
from kzoo.layers.quantizers import VectorQuantizer
from kzoo.layers.resblocks import Downsample, ResBlock, Upsample

__all__ = [
    "Downsample",
    "GroupNorm",
    "ResBlock",
    "SpatialSelfAttention",
    "Upsample",
    "VectorQuantizer",
    "PatchEmbedding",
    "SinCosPositionEmbedding2D",
    "SinusoidalTimestepEmbedding",
    "AdaLNFinalLayer",
    "AdaLNZeroBlock",
]

from kzoo.layers.quantizers import FSQ, LFQ, GroupedVQ, ResidualVQ  # noqa: E402

__all__ += ["FSQ", "GroupedVQ", "LFQ", "ResidualVQ"]

from kzoo.layers.conditioning import ConcatFusion, CrossAttention, FiLM, GatedFusion  # noqa: E402
from kzoo.layers.transformer import (  # noqa: E402
    MultiHeadAttention,
    PositionEmbedding,
    TransformerBlock,
)

__all__ += [
    "ConcatFusion",
    "CrossAttention",
    "FiLM",
    "GatedFusion",
    "MultiHeadAttention",
    "PositionEmbedding",
    "TransformerBlock",
]
