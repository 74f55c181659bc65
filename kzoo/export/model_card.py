"""Model cards: the `README.md` every export writes next to its versions.

A card says what the model is, how it was trained (recipe and command), how it
scored (`kzoo evaluate`'s figures, when the workdir holds `evaluation.json`), how the
export matches Keras (the parity table), its signatures, what it is for and where it
stops being right. The sections follow Mitchell et al. 2019, "Model Cards for Model
Reporting" (https://arxiv.org/abs/1810.03993), cut to what kzoo knows.
"""

import json
import os

from kzoo.export import _core, parity

MODEL_CARD_FILE = "README.md"
EVALUATION_FILE = "evaluation.json"

INTENDED_USE = (
    "Demonstrating, teaching and testing the architecture on kzoo's embedded synthetic "
    "shapes data (small images of coloured shapes with captions), and as a template: "
    "train the same recipe on your own data for real use."
)
LIMITS = (
    "Trained on synthetic shapes only: it knows nothing of natural images or free text, "
    "and its figures hold for that data alone. No safety filtering. Quantized LiteRT "
    "variants trade accuracy for size; their parity rows say by how much."
)


def read_evaluation(workdir):
    """The workdir's `evaluation.json` (written by `kzoo evaluate`), or None."""
    if workdir is None:
        return None
    path = os.path.join(workdir, EVALUATION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_card(
    model,
    name,
    recipe=None,
    train_command=None,
    export_command=None,
    evaluation=None,
    parity_reports=(),
    signatures=None,
):
    """The text of a model card (Markdown).

    Args:
        model: the exported model.
        name: the export name (the card's title).
        recipe: the recipe name, or None.
        train_command: the command that trained it, or None.
        export_command: the command that exported it, or None.
        evaluation: `kzoo evaluate`'s dict, or None.
        parity_reports: parity dicts of this export (`check_parity`).
        signatures: `{signature: [input names]}`, or None.

    Returns:
        The card as a string.

    Example:
    ```python
    text = model_card(model, "vqvae_shapes", recipe="vqvae_shapes")
    ```
    """
    doc = (type(model).__doc__ or "").strip().splitlines()
    summary = doc[0].strip() if doc else type(model).__name__
    lines = [f"# {name}", "", "## Model", ""]
    lines.append(f"A kzoo `{type(model).__name__}`: {summary}")
    lines.append(f"Parameters: {model.count_params():,}.")
    lines += ["", "## Training", ""]
    if recipe:
        lines.append(f"Recipe `{recipe}` (`recipes/{recipe}.py`, `kzoo recipes` lists it).")
    if train_command or export_command:
        lines += ["", "```bash"]
        lines += [c for c in (train_command, export_command) if c]
        lines += ["```"]
    if not (recipe or train_command):
        lines.append("Not exported from a `kzoo train` workdir: no recipe recorded.")
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += ["Test-split figures from `kzoo evaluate`:", "", "```json"]
        lines += [json.dumps(evaluation, indent=2, sort_keys=True), "```"]
    else:
        lines.append("No `evaluation.json` in the workdir: run `kzoo evaluate WORKDIR` first.")
    lines += ["", "## Export parity", ""]
    reports = [r for r in parity_reports if r]
    if reports:
        lines += ["```text", parity.format_parity_table(reports), "```"]
    else:
        lines.append("Not checked (exported with the parity check off).")
    if signatures:
        lines += ["", "## Signatures", ""]
        for signature, inputs in signatures.items():
            lines.append(f"- `{signature}`: {', '.join(f'`{i}`' for i in inputs)}")
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Limits", "", LIMITS, ""]
    return "\n".join(lines)


def write_model_card(directory, text):
    """Writes `<directory>/README.md` atomically; returns its path."""
    path = os.path.join(directory, MODEL_CARD_FILE)
    _core.atomic_write_bytes(path, text.encode("utf-8"))
    return path
