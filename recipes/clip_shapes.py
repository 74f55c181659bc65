"""CLIP dual encoder (conv-stem ViT, text transformer) on kzoo_shapes captions, ~10 min on 2 cores.

Run:
    kzoo train clip_shapes --workdir runs/clip_shapes
    python -m recipes.clip_shapes runs/clip_shapes     # test-split zero-shot and recall (JSON)

Result (1,500 steps of 128, seed 0; 713 s on 2 CPU cores shared with another run;
test split, 1,000 examples; identical captions count as matches):

| metric                                           | value | chance |
|--------------------------------------------------|-------|--------|
| image->text / text->image recall@1, all 1,000     | 0.752 / 0.751 | 0.001 |
| image->text / text->image recall@5, all 1,000     | 0.992 / 0.999 | 0.005 |
| image->text / text->image recall@1, batches of 100 | 0.964 / 0.962 | 0.01 |
| zero-shot colour, prompt "a {}"                   | 0.650 | 0.125 |
| zero-shot shape, prompt "a {}"                    | 0.281 | 0.167 |

The issue's goal of >= 95% zero-shot shape accuracy is NOT reached. Measured
cause: the image embedding barely encodes shape (a nearest-class-mean probe on the
test embeddings: shape 0.32, position 0.88, background 0.96, colour 0.89). Inside
a batch, colour, position, size and background already make almost every caption
unique, so the contrastive loss asks little of shape, and shape is the slowest
attribute to learn even with direct labels (a supervised shape classifier with
this image tower reaches 0.81 test accuracy after 500 steps). What helped: the
conv stem (shape probe of supervised training 0.54 -> 0.81 in 500 steps) and
hard negatives (all-caption recall@1 0.70 -> 0.75). `--set model.word_dropout=0.5`
trains on shortened captions too: zero-shot colour 0.98 and shape 0.36, but
all-caption recall@1 falls to 0.15 (run of the same length).

The whole model is data: the tokenizer is built inside the model from the
kzoo_shapes vocabulary (`{"vocabulary": "kzoo_shapes"}`), and the encoders'
`vocabulary_size` / `sequence_length` come from it. `outputs=("image",
"caption")` makes the training data `(images, captions)` pairs of raw strings,
tokenized in the graph.
"""

import json
import sys

# Prompt templates for zero-shot shape classification: "a {}" alone, and an
# ensemble over the size words (CLIP's prompt ensembling, Sec. 3.1.4).
SHAPE_TEMPLATES = ("a {}",)
SHAPE_ENSEMBLE_TEMPLATES = ("a {}", "a small {}", "a medium {}", "a large {}")
COLOR_TEMPLATES = ("a {}",)


def get_config():
    return {
        "model": {
            "class_name": "DualEncoder",
            "tokenizer": {"vocabulary": "kzoo_shapes", "sequence_length": 16},
            "text_encoder": {"hidden_dim": 64, "num_layers": 2, "num_heads": 4},
            "image_encoder": {
                "image_shape": (32, 32, 3),
                "kind": "vit",
                "patch_size": 4,
                "hidden_dim": 64,
                "num_layers": 2,
                "num_heads": 4,
                "stem": "conv",
            },
            "embedding_dim": 64,
            "hard_negatives": True,
            "num_hard_negatives": 1,
            "word_dropout": 0.0,
            "keep_full_captions": False,
        },
        "dataset": "kzoo_shapes",
        "outputs": ("image", "caption"),
        "batch_size": 128,
        "steps": 1500,
        "steps_per_epoch": 100,
        "learning_rate": 2e-3,
        "weight_decay": 0.01,
        "ema": False,
        "grad_accum_steps": 1,
        "precision": "float32",
        "jit_compile": False,
        "strategy": "default",
        "seed": 0,
    }


def evaluate(model, num_examples=1000, batch_size=100):
    """Test-split zero-shot accuracy and retrieval recall of a trained `DualEncoder`.

    Args:
        model: a trained `kzoo.models.DualEncoder` on kzoo_shapes images (any size).
        num_examples: test examples to use (the split has 1,000).
        batch_size: the batch for in-batch recall (as the training metrics).

    Returns:
        A dict: zero-shot shape accuracy with `SHAPE_TEMPLATES` (also by size
        class) and with `SHAPE_ENSEMBLE_TEMPLATES`, zero-shot colour accuracy, image->text and
        text->image recall@1/@5 over the whole set (identical captions count as
        matches) and within batches of `batch_size`.
    """
    import numpy as np

    import kzoo.data
    from kzoo.models.dual_encoder import recall_at_k

    images, labels = kzoo.data.load_arrays(
        "kzoo_shapes", split="test", num_examples=num_examples, image_size=model.image_shape[0]
    )
    results = {"num_examples": int(len(images))}
    for key, names, templates in (
        ("zero_shot_shape_accuracy", kzoo.data.SHAPES, SHAPE_TEMPLATES),
        ("zero_shot_shape_accuracy_ensemble", kzoo.data.SHAPES, SHAPE_ENSEMBLE_TEMPLATES),
        ("zero_shot_color_accuracy", kzoo.data.COLORS, COLOR_TEMPLATES),
    ):
        class_ids, _ = model.zero_shot(images, list(names), templates=templates)
        target = labels["shape" if names is kzoo.data.SHAPES else "color"]
        results[key] = round(float(np.mean(class_ids == target)), 4)
        if key == "zero_shot_shape_accuracy":
            # By size class: small shapes are the hard ones at 32 px.
            for size_id, size in enumerate(kzoo.data.SIZES):
                members = labels["size"] == size_id
                accuracy = np.mean(class_ids[members] == target[members])
                results[f"{key}_{size}"] = round(float(accuracy), 4)

    captions = list(labels["caption"])
    image_embeddings = np.concatenate(
        [np.asarray(model.encode_image(images[i : i + 256])) for i in range(0, len(images), 256)]
    )
    text_embeddings = np.concatenate(
        [np.asarray(model.encode_text(captions[i : i + 256])) for i in range(0, len(images), 256)]
    )
    caption_ids = np.unique(np.asarray(captions), return_inverse=True)[1]

    def recalls(start, stop):
        similarity = image_embeddings[start:stop] @ text_embeddings[start:stop].T
        same = caption_ids[start:stop, None] == caption_ids[None, start:stop]
        return {
            f"{direction}_recall@{k}": float(recall_at_k(logits, positives, k))
            for direction, logits, positives in (
                ("i2t", similarity, same),
                ("t2i", similarity.T, same.T),
            )
            for k in (1, 5)
        }

    for name, value in recalls(0, len(images)).items():
        results[f"all_{name}"] = round(value, 4)
    batches = [
        recalls(i, i + batch_size) for i in range(0, len(images) - batch_size + 1, batch_size)
    ]
    for name in batches[0]:
        results[f"batch{batch_size}_{name}"] = round(float(np.mean([b[name] for b in batches])), 4)
    return results


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: python -m recipes.clip_shapes WORKDIR")
    from kzoo.training.checkpoint import load_trained_model

    print(json.dumps(evaluate(load_trained_model(argv[1])), indent=2))


if __name__ == "__main__":
    main(sys.argv)
