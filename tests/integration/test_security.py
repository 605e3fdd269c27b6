"""Issue 31: what a hostile registry, input file or shared server must not achieve."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tasks.commands.servers import read_pgpass
from tasks.core.config import ParamsError, hide_password, load_params
from tasks.core.environment import private_state_dir
from tasks.core.errors import StageError
from tasks.core.pretrained.model import registry_cache_dir, resolve_model_source

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


# --- item 2: PostgreSQL roles and passwords -------------------------------------------------


def test_each_database_has_its_own_role_without_superuser_rights(postgres):
    """The URL holds no password (libpq reads PGPASSFILE, 0600); the role is no superuser
    (no COPY ... TO PROGRAM shell), cannot create databases or roles, and cannot connect to
    another database of the cluster."""
    import psycopg2
    from psycopg2 import errors

    url = postgres.create_database("sec_one")
    other = postgres.create_database("sec_two")
    assert url.startswith("postgresql://sec_one_user@127.0.0.1:") and url.endswith("/sec_one")
    assert postgres.create_database("sec_one") == url  # again: same role, same password
    pgpass = Path(os.environ["PGPASSFILE"])
    assert pgpass.stat().st_mode & 0o777 == 0o600
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                "WHERE rolname = current_user"
            )
            assert cursor.fetchone() == (False, False, False)
            cursor.execute("CREATE TABLE mine (x int)")  # its own database: it may build
            with pytest.raises(errors.InsufficientPrivilege):
                cursor.execute("COPY (SELECT 1) TO PROGRAM 'true'")
            with pytest.raises(errors.InsufficientPrivilege):
                cursor.execute("CREATE DATABASE grab")
    finally:
        connection.close()
    password = read_pgpass(postgres.port, "sec_one", "sec_one_user")
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        psycopg2.connect(other.replace("sec_two_user", "sec_one_user"), password=password)
    with pytest.raises(StageError, match="lowercase letters"):
        postgres.create_database("x; DROP")


def test_params_refuse_a_url_with_a_password_without_echoing_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tracking: {uri: 'http://me:s3cret@h:5000'}\ntune: {storage: "
                    "'postgresql://u:s3cret@127.0.0.1:5433/optuna'}\n")  # fmt: skip
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "tune: storage: 'postgresql://u:***@127.0.0.1:5433/optuna' holds a password" in message
    assert "tracking.uri: 'http://me:***@h:5000' holds a password" in message
    assert "s3cret" not in message
    # What MLflow params and reports show:
    assert hide_password("postgresql://u:a/b@h:5433/db") == "postgresql://u:***@h:5433/db"
    assert hide_password("postgresql://u@h:5433/db, http://h:5000") == (
        "postgresql://u@h:5433/db, http://h:5000"
    )


def test_state_folder_is_private(tmp_path):
    assert private_state_dir(tmp_path / "new").stat().st_mode & 0o777 == 0o700
    (tmp_path / "old" / ".state").mkdir(parents=True, mode=0o755)
    (tmp_path / "old" / ".state").chmod(0o755)
    assert private_state_dir(tmp_path / "old").stat().st_mode & 0o777 == 0o711  # no listing
