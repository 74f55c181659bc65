"""`--set` overrides that shrink the recipes to test size (shared by the CLI tests)."""


def overrides(*pairs):
    """`("a=1", "b=2")` -> `["--set", "a=1", "--set", "b=2"]`."""
    return [arg for pair in pairs for arg in ("--set", pair)]


TINY_VQVAE = overrides(
    "model.image_shape=(16,16,3)",
    "model.channels=(8,16)",
    "model.norm_groups=4",
    "model.codebook_size=16",
    "model.embedding_dim=8",
    "batch_size=8",
    "steps_per_epoch=2",
)

TINY_DIT = overrides(
    "model.denoiser.input_shape=(16,16,3)",
    "model.denoiser.hidden_size=16",
    "model.denoiser.depth=1",
    "model.denoiser.num_heads=2",
    "batch_size=8",
    "steps_per_epoch=2",
)

TINY_CLIP = overrides(
    "model.image_encoder.image_shape=(16,16,3)",
    "model.image_encoder.channels=(8,8)",
    "model.image_encoder.norm_groups=4",
    "model.image_encoder.hidden_dim=16",
    "model.text_encoder.hidden_dim=16",
    "model.text_encoder.num_layers=1",
    "model.text_encoder.num_heads=2",
    "model.embedding_dim=8",
    "batch_size=8",
    "steps_per_epoch=2",
)
