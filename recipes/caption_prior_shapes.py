"""Caption-conditional transformer prior over the `vqgan_shapes` codes (kzoo_shapes captions).

Run (after `vqgan_shapes`, whose workdir `vq_workdir` names):
    kzoo train vqgan_shapes --workdir runs/vqgan_shapes
    kzoo train caption_prior_shapes --workdir runs/caption_prior_shapes
    kzoo sample runs/caption_prior_shapes --out samples.png --top-k 32 \\
        --caption "a large red circle at the center on a blue background"

The `code_prior_shapes` recipe with the class start token replaced by a caption
prefix (DALL-E style, see `kzoo.models.CodePrior`): each training image's caption,
tokenized with the kzoo_shapes vocabulary (29 words; captions have 11-12 words) into
16 tokens, comes before the start token and the image's 64 codes, in one causal
transformer; the loss covers the codes only. The data is
`code_prior_shapes.build_code_dataset` (the tokenizer of `vq_workdir` encodes the
training images; `label="caption"` pairs each with its caption). Sampling:
`kzoo.models.Generator(prior, tokenizer, top_k=...)` exports one `generate`
endpoint (`captions` tf.string, `seed` -> images); `kzoo export` of the workdir
writes the prior's single step `next_token_logits` (`caption_ids`, `tokens`),
which also converts to LiteRT.

Result: not yet measured here (no long run was made in this change).
"""

from recipes import code_prior_shapes


def get_config():
    config = code_prior_shapes.get_config()
    model = {key: value for key, value in config["model"].items() if key != "num_classes"}
    model.update(caption_vocabulary="kzoo_shapes", max_caption_length=16)
    # The kzoo_shapes feature the prior is conditioned on: each image's caption.
    config.update(model=model, label="caption")
    return config


# `kzoo train` feeds a recipe's `build_dataset(config, model, skip_batches=...)` to the trainer.
build_dataset = code_prior_shapes.build_code_dataset
# `--set image_size=N`: the code grid of the tokenizer on N x N images.
apply_image_size = code_prior_shapes.apply_image_size
