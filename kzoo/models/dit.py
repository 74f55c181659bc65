"""DiT: a diffusion transformer over latent patches, conditioned with adaLN-Zero.

Peebles & Xie 2022, "Scalable Diffusion Models with Transformers",
https://arxiv.org/abs/2212.09748. Follows the reference implementation
(github.com/facebookresearch/DiT, models.py): patchify conv, fixed 2-D sin-cos
positions, timestep embedder (sinusoidal 256 -> Linear-SiLU-Linear), class
embedding with one extra null row for classifier-free guidance, `depth`
adaLN-Zero blocks (Sec. 3.2), a final adaLN layer and unpatchify. The
conditioning is `c = t_emb + y_emb`, shared by every block (diffusers'
`DiTTransformer2DModel` instead gives every block its own embedders, hence its
39.8M parameters for S/2 against the paper's 33M; `per_block_conditioning=True`
builds that layout, for checkpoints converted by `kzoo.convert`). The diffusion process (noise
schedule, label dropout for guidance) is not here: see `kzoo.diffusion`.
"""

import keras
from keras import ops

from kzoo.layers import (
    AdaLNFinalLayer,
    AdaLNZeroBlock,
    CrossAttention,
    PatchEmbedding,
    SinCosPositionEmbedding2D,
    SinusoidalTimestepEmbedding,
)
from kzoo.layers._trainable import apply_trainable_flag
from kzoo.layers.checks import check_positive_int
from kzoo.models.unet import (
    _check_context_dim,
    _check_int_tuple,
    context_inputs,
    standardize_denoiser_inputs,
)
from kzoo.presets import PresetMixin

# DiT paper, Table 1: model sizes; the suffix is the patch size.
_DIT_WIDTHS = {
    "S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "L": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "XL": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
}
DIT_SIZES = {
    f"{width}/{patch}": {**config, "patch_size": patch}
    for width, config in _DIT_WIDTHS.items()
    for patch in (2, 4, 8)
}

# Options for diffusers' DiTTransformer2DModel layout, and their defaults (DiT's code).
_DIFFUSERS_LAYOUT_DEFAULTS = {
    "freq_shift": 0,
    "mlp_norm_epsilon": 1e-6,
    "per_block_conditioning": False,
}

# Width of the sinusoidal timestep features fed to the timestep MLP (DiT's
# `frequency_embedding_size`).
TIMESTEP_FREQUENCY_DIM = 256


