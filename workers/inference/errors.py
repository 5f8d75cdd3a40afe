"""The inference error every module of the model's path raises (the classifier, the torch
models, the model plan), kept apart so none of them imports another for it."""

from __future__ import annotations

from pipeline.errors import UserError


class ModelError(UserError):
    """A model that cannot be built as configured."""
