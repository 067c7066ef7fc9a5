"""The one exception type the CLI turns into a clear one-line message."""


class TextrnnError(Exception):
    """Bad input or state a user can fix: the message names the problem and the fix."""
