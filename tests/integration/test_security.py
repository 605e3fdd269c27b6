"""Issue 31: what a hostile registry, input file or shared server must not achieve."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tasks.core.errors import StageError
from tasks.core.model import registry_cache_dir, resolve_model_source

# --- item 4: registry versions never become paths outside .state/registry -----------------


class _HostileRegistry(http.server.BaseHTTPRequestHandler):
    """An MLflow REST endpoint (as a hostile or intercepted plain-HTTP server would answer)
    whose alias points at a version that is a path."""

    version = "../../../.venv/lib/python3.11/site-packages/sitecustomize"
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        body = json.dumps(
            {"model_version": {"name": "sentiment", "version": self.version, "aliases": []}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile_registry() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _HostileRegistry.asked = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_version_that_is_a_path_is_refused(tmp_path, hostile_registry, monkeypatch):
    """models:/ resolution follows MLFLOW_TRACKING_URI (tracking.uri null) like every stage,
    and a version that is not a number is refused before anything is written."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", hostile_registry)
    with pytest.raises(StageError, match=r"answered version '\.\./\.\./.*not a number; refused"):
        resolve_model_source("models:/sentiment@champion", None, tmp_path)
    assert any("alias" in path for path in _HostileRegistry.asked)  # the env's server asked
    assert not (tmp_path / "registry").exists()


def test_the_cache_is_per_store_and_inside_the_registry_folder(tmp_path):
    one = registry_cache_dir(tmp_path, "http://a:5000", "sentiment", "3", "s")
    two = registry_cache_dir(tmp_path, "http://b:5000", "sentiment", "3", "s")
    assert one != two and one.name == two.name == "v3"
    assert one.is_relative_to((tmp_path / "registry").resolve())
    for version in ("3/../../x", "-1", "", "1e3", "٣"):
        with pytest.raises(StageError, match="not a number"):
            registry_cache_dir(tmp_path, "http://a:5000", "sentiment", version, "s")
    with pytest.raises(StageError, match="outside"):
        registry_cache_dir(tmp_path, "http://a:5000", "..", "1", "s")
