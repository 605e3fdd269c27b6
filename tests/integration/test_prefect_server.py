"""``finetune ui prefect``: the local Prefect server refuses what a web page or another local
user could otherwise do with it (issue 31 item 1), against the real server it starts."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port, start_server, stop_server

SECRET = "team:s3cret-4f9d1c"  # what PREFECT_API_AUTH_STRING holds in this test


def _call(url: str, method: str = "GET", body: dict | None = None, **headers: str):
    """(status, headers, body text) of one HTTP request; HTTP errors are answers too."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory):
    """(origin, log) of ``python -m tasks.commands.ui prefect`` with basic auth on."""
    home = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tasks.commands.ui", "prefect", "--port", str(port)]
    log = home / "server.log"
    server = start_server(
        command,
        f"{origin}/api/health",  # health stays open without auth (probes)
        log,
        cwd=ROOT,
        PREFECT_HOME=str(home),
        PREFECT_API_AUTH_STRING=SECRET,
        PREFECT_SERVER_API_AUTH_STRING="",
    )
    try:
        yield origin, log
    finally:
        stop_server(server)


def test_the_api_needs_basic_auth_and_the_secret_is_never_printed(prefect_ui):
    origin, log = prefect_ui
    token_url = f"{origin}/api/csrf-token?client=test"  # the first call any client makes
    assert _call(token_url)[0] == 401
    wrong = base64.b64encode(b"team:guess").decode()
    assert _call(token_url, Authorization=f"Basic {wrong}")[0] == 401
    settings = json.loads(_call(f"{origin}/ui-settings")[2])
    assert settings["auth"] == "BASIC" and settings["csrf_enabled"] is True
    text = Path(log).read_text()
    assert "basic auth on" in text
    assert "s3cret" not in text


def test_changes_need_a_csrf_token_and_other_origins_are_not_answered(prefect_ui):
    origin, _ = prefect_ui
    auth = {"Authorization": f"Basic {base64.b64encode(SECRET.encode()).decode()}"}
    status, _, body = _call(f"{origin}/api/flows/filter", "POST", {}, **auth)
    assert (status, json.loads(body)["detail"]) == (403, "Missing CSRF token.")
    token = json.loads(_call(f"{origin}/api/csrf-token?client=test", **auth)[2])["token"]
    csrf = {"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": "test"}
    assert _call(f"{origin}/api/flows/filter", "POST", {}, **auth, **csrf)[0] == 200
    # A page elsewhere: the browser's preflight is refused and names no allowed origin.
    preflight = {"Access-Control-Request-Method": "POST"}
    status, headers, _ = _call(
        f"{origin}/api/deployments/filter", "OPTIONS", Origin="http://evil.example", **preflight
    )
    assert status == 400 and headers.get("access-control-allow-origin") is None
    status, headers, _ = _call(
        f"{origin}/api/deployments/filter", "OPTIONS", Origin=origin, **preflight
    )
    assert status == 200 and headers["access-control-allow-origin"] == origin
