"""The one error type the CLI turns into a one-line message (exit code 1)."""


class LowbitError(Exception):
    """A user-facing failure: bad input, missing file, unsupported model or scheme."""
