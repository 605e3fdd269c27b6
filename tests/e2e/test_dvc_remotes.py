"""DVC remotes: a pipeline's data and outputs pushed, then pulled into a fresh clone that has
nothing to reproduce. The project's default local remote, and an S3 remote on a real local S3
(moto's server mode on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import boto3
import pytest
from conftest import (
    ROOT,
    commit,
    free_port,
    make_project,
    run,
    set_params,
    start_server,
    stop_server,
)

OUTPUTS = ("data", "reports")  # every output of the stages run here lives under these
# The stages run here (the later ones, never run, have no outputs to push): a full pipeline
# pushes and pulls with no target.
TARGET = ["--with-deps", "tokenize"]
S3_ENV = {  # moto accepts any credentials; real ones come from the environment the same way
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def digests(project: Path) -> dict[str, str]:
    """sha256 of every file under the output folders (git-ignored or not), by path."""
    found = {}
    for folder in OUTPUTS:
        for path in sorted((project / folder).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                found[str(path.relative_to(project))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return found


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A project copy with the project's DVC config and ignores, ``dvc repro`` run up to
    tokenize on a few hundred examples, committed; and the digests of its outputs."""
    project = make_project(tmp_path_factory.mktemp("origin") / "project")
    shutil.copy2(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copy2(ROOT / ".gitignore", project / ".gitignore")
    set_params(project, **{"prepare.max_examples": 300})
    run(["dvc", "repro", "tokenize"], project)
    commit(project)
    produced = digests(project)
    assert any(p.startswith("data/tokenized/") for p in produced)
    return project, produced


def clone(origin: Path, target: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(target)], origin.parent)
    assert not (target / "data" / "prepared" / "train.parquet").exists()
    return target


def assert_restored(project: Path, produced: dict[str, str], **env: str) -> None:
    """Everything byte-identical, and DVC sees nothing to do."""
    assert digests(project) == produced
    status = run(["dvc", "status", "tokenize", "--with-deps"], project, **env)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    repro = run(["dvc", "repro", "tokenize"], project, **env)
    assert "Running stage" not in repro.stdout, repro.stdout


def test_default_local_remote(pipeline, tmp_path):
    """``dvc push`` needs no setup (remote ``local`` = ``.dvc-remote/`` in the project); a
    clone points its own untracked config at the origin's folder and pulls."""
    project, produced = pipeline
    assert "local" in run(["dvc", "remote", "default"], project).stdout
    run(["dvc", "push", *TARGET], project)
    stored = project / ".dvc-remote" / "files" / "md5"
    assert sum(1 for p in stored.rglob("*") if p.is_file()) >= len(produced) // 2
    assert ".dvc-remote" not in run(["git", "ls-files"], project).stdout

    copy = clone(project, tmp_path / "clone")
    url = str(project / ".dvc-remote")
    run(["dvc", "remote", "modify", "--local", "local", "url", url], copy)
    run(["dvc", "pull", *TARGET], copy)
    assert_restored(copy, produced)


def test_s3_remote_on_a_local_s3_server(pipeline, tmp_path):
    """Push to an S3 bucket (moto's server), clone, pull with the remote config from git and
    credentials from the environment: the clone is complete and up to date."""
    project, produced = pipeline
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        f"{endpoint}/moto-api/",
        tmp_path / "moto.log",
        timeout=120,
    )
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, **_credentials())
        s3.create_bucket(Bucket="finetune")
        # Not the default here (the other test expects `local`); users add it with -d.
        run(["dvc", "remote", "add", "storage", "s3://finetune/dvc"], project)
        run(["dvc", "remote", "modify", "storage", "endpointurl", endpoint], project)
        commit(project)
        run(["dvc", "push", "-r", "storage", *TARGET], project, **S3_ENV)
        keys = s3.list_objects_v2(Bucket="finetune", Prefix="dvc/").get("KeyCount", 0)
        assert keys >= len(produced) // 2

        copy = clone(project, tmp_path / "clone")
        assert run(["dvc", "config", "remote.storage.endpointurl"], copy).stdout.strip() == endpoint
        run(["dvc", "pull", "-r", "storage", *TARGET], copy, **S3_ENV)
        assert_restored(copy, produced, **S3_ENV)
    finally:
        stop_server(server)


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }
