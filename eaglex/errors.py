"""The one exception type users see: its message is a single line saying what is wrong and how to fix it."""


class EaglexError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2, without a traceback."""
