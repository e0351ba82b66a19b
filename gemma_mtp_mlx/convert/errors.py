"""The one error type of `gemma-mtp convert`."""

from __future__ import annotations


class ConvertError(ValueError):
    """A conversion that cannot be done; the message is one line for the user."""


class HubUnreachable(ConvertError):
    """The Hugging Face Hub cannot be reached (offline) and the model is not cached."""
