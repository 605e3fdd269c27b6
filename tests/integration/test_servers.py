"""Past one machine: the pipeline's MLflow stages against a real ``mlflow server`` on a real
PostgreSQL, with artifacts proxied by the server (``tasks.commands.servers``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import psycopg2
import pytest
import yaml
from conftest import (
    ROOT,
    free_port,
    make_project,
    run,
    start_server,
    stop_server,
    tiny_params,
    write_toy_prepared,
)
from test_register import Trained

from tasks.commands.servers import Postgres, tracking_server_command
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.evaluation.scoring import evaluate
from tasks.core.tracking import retry_insert_race
from tasks.train import train


@pytest.fixture(scope="module")
def tracking_server(postgres: Postgres, tmp_path_factory) -> dict:
    """``mlflow server`` on the ``mlflow`` database, artifacts proxied into a folder."""
    backend = postgres.create_database("mlflow")
    root = tmp_path_factory.mktemp("tracking-server")
    port = free_port()
    command, env = tracking_server_command(backend, root / "artifacts", port)
    server = start_server(command, f"http://127.0.0.1:{port}/health", root / "server.log", **env)
    try:
        yield {
            "uri": f"http://127.0.0.1:{port}",
            "backend": backend,
            "artifacts": root / "artifacts",
        }
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def served_model(tracking_server, tmp_path_factory, tiny_model_dir) -> Trained:
    """A tiny model trained and evaluated by the real stage functions; its registry and
    runs are the server's (``tracking.uri``)."""
    root = tmp_path_factory.mktemp("client")
    params = tiny_params(
        "text_classification",
        tiny_model_dir,
        train={"epochs": 1},  # the gate reads the scores the test sets
        tracking={"uri": tracking_server["uri"], "experiment": "server-tests"},
        register={"model_name": "toy-on-server", "min_score": 0.0},
    )
    write_toy_prepared(root / "prepared")
    state = root / "state"
    tokenize(params, root / "prepared", root / "tokenized", root / "tokenize.json", state)
    train(params, root / "tokenized", root / "model", root / "reports", state)
    evaluate(params, root / "tokenized", root / "model", root / "reports")
    return Trained(params, root)


def _rows(url: str, query: str) -> list[tuple]:
    """Rows of ``query`` read straight from PostgreSQL (not through MLflow)."""
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return sorted(cursor.fetchall())
    finally:
        connection.close()


def test_gate_and_aliases_on_the_server(served_model, tracking_server):
    first = served_model.register()
    assert (first["version"], first["promoted"]) == (1, True)
    served_model.set_score(first["score"] + 0.1)
    better = served_model.variant("better").register()
    assert better["promoted"] and better["aliases"] == {"champion": 2, "challenger": 2}
    served_model.set_score(first["score"])
    worse = served_model.variant("worse").register()
    assert not worse["promoted"] and "does not beat the champion" in worse["reason"]
    assert worse["aliases"] == {"champion": 2, "challenger": 3}

    # The registry and the runs live in PostgreSQL, as the server's clients see them.
    backend = tracking_server["backend"]
    assert _rows(backend, "SELECT version FROM model_versions WHERE name = 'toy-on-server'") == [
        (1,),
        (2,),
        (3,),
    ]
    aliases = "SELECT alias, version FROM registered_model_aliases WHERE name = 'toy-on-server'"
    assert _rows(backend, aliases) == [("challenger", 3), ("champion", 2)]
    stages = _rows(
        backend,
        "SELECT DISTINCT value FROM tags WHERE key = 'pipeline.stage'",
    )
    assert {s for (s,) in stages} == {"register", "pipeline"}

    # Artifacts went through the server into its destination, none to a client-side path.
    client = served_model.client()
    version = client.get_model_version("toy-on-server", "2")
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = tracking_server["artifacts"] / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
    assert (stored / "reports" / "registry.json").is_file()
    assert len(list(tracking_server["artifacts"].rglob("MLmodel"))) == 3
    assert len(list(tracking_server["artifacts"].rglob("model.safetensors"))) >= 3
    assert not (served_model.root / "state" / "mlflow").exists()
    assert not list(served_model.root.rglob("mlruns")) and not list(Path.cwd().glob("mlruns"))


