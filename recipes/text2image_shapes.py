"""Text-to-image U-Net on kzoo_shapes (32x32) conditioned on a frozen CLIP text tower.

`ddpm_unet_shapes`' U-Net with `context_dim=64` (cross-attention after every
self-attention, the pooled text vector added to the timestep embedding); the text
encoder is the frozen text tower of a trained `clip_shapes` DualEncoder, loaded from
`text_encoder_workdir`. Captions are dropped to the empty caption 10% of the time
for classifier-free guidance.

With `--set text_encoder_workdir=` (empty) a new text encoder (a `TextEncoder` as
wide as `context_dim`, 2 layers, 4 heads, as clip_shapes' text tower) trains with
the U-Net instead, e.g. on your captions: `--set dataset=captions:FILE.jsonl`
(the vocabulary is then built from them, see `recipes.adapt_to_dataset`).

Run:
    kzoo train clip_shapes --workdir runs/clip_shapes              # the text tower
    kzoo train text2image_shapes --workdir runs/text2image_shapes --set precision=mixed_bfloat16
    python -m recipes.text2image_shapes runs/text2image_shapes   # faithfulness (JSON)
    kzoo export runs/text2image_shapes --format saved_model     # `generate_from_text`

Expected (200 test captions, DDIM 20 steps, guidance 3; the ShapesClassifier's label
agrees with the caption): background 1.00, colour 0.995, size 0.90, shape 0.47,
position 0.995. Model card, what was tried and limits: docs/text2image_shapes.md.
"""

import json
import sys

# The clip_shapes text tower's sequence length and width: DiffusionModel checks
# the first against the tokenizer, the U-Net cross-attends to states of the second.
SEQUENCE_LENGTH = 16
CLIP_TEXT_WIDTH = 64


def get_config():
    return {
        "model": {
            "class_name": "DiffusionModel",
            "denoiser": {
                "class_name": "UNet",
                "image_shape": (32, 32, 3),
                "channels": (32, 64, 64),
                "num_res_blocks": 1,
                "attention_resolutions": (8,),
                "norm_groups": 8,
                "time_embedding_dim": 128,
                "num_classes": None,
                "dropout": 0.0,
                "num_heads": 1,
                "mid_attention": True,
                "context_dim": CLIP_TEXT_WIDTH,
            },
            "tokenizer": {"vocabulary": "kzoo_shapes", "sequence_length": SEQUENCE_LENGTH},
            "caption_dropout_prob": 0.1,
            "schedule": "cosine",
            "prediction_type": "v",
            "num_classes": None,
            "snr_gamma": 5.0,
            "timestep_sampling": "uniform",
            "logit_mean": 0.0,
            "logit_std": 1.0,
            "noise_offset": 0.0,
            "max_generate_steps": 250,
            "max_generate_batch": 64,
            "export_sampler": "ddim",
        },
        # The frozen text tower of a trained `clip_shapes` DualEncoder (`kzoo train
        # clip_shapes --workdir runs/clip_shapes` first), loaded by the trainer.
        "text_encoder_workdir": "runs/clip_shapes",
        "dataset": "kzoo_shapes",
        "outputs": ("image", "caption"),
        "batch_size": 32,
        "steps": 4000,
        "steps_per_epoch": 200,
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "ema": True,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }


def evaluate(
    model,
    num_examples=200,
    num_steps=20,
    guidance_scale=3.0,
    seed=0,
    classifier=None,
    attributes=("shape", "color", "size", "position", "background"),
    split="test",
):
    """Text-to-image faithfulness: a shapes classifier labels the generated images.

    Args:
        model: a trained text-to-image `DiffusionModel` on kzoo_shapes images.
        num_examples: captions of `split` to generate from (each split has 1,000).
        num_steps: DDIM steps.
        guidance_scale: classifier-free guidance scale.
        seed: sampling seed.
        classifier: a `ShapesClassifier` for the model's image size; default the
            cached one (`load_or_train_shapes_classifier`, trained once if missing).
        attributes: the caption attributes to score.
        split: "test" (scored once, for the results), or "validation" (while
            choices are made: `benchmarks.learning_curve`).

    Returns:
        A dict: for each attribute, `{attribute}_agreement` (generated images whose
        predicted attribute equals the caption's) with its binomial standard error
        `{attribute}_agreement_se`, `{attribute}_chance` (1 / number of values) and
        `{attribute}_real_accuracy` (the classifier on the real test images of the
        same captions), plus the settings; under `"novel"` the agreements on the
        captions whose attribute combination never occurs in train
        (`kzoo.data.shapes.novel_combinations`) and their number.
    """
    import numpy as np

    import kzoo.data
    from kzoo.data.shapes import novel_combinations
    from kzoo.metrics.features import ATTRIBUTES, load_or_train_shapes_classifier

    size = model.image_shape[0]
    images, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split=split, num_examples=num_examples, image_size=size
    )
    if classifier is None:
        classifier = load_or_train_shapes_classifier(image_size=size)
    captions = [str(c) for c in labels["caption"]]
    generated = model.generate_from_text(
        captions, num_steps=num_steps, guidance_scale=guidance_scale, seed=seed
    )
    predicted = classifier.predict_attributes(generated)
    real = classifier.attribute_accuracy(images, {name: labels[name] for name in attributes})
    novel = novel_combinations(split, num_examples=len(captions))
    results = {
        "split": split,
        "num_examples": len(captions),
        "num_steps": num_steps,
        "guidance_scale": guidance_scale,
        "novel": {"num_examples": int(novel.sum())},
    }
    for name in attributes:
        hit = predicted[name] == np.asarray(labels[name]).reshape(-1)
        for scores, mask in ((results, slice(None)), (results["novel"], novel)):
            count = int(hit[mask].size)
            share = float(hit[mask].mean()) if count else 0.0
            scores[f"{name}_agreement"] = round(share, 4)
            # Binomial standard error of the share (one sample per caption).
            se = (share * (1.0 - share) / count) ** 0.5 if count else 0.0
            scores[f"{name}_agreement_se"] = round(se, 4)
        results[f"{name}_chance"] = round(1.0 / ATTRIBUTES[name], 4)
        results[f"{name}_real_accuracy"] = round(float(real[name]), 4)
    return results


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: python -m recipes.text2image_shapes WORKDIR")
    from kzoo.training.checkpoint import load_trained_model

    print(json.dumps(evaluate(load_trained_model(argv[1])), indent=2))


if __name__ == "__main__":
    main(sys.argv)
