"""The one error a model load raises: a sentence the user can act on."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model directory could not be loaded; the message says why."""
