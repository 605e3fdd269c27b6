"""``finetune serve``'s request limits (tasks/commands/serving.py), on the ASGI level: a body
or batch over the limit is refused (413) before the app (the model) sees it, whatever the
Content-Length says; requests within the limits reach it unchanged."""

from __future__ import annotations

import asyncio
import json

import pytest

from tasks.commands.serving import RequestLimits, batch_size


def call(limits: RequestLimits, chunks: list[bytes]) -> tuple[int, bytes, list[bytes]]:
    """POST ``chunks`` through ``limits``; the status, the body, what the app received."""
    seen: list[bytes] = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    limits.app = app
    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    asyncio.run(limits(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), seen


def test_requests_within_the_limits_reach_the_model_unchanged():
    body = json.dumps({"inputs": ["a good film", "a dull one"]}).encode()
    status, answer, seen = call(RequestLimits(None, 1000, 2), [body[:7], body[7:]])
    assert (status, answer, seen) == (200, b"ok", [body])


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([b"x" * 600, b"x" * 600], "request body over 1000 bytes"),  # Content-Length lied
        ([json.dumps({"inputs": ["a"] * 3}).encode()], "3 inputs, more than 2 per request"),
    ],
    ids=["bytes", "batch"],
)
def test_a_body_or_batch_over_the_limit_is_refused_before_the_model(chunks, reason):
    status, answer, seen = call(RequestLimits(None, 1000, 2), chunks)
    assert (status, json.loads(answer)["message"], seen) == (413, reason, [])


def test_batch_size_of_mlflow_request_formats():
    def size(payload):
        return batch_size(json.dumps(payload).encode())

    assert size({"inputs": ["a", "b", "c"]}) == 3
    assert size({"instances": ["a", "b"]}) == 2
    assert size({"dataframe_records": [{"text": "a"}] * 4}) == 4
    assert size({"dataframe_split": {"columns": ["text"], "data": [["a"]] * 5}}) == 5
    assert size({"inputs": {"text": ["a"] * 6}}) == 6
    assert batch_size(b"text\na\nb\n") == 3  # CSV: header and rows, never fewer than rows
