"""Local servers for working past one machine: PostgreSQL and an MLflow tracking server on it.

    python -m tasks.commands.servers postgres        # start PostgreSQL in the background, print URL
    python -m tasks.commands.servers postgres --stop
    python -m tasks.commands.servers url mlflow      # the URL of a database (created when missing)
    python -m tasks.commands.servers tracking        # MLflow server on PostgreSQL (foreground)

PostgreSQL (Debian's binaries) keeps its data in ``.state/postgres`` and listens on 127.0.0.1
only. Its superuser ``finetune`` only creates databases, each with its own unprivileged login
role ``<name>_user`` whose random password goes to ``PGPASSFILE`` (0600), so printed URLs
hold none; as root, the server runs as user ``postgres`` (it refuses root). The tracking
server proxies artifacts, so clients need only its URL. Security model: docs/servers.md.
"""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.core.cli import stage_command, user_help
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError

ROLE = "finetune"
SERVER_USER = "postgres"  # the OS user that runs PostgreSQL when we are root (Debian's own)
DEFAULT_PORT = 5433  # not 5432: a system cluster from Debian's package may hold that one
MLFLOW_PORT = 5000


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server program: on PATH, else the newest Debian install."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise StageError(
            f"{name}: PostgreSQL server binaries not found (PATH, /usr/lib/postgresql/*/bin); "
            "install them with `make postgres-binaries` (Debian: apt-get install postgresql)"
        )
    return found


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user that runs PostgreSQL when we are root (``None``: run as us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SERVER_USER],
            check=True,
        )  # fmt: skip
        return pwd.getpwnam(SERVER_USER)


@dataclass(frozen=True)
class Postgres:
    """One PostgreSQL cluster in ``root`` (data, log, password) on ``127.0.0.1:port``."""

    root: Path = STATE_DIR / "postgres"
    port: int = DEFAULT_PORT

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def url(self, database: str) -> str:
        """libpq URL of ``database`` for its own role, without the password (``PGPASSFILE``)."""
        return f"postgresql://{database_role(database)}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> Any:
        """A connection as the superuser (password from its file, never in a URL)."""
        import psycopg2

        password = self.password_file.read_text().strip()
        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=ROLE, password=password, dbname="postgres",
            connect_timeout=10,
        )  # fmt: skip
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        return connection

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program as the server user; fail with its output."""
        user = _server_user()
        prefix = ["runuser", "-u", user.pw_name, "--"] if user else []
        done = subprocess.run(
            [*prefix, postgres_bin(command[0]), *command[1:]], capture_output=True, text=True
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise StageError(
                f"{' '.join(command[:2])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{log}"
            )
        return done

    def _check_reachable(self) -> None:
        """As root: StageError unless the server user can enter every folder above ``root``;
        ``.state`` gets the execute bit for others (enter, not list)."""
        user = _server_user()
        if user is None:
            return
        state = STATE_DIR.resolve()
        if self.root.resolve().is_relative_to(state) and state.is_dir():
            state.chmod(state.stat().st_mode & 0o777 | 0o001)
        for folder in reversed(self.root.resolve().parents):
            if not folder.exists():
                break
            probe = ["runuser", "-u", user.pw_name, "--", "test", "-x", str(folder)]
            if subprocess.run(probe, capture_output=True).returncode != 0:
                raise StageError(
                    f"{self.root}: PostgreSQL runs as user {user.pw_name!r} (it refuses root), "
                    f"who cannot enter {folder} (mode {folder.stat().st_mode & 0o777:o}); "
                    "keep the project in a folder other users can enter, or run as a "
                    "non-root user"
                )

    def _init(self) -> None:
        """A new cluster: role ``finetune`` with a random password, password login only."""
        self._check_reachable()
        self.root.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.password_file.chmod(0o600)
        if user := _server_user():
            for path in (self.root, self.password_file):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)
        self._run(
            "initdb", "-D", str(self.data.resolve()), "-U", ROLE,
            f"--pwfile={self.password_file.resolve()}", "--auth=scram-sha-256",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip

    def running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        user = _server_user()
        prefix = ["runuser", "-u", user.pw_name, "--"] if user else []
        status = [*prefix, postgres_bin("pg_ctl"), "status", "-D", str(self.data.resolve())]
        return subprocess.run(status, capture_output=True).returncode == 0

    def start(self) -> Postgres:
        """Start the server (creating the cluster first if needed); already running: keep it."""
        if not (self.data / "PG_VERSION").exists():
            self._init()
        else:
            self._check_reachable()
        if self.running():
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            if int(lines[3]) != self.port:
                raise StageError(
                    f"{self.data}: PostgreSQL is already running on port {lines[3]}, not "
                    f"{self.port}; stop it first (python -m tasks.commands.servers postgres --stop)"
                )
            return self
        options = f"-h 127.0.0.1 -p {self.port} -k ''"  # TCP on loopback only, no Unix socket
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data.resolve()),
            "-l", str(self.log.resolve()), "-o", options,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data.resolve()))

    def create_database(self, name: str) -> str:
        """Create ``name`` and its unprivileged login role ``<name>_user`` (owner; other roles
        cannot connect) unless they exist, with a new random password in ``PGPASSFILE`` when it
        has none; return the URL without the password. StageError: not a plain identifier."""
        from psycopg2 import sql

        if not re.fullmatch(r"[a-z][a-z0-9_]{0,57}", name):
            raise StageError(
                f"database {name!r}: use lowercase letters, digits and _ (a letter first)"
            )
        role = database_role(name)
        password = read_pgpass(self.port, name, role)
        connection = self._admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cursor.fetchone() is None:
                    cursor.execute(
                        sql.SQL(
                            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "NOREPLICATION NOBYPASSRLS"
                        ).format(sql.Identifier(role))
                    )
                    password = None
                if password is None:
                    password = secrets.token_urlsafe(24)
                    cursor.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)),
                        (password,),
                    )
                    write_pgpass(self.port, name, role, password)
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(name), sql.Identifier(role)
                        )
                    )
                cursor.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
                )
        finally:
            connection.close()
        return self.url(name)


def database_role(database: str) -> str:
    return f"{database}_user"


def pgpass_file() -> Path:
    """libpq's password file: ``PGPASSFILE`` (the project sets ``.state/pgpass``)."""
    return Path(os.environ.get("PGPASSFILE") or STATE_DIR / "pgpass")


