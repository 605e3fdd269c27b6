"""The one exception type stages raise for bad input; the CLI turns it into exit code 1."""


class StageError(Exception):
    """Bad input or a failed gate: the message names the file, line, field and value."""