def test_predict_loads_the_champion_through_the_server(served_model, tracking_server):
    """``predict`` pointed at the server by MLFLOW_TRACKING_URI alone (tracking.uri null);
    the model exists on the server only (a name no other test registers)."""
    served_model.ensure_champion()
    raw = served_model.params.model_dump(mode="json", by_alias=True)
    raw["tracking"]["uri"] = None
    params_file = served_model.root / "params-env.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    command = [
        sys.executable,
        "-m",
        "tasks.commands.predict",
        "--params",
        str(params_file),
        "--json",
    ]
    done = run(
        [*command, "a great film", "a dull plot"],
        ROOT,
        MLFLOW_TRACKING_URI=tracking_server["uri"],
    )
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in records] == ["a great film", "a dull plot"]
    assert all(r["label"] in ("positive", "negative") for r in records)
    champion = served_model.client().get_model_version_by_alias("toy-on-server", "champion")
    assert champion.source.startswith(("models:/", "mlflow-artifacts:/"))


@pytest.mark.parametrize("better_first", [True, False], ids=["better-first", "worse-first"])
def test_two_registers_deciding_at_once_leave_the_better_champion(
    served_model, monkeypatch, better_first
):
    """Issue 31 item 5 on the PostgreSQL-backed server: champion v1 0.80; A registers 0.90 and
    B 0.85 "at the same time": the second to register decided against v1 too (its champion
    read is v1, as if it happened before the first set the alias) and sets the alias last.
    The compare-and-set after the alias (tasks.core.registration.registry.settle_champion) leaves
    the
    better model champion in both orders."""
    from tasks.core.registration import registry

    trained = served_model.named(f"race-{'better' if better_first else 'worse'}-first")
    trained.set_score(0.80)
    first = trained.variant("race-v1").register()
    assert first["promoted"] and first["version"] == 1
    v1 = trained.client().get_model_version(trained.name, "1")
    scores = [("race-a", 0.90), ("race-b", 0.85)]
    if not better_first:
        scores.reverse()
    (earlier, earlier_score), (later, later_score) = scores
    trained.set_score(earlier_score)
    reports = {earlier: trained.variant(earlier).register()}
    # The later one read the champion before the earlier one set the alias: v1.
    real, stale = registry.champion, [v1]
    monkeypatch.setattr(registry, "champion", lambda *a: stale.pop() if stale else real(*a))
    trained.set_score(later_score)
    reports[later] = trained.variant(later).register()
    monkeypatch.undo()
    assert {r["champion_before"]["version"] for r in reports.values()} == {1}  # both vs v1
    champion = trained.client().get_model_version_by_alias(trained.name, "champion")
    assert champion.version == str(reports["race-a"]["version"])  # 0.90, in either order
    assert reports["race-a"]["aliases"]["champion"] == reports["race-a"]["version"]
    loser = trained.client().get_model_version(trained.name, str(reports["race-b"]["version"]))
    if better_first:  # it set the alias last and gave it back: its tags and report say so
        assert loser.tags["decision"] == reports["race-b"]["decision"] == "kept as challenger"
        assert "promoted at the same time, scores higher" in loser.tags["reason"]
        assert not reports["race-b"]["promoted"]
    else:  # it was champion until the better one replaced it
        assert loser.tags["decision"] == "promoted to champion"


def test_clients_setting_one_alias_at_once_all_succeed(tracking_server):
    """Two checkouts registering into one server set the same alias at the same moment. The
    server's SQL store reads, then inserts the alias row, so without retrying about half of
    such rounds fail on the row's UNIQUE constraint (measured: 5 of 10 rounds of 4 clients);
    ``retry_insert_race`` (what register calls) makes every client succeed, the last one
    setting the alias."""
    uri = tracking_server["uri"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("alias-race"))
    clients = 4
    for round_ in range(5):
        name = f"alias-race-{round_}"
        client.create_registered_model(name)
        versions = [
            client.create_model_version(
                name, f"{run.info.artifact_uri}/m", run_id=run.info.run_id
            ).version
            for _ in range(clients)
        ]
        errors = _set_alias_at_once(client, name, versions)
        assert not errors, f"round {round_}: {errors[0]}"
        assert client.get_model_version_by_alias(name, "challenger").version in versions


