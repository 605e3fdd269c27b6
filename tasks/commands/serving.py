"""``finetune serve``: MLflow's scoring server (``mlflow.pyfunc.scoring_server``: the same
routes, formats and request timeout as ``mlflow models serve``) behind request limits, serving
only a verified version, run by this project's code (:func:`served_model`).

:class:`RequestLimits` (hand-written: neither MLflow nor uvicorn limits body or batch size, so
one request could take the machine's memory) answers 413 to a POST body over ``max_bytes``
(counted as it arrives) or over ``max_batch`` inputs, before the model sees it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.commands.predict import Predictor

MAX_BYTES = 1_000_000  # a POST body: ~2,000 reviews of 500 characters
MAX_BATCH = 256

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def batch_size(body: bytes) -> int:
    """The number of inputs of a scoring request (MLflow's JSON formats, or CSV lines)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return max(body.count(b"\n"), 1)  # CSV (a header and one line per row) or garbage
    if not isinstance(payload, dict):
        return 1
    for key in ("inputs", "instances", "dataframe_records"):
        value = payload.get(key)
        if isinstance(value, list):
            return len(value)
        if isinstance(value, dict):  # {"column": [values]}
            return max((len(v) for v in value.values() if isinstance(v, list)), default=1)
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return len(split["data"])
    return 1


class RequestLimits:
    """ASGI middleware: POST bodies of at most ``max_bytes`` and ``max_batch`` inputs."""

    def __init__(self, app: Any, max_bytes: int = MAX_BYTES, max_batch: int = MAX_BATCH):
        self.app, self.max_bytes, self.max_batch = app, max_bytes, max_batch

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _refuse(send, f"request body over {self.max_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        count = batch_size(body)
        if count > self.max_batch:
            return await _refuse(send, f"{count} inputs, more than {self.max_batch} per request")
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _refuse(send: Send, reason: str) -> None:
    content = json.dumps({"error_code": "REQUEST_TOO_LARGE", "message": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": content})


class ServedModel:
    """The pyfunc ``finetune serve`` runs: a :class:`Predictor` answering as the flavours do."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        texts = data.iloc[:, 0] if hasattr(data, "iloc") else data
        output = self.predictor([str(text) for text in texts])
        return pd.DataFrame(output) if self.predictor.task == "text_classification" else output


def served_model(model_uri: str, tracking_uri: str) -> Any:
    """The verified version at ``model_uri`` as a pyfunc model built here (its ``MLmodel``
    read as YAML data): nothing from the registry is unpickled or executed."""
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel

    # Not at the top: every `finetune` command imports this module; predict's imports are slow.
    from tasks.commands.predict import Predictor, load_model

    verified = load_model(model_uri, tracking_uri)
    return PyFuncModel(Model.load(str(verified.folder)), ServedModel(Predictor(verified)))


def serve(model_uri: str, port: int, max_bytes: int, max_batch: int, tracking_uri: str) -> None:
    """Verify ``model_uri`` in the store at ``tracking_uri``; serve it on 127.0.0.1:``port``."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    model = served_model(model_uri, tracking_uri)
    app = RequestLimits(scoring_server.init(model), max_bytes, max_batch)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=5)
