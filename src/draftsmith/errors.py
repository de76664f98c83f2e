"""Errors a user can act on. The CLI prints their message, never a traceback."""


class DraftsmithError(Exception):
    """Base class: bad input or an environment problem, explained in the message."""


class ModelNotFoundError(DraftsmithError):
    """A model name is neither a pack, a local folder, nor a reachable hub id."""


class PackError(DraftsmithError):
    """A model or data pack could not be fetched, assembled, verified or converted."""


class IncompatibleDrafterError(DraftsmithError):
    """The drafter cannot serve this target (vocabulary mismatch, missing capability)."""