def _set_alias_at_once(client: mlflow.MlflowClient, name: str, versions: list[str]) -> list:
    """One thread per version, released together, each setting ``challenger`` to its version
    through ``retry_insert_race``; the errors they raised."""
    together = threading.Barrier(len(versions))

    def set_alias(version: str) -> None:
        together.wait()
        retry_insert_race(client.set_registered_model_alias, name, "challenger", version)

    with ThreadPoolExecutor(len(versions)) as pool:
        futures = [pool.submit(set_alias, version) for version in versions]
    return [future.exception() for future in futures if future.exception()]


def test_a_running_cluster_refuses_another_port(postgres):
    """The running cluster cannot be started again on another port: the error says so."""
    other = Postgres(postgres.root, port=postgres.port + 1)
    with pytest.raises(StageError, match=f"already running on port {postgres.port}"):
        other.start()
    assert postgres.running()


@pytest.fixture
def reachable_copy() -> Iterator[Path]:
    """A project copy that PostgreSQL's user can reach when we are root (pytest's own tmp
    folders are private to us)."""
    folder = Path(tempfile.mkdtemp(prefix="servers-"))
    folder.chmod(0o755)
    try:
        yield make_project(folder / "project")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_make_targets_commands_in_a_project_copy(reachable_copy, tmp_path):
    """What `make tracking-server` and `make postgres-stop` run, in a project copy: PostgreSQL
    is created in the copy's .state and started, MLflow comes up on it and keeps a run; the
    stop command stops it; a second start on another port is refused by name."""
    project_copy = reachable_copy
    pg_port, port = free_port(), free_port()
    servers = [sys.executable, "-m", "tasks.commands.servers"]
    state = project_copy / ".state"
    pgpass = {"PGPASSFILE": str(state / "pgpass")}  # the copy's own (not this session's)
    server = start_server(
        [*servers, "tracking", "--port", str(port), "--postgres-port", str(pg_port)],
        f"http://127.0.0.1:{port}/health",
        tmp_path / "tracking.log",
        cwd=project_copy,
        **pgpass,
    )
    try:
        assert (state / "postgres" / "data" / "PG_VERSION").is_file()
        assert state.stat().st_mode & 0o077 in (0, 0o001)  # 0700 (0711 as root: enter only)
        assert "mlflow_user" in (state / "pgpass").read_text()
        shown = run([*servers, "postgres", "--port", str(pg_port)], project_copy, **pgpass)
        url = run([*servers, "url", "optuna", "--port", str(pg_port)], project_copy, **pgpass)
        assert url.stdout.strip() == f"postgresql://optuna_user@127.0.0.1:{pg_port}/optuna"
        secrets = [(state / "postgres" / "password").read_text().strip()]
        secrets += [line.rsplit(":", 1)[1] for line in (state / "pgpass").read_text().split()]
        printed = shown.stdout + shown.stderr + url.stdout + url.stderr
        printed += (tmp_path / "tracking.log").read_text()
        assert len(secrets) == 3 and not [s for s in secrets if s in printed]
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run_id = client.create_run(client.create_experiment("cli")).info.run_id
        client.log_text(run_id, "kept", "note.txt")
        assert any((state / "mlflow-server" / "artifacts").rglob("note.txt"))
        other = run([*servers, "postgres", "--port", str(pg_port + 1)], project_copy, check=False)
        assert other.returncode == 1
        assert "servers: error: " in other.stderr and f"port {pg_port}" in other.stderr
    finally:
        stop_server(server)
        run([*servers, "postgres", "--stop"], project_copy)
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_folder_the_server_user_cannot_enter_is_named(tmp_path):
    """pytest's tmp folders are private (0700): as root, the error names the folder."""
    with pytest.raises(StageError, match=r"cannot enter .*pytest-of-\w+ \(mode 700\)"):
        Postgres(tmp_path / "postgres", port=free_port()).start()
    assert not (tmp_path / "postgres").exists()