@keras.saving.register_keras_serializable(package="kzoo")
class DiT(PresetMixin, keras.Model):
    """Diffusion transformer denoiser, a Functional model over `[x_t, t(, labels)]`.

    Inputs: `noisy_latents` `(B, H, W, C)` float, `timesteps` `(B,)` int or float,
    and, only when `num_classes` is set, `labels` `(B,)` int32 in
    `[0, num_classes]`, where id `num_classes` is the null class for
    classifier-free guidance. Output: float32 `(B, H, W, C)` (or
    `(B, H, W, 2C)`, noise then variance, with `learn_sigma=True`). A freshly
    initialised DiT outputs exactly zero (adaLN-Zero and a zero output layer).

    Args:
        input_shape: `(height, width, channels)` of the latents; height and
            width divisible by `patch_size`.
        patch_size: patch side; tokens = `(H / p) * (W / p)`.
        hidden_size: token width.
        depth: number of adaLN-Zero blocks.
        num_heads: attention heads; must divide `hidden_size`.
        mlp_ratio: MLP width as a multiple of `hidden_size`.
        num_classes: number of classes, or `None` for an unconditional model.
        class_dropout_prob: label-dropout rate for classifier-free guidance that
            the training wrapper should apply (kept here as model metadata; the
            model itself never drops labels, but always has the null row).
        learn_sigma: also predict the variance (output channels doubled).
        context_dim: None, or the width of text conditioning (needs
            `num_classes=None`): the model then takes `[x_t, t, context,
            context_mask, pooled]` (see `kzoo.models.unet.context_inputs`), a
            cross-attention layer to `context` follows every adaLN-Zero block
            (PixArt-alpha's text conditioning, Chen et al. 2023,
            https://arxiv.org/abs/2310.00426, Sec. 2.3), and a projection of
            `pooled` is added to `c` in place of the class embedding.
        freq_shift: `freq_shift` of the sinusoidal timestep features (0 in DiT's
            code; diffusers' `DiTTransformer2DModel` uses 1).
        mlp_norm_epsilon: epsilon of each block's LayerNorm before the MLP
            (diffusers' `norm_eps`, 1e-5; DiT's code 1e-6).
        per_block_conditioning: every block computes its own `c` with its own
            timestep MLP and class table, and the final layer uses the first
            block's (diffusers' `DiTTransformer2DModel`, whose `AdaLayerNormZero`
            holds its own `CombinedTimestepLabelEmbeddings`). Needs `num_classes`.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    dit = kzoo.models.DiT.from_size("S/2", input_shape=(32, 32, 4), num_classes=1000)
    eps = dit([x_t, t, labels])  # (B, 32, 32, 4) float32
    ```
    """

    def __init__(
        self,
        input_shape=(32, 32, 4),
        patch_size=2,
        hidden_size=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        num_classes=1000,
        class_dropout_prob=0.1,
        learn_sigma=False,
        context_dim=None,
        freq_shift=0,
        mlp_norm_epsilon=1e-6,
        per_block_conditioning=False,
        **kwargs,
    ):
        input_shape = _check_int_tuple(input_shape, "input_shape", length=3)
        if per_block_conditioning and (num_classes is None or context_dim is not None):
            raise ValueError(
                "`per_block_conditioning` needs class conditioning (diffusers' DiT): set "
                "`num_classes` and leave `context_dim` None. "
                f"Received: num_classes={num_classes!r}, context_dim={context_dim!r}"
            )
        _check_context_dim(context_dim, num_classes)
        check_positive_int("patch_size", patch_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("depth", depth)
        check_positive_int("num_heads", num_heads)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        if input_shape[0] % patch_size or input_shape[1] % patch_size:
            raise ValueError(
                f"`patch_size` must divide the height and width of `input_shape`={input_shape}. "
                f"Received: patch_size={patch_size!r}"
            )
        if hidden_size % num_heads:
            raise ValueError(
                f"`num_heads` must divide `hidden_size`={hidden_size}. "
                f"Received: num_heads={num_heads!r}"
            )
        if hidden_size % 4:
            raise ValueError(
                "`hidden_size` must be divisible by 4 (2-D sin-cos positions). "
                f"Received: hidden_size={hidden_size!r}"
            )
        if not isinstance(class_dropout_prob, int | float) or not 0 <= class_dropout_prob < 1:
            raise ValueError(
                "`class_dropout_prob` must be in [0, 1). "
                f"Received: class_dropout_prob={class_dropout_prob!r}"
            )
        grid = (input_shape[0] // patch_size, input_shape[1] // patch_size)
        out_channels = input_shape[-1] * (2 if learn_sigma else 1)
        init = keras.initializers.RandomNormal(stddev=0.02)

        # === Layers ===
        patch_embedding = PatchEmbedding(patch_size, hidden_size, name="patch_embedding")
        position_embedding = SinCosPositionEmbedding2D(grid, name="position_embedding")
        time_proj = SinusoidalTimestepEmbedding(
            TIMESTEP_FREQUENCY_DIM, freq_shift=freq_shift, name="time_proj"
        )
        blocks = [
            AdaLNZeroBlock(hidden_size, num_heads, mlp_ratio, mlp_norm_epsilon, name=f"block{i}")
            for i in range(depth)
        ]
        # float32 output: the eps-MSE is computed at full precision under mixed_float16.
        final_layer = AdaLNFinalLayer(
            patch_size * patch_size * out_channels, dtype="float32", name="final_layer"
        )

        # === Functional Model ===
        latents = keras.Input(input_shape, name="noisy_latents")
        timesteps = keras.Input((), dtype="float32", name="timesteps")
        inputs = [latents, timesteps]
        tokens = position_embedding(patch_embedding(latents))  # (B, N, D)
        time_features = time_proj(timesteps)
        labels = None
        if num_classes is not None:
            labels = keras.Input((), dtype="int32", name="labels")
            inputs.append(labels)

        def embed_conditioning(suffix=""):
            time_dense1 = keras.layers.Dense(
                hidden_size, kernel_initializer=init, name="time_embedding_1" + suffix
            )
            time_dense2 = keras.layers.Dense(
                hidden_size, kernel_initializer=init, name="time_embedding_2" + suffix
            )
            conditioning = time_dense2(ops.silu(time_dense1(time_features)))  # (B, D)
            if labels is None:
                return conditioning
            # One extra row: id `num_classes` is the null class of classifier-free guidance.
            # Rows start at N(0, 1) (torch's nn.Embedding, as in diffusers' DiT), not the
            # paper's N(0, 0.02): at 0.02 the label is as weak as the time embedding, the
            # zero-initialised modulations learn the time alone, and a small DiT never
            # used its label (docs/dit_shapes.md, the diagnosis).
            class_embedding = keras.layers.Embedding(
                num_classes + 1,
                hidden_size,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="class_embedding" + suffix,
            )
            return conditioning + class_embedding(labels)

        conditioning = embed_conditioning()
        cross_attentions = [None] * depth
        if context_dim is not None:
            context, context_mask, pooled = context_inputs(context_dim)
            inputs += [context, context_mask, pooled]
            pooled_embedding = keras.layers.Dense(
                hidden_size, kernel_initializer=init, name="pooled_embedding"
            )
            conditioning = conditioning + pooled_embedding(pooled)
            cross_attentions = [
                CrossAttention(num_heads, layer_norm_epsilon=1e-6, name=f"cross_attn{i}")
                for i in range(depth)
            ]
        # With per-block conditioning, block 0 and the final layer share the first `c`.
        block_conditionings = [conditioning] + [
            embed_conditioning(f"_block{i}") if per_block_conditioning else conditioning
            for i in range(1, depth)
        ]
        for block, cross_attention, block_conditioning in zip(
            blocks, cross_attentions, block_conditionings, strict=True
        ):
            tokens = block(tokens, block_conditioning)
            if cross_attention is not None:
                tokens = cross_attention(tokens, context, context_mask=context_mask)
        tokens = final_layer(tokens, conditioning)  # (B, N, p*p*C_out)
        # Unpatchify: (B, h*w, p*p*C) -> (B, h, p, w, p, C) -> (B, H, W, C), as DiT's
        # einsum("nhwpqc->nchpwq") in NHWC.
        x = keras.layers.Reshape(
            (*grid, patch_size, patch_size, out_channels), dtype="float32", name="unpatchify_split"
        )(tokens)
        x = keras.layers.Permute((1, 3, 2, 4, 5), dtype="float32", name="unpatchify_permute")(x)
        outputs = keras.layers.Reshape(
            (input_shape[0], input_shape[1], out_channels), dtype="float32", name="unpatchify"
        )(x)
        kwargs.setdefault("name", "dit")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        apply_trainable_flag(self)

        # === Config ===
        self.latent_shape = input_shape
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.learn_sigma = learn_sigma
        self.context_dim = context_dim
        self.freq_shift = freq_shift
        self.mlp_norm_epsilon = mlp_norm_epsilon
        self.per_block_conditioning = per_block_conditioning

    @classmethod
    def from_size(cls, size, **kwargs):
        """A DiT of a paper size (`"S/2"`, ..., `"XL/8"`, see `DIT_SIZES`); `kwargs` override.

        Example:
        ```python
        dit = kzoo.models.DiT.from_size("B/4", input_shape=(32, 32, 4), num_classes=10)
        ```
        """
        if size not in DIT_SIZES:
            raise ValueError(f"`size` must be one of {sorted(DIT_SIZES)}. Received: size={size!r}")
        return cls(**{**DIT_SIZES[size], **kwargs})

    def __call__(self, inputs, *args, **kwargs):
        inputs = standardize_denoiser_inputs(
            inputs, self.num_classes, self.name, context_dim=self.context_dim
        )
        return super().__call__(inputs, *args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_shape": self.latent_shape,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "num_classes": self.num_classes,
            "class_dropout_prob": self.class_dropout_prob,
            "learn_sigma": self.learn_sigma,
            **({} if self.context_dim is None else {"context_dim": self.context_dim}),
            # Written only when they differ from the defaults, so configs of earlier
            # models stay as they were (diffusers' layout, see kzoo.convert).
            **{
                key: getattr(self, key)
                for key, default in _DIFFUSERS_LAYOUT_DEFAULTS.items()
                if getattr(self, key) != default
            },
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
