"""Errors the CLI turns into one clear line and a non-zero exit (no traceback)."""


class PackagerError(Exception):
    """Base class: a user-facing error with a message that says what to do."""


class ModelError(PackagerError):
    """The model folder is missing, incomplete, unsafe, or uses something unsupported."""


class UnsupportedError(ModelError):
    """A module type, architecture or tokenizer that packager cannot export."""


class TargetError(PackagerError):
    """A serving target cannot be written (existing output, incompatible server version, ...)."""


class OutputExistsError(TargetError):
    """The output (or a version in it) exists and replacing it was not asked for (``force``)."""


class ParityError(PackagerError):
    """A parity check fell below its thresholds."""
