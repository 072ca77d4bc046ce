"""One base class for errors that mean bad input or state rather than a bug.

The CLI and the app catch `RagError` and show its message as one line; anything else is a programming
error and keeps its traceback.
"""


class RagError(Exception):
    """Bad input or state the user can fix; the message says what to do."""


class ModelError(RagError):
    """A configured model cannot be found, verified or loaded."""
