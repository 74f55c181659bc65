"""Training: recipe runner, atomic checkpoints and resume."""

from kzoo.training.checkpoint import load_checkpoint, load_trained_model, save_checkpoint
from kzoo.training.trainer import build_model, train

__all__ = ["build_model", "load_checkpoint", "load_trained_model", "save_checkpoint", "train"]
