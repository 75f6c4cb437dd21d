"""User-facing errors: one line that names the thing and the fix.

Every error a user can cause (bad file, bad flag, model too big) is raised as an
EdgeslimError subclass; the CLI prints `edgeslim: <message>` and exits 2,
never a traceback.
"""


class EdgeslimError(Exception):
    """Base class: str(err) is a complete one-line message naming the fix."""


class FormatError(EdgeslimError):
    """A GGUF file is truncated, corrupted, hostile or of an unsupported version."""


class UnsupportedError(EdgeslimError):
    """An architecture, tokenizer or tensor type edgeslim does not handle."""


class FitError(EdgeslimError):
    """The model cannot fit the target device or budget."""


class InputError(EdgeslimError):
    """A bad argument, path or input file given by the user."""