def _pgpass_key(port: int, database: str, role: str) -> str:
    return f"127.0.0.1:{port}:{database}:{role}:"


def read_pgpass(port: int, database: str, role: str) -> str | None:
    """The password ``PGPASSFILE`` holds for ``role`` on ``database`` here, if any."""
    path = pgpass_file()
    key = _pgpass_key(port, database, role)
    lines = path.read_text().splitlines() if path.is_file() else []
    return next((line.removeprefix(key) for line in lines if line.startswith(key)), None)


def write_pgpass(port: int, database: str, role: str, password: str) -> None:
    """Set ``role``'s entry in ``PGPASSFILE`` (0600; under a lock: two writers keep both)."""
    path = pgpass_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _pgpass_key(port, database, role)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = path.read_text().splitlines() if path.is_file() else []
        lines = [line for line in lines if not line.startswith(key)] + [key + password]
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def tracking_server_command(
    backend_uri: str, artifacts: Path, port: int = MLFLOW_PORT, workers: int = 1
) -> tuple[list[str], dict[str, str]]:
    """``mlflow server`` command and extra env (the backend URI: no password in ``ps``)."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--serve-artifacts", "--artifacts-destination", str(artifacts.resolve()),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    # The job runner (GenAI scorers, trace archival) does nothing here: off, no extra processes.
    env = {"MLFLOW_BACKEND_STORE_URI": backend_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return command, env


app = typer.Typer(add_completion=False, help=user_help(__doc__))


@app.command()
@stage_command("servers")
def postgres(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = DEFAULT_PORT,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server instead.")] = False,
) -> None:
    """Start (or stop) the project's PostgreSQL in the background; print its URL."""
    server = Postgres(port=port)
    if stop:
        server.stop()
        typer.echo(f"stopped PostgreSQL ({server.data})")
        return
    server.start()
    typer.echo(f"PostgreSQL on 127.0.0.1:{port} (data {server.data}, log {server.log})")
    typer.echo("a database and its own role: finetune servers url NAME (password: .state/pgpass)")


@app.command()
@stage_command("servers")
def url(
    database: Annotated[str, typer.Argument(help="Database name (created when missing).")],
    port: Annotated[int, typer.Option(help="Port of the running server.")] = DEFAULT_PORT,
) -> None:
    """Print the URL of a database (e.g. for ``tune.storage``), creating it and its login role
    when missing; the password goes to .state/pgpass (PGPASSFILE), never printed."""
    typer.echo(Postgres(port=port).create_database(database))


@app.command()
@stage_command("servers")
def tracking(
    port: Annotated[
        int, typer.Option(help="Port of the MLflow server on 127.0.0.1.")
    ] = MLFLOW_PORT,
    postgres_port: Annotated[
        int, typer.Option(help="Port of PostgreSQL on 127.0.0.1.")
    ] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 1,
) -> None:
    """MLflow tracking server: runs and registry in PostgreSQL (started when not running),
    artifacts proxied into .state/mlflow-server/artifacts; runs in the foreground."""
    backend = Postgres(port=postgres_port).start().create_database("mlflow")
    artifacts = STATE_DIR / "mlflow-server" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    typer.echo(f"MLflow on http://127.0.0.1:{port} (set tracking.uri or MLFLOW_TRACKING_URI)")
    command, env = tracking_server_command(backend, artifacts, port, workers)
    os.execve(command[0], command, {**os.environ, **env})


if __name__ == "__main__":
    app()
