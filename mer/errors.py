"""The package's own error types: every bad input surfaces as one of these, naming the item and the reason."""
from __future__ import annotations


class MerError(Exception):
    """Base class of every error mer raises on purpose."""


class ItemError(MerError):
    """Something about one input item (a file, an object key): ``item`` names it; ``reason`` says why, in words a
    user can act on."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason

    def __reduce__(self):  # keep the fields across pickling (Ray ships errors between processes)
        return (type(self), (self.item, self.reason))


class BadInputError(ItemError):
    """An input item (MIDI file, audio file, object key) cannot be used: its content (or key) is at fault, and it
    stays bad until it changes."""


class ObjectChangedError(ItemError):
    """An object in the store is no longer the version that was listed: it was overwritten (or replaced) between
    the listing and the read. Not the content's fault: the item is retried by the next run, which lists the new
    version."""


class DatasetNotFoundError(MerError):
    """The EMOPIA dataset (or a part of it) is not where mer was told to look."""


class ConfigError(MerError):
    """A configuration value or a saved model artifact is inconsistent."""
