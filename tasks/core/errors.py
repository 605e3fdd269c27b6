"""The one exception type stages raise for bad input; the CLI turns it into exit code 1."""


class StageError(Exception):
    """Bad input or a failed gate: the message names the file, line, field and value."""


class HubError(StageError):
    """A model hub (``HF_ENDPOINT``) could not give a model: the message names the model, the
    revision and the fix. Never a lost MLflow server, though its text may say "Connection
    refused" (tasks/core/tracking.py's ``server_lost`` stops at it)."""
