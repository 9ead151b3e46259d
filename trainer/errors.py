"""Errors raised by the trainer. Each also derives from the builtin that matches its meaning::

    TrainerError
    ├── InvalidDataset(TrainerError, ValueError)     empty, malformed, too long for the model, no chat template
    ├── ModelUnavailable(TrainerError, RuntimeError)  a model or checkpoint that cannot be loaded
    └── CheckpointError(TrainerError, RuntimeError)   a missing, corrupt or unknown checkpoint

Every check that can fail runs before the first training step; a failed run
writes nothing under ``checkpoints/``.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "InvalidDataset", "ModelUnavailable", "TrainerError"]


class TrainerError(Exception):
    """Base class of every error raised by ``trainer``."""


class InvalidDataset(TrainerError, ValueError):
    """A dataset that cannot be trained on; the message names the example or line."""


class ModelUnavailable(TrainerError, RuntimeError):
    """A model that cannot be found or loaded."""


class CheckpointError(TrainerError, RuntimeError):
    """A checkpoint that is missing, corrupt, or not ours."""
