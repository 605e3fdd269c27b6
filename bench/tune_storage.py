"""Benchmark (not a test): what parallel tuning costs and gains on this machine.

(a) Storage overhead: the same study of ``--trials`` empty trials (one float suggested, its
    value returned) in the storages the stage opens (``tasks.tune.open_storage``: Optuna's
    RDB storage with heartbeats) on SQLite and on a PostgreSQL server started here
    (``tasks.commands.servers.Postgres``, 127.0.0.1); milliseconds per trial.
(b) Wall time of one search of ``--n-trials`` real trials (tiny random BERT, toy data, the
    tune stage's objective) with 1 and with 2 worker processes (``tasks.tune.work``, what
    ``python -m tasks.tune --worker`` runs) sharing one study in PostgreSQL.

Prints the numbers, writes the run's JSON result with the machine's load (``uptime``)
(``--json``; default ``bench/results/tune_storage-<UTC stamp>.json``, or beside ``--results``)
and appends its section (rendered by ``bench/render.py``) to ``--results``
(``bench/RESULTS.md``).

    .venv/bin/python bench/tune_storage.py --trials 200 --n-trials 6
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state and scratch inside the project


def empty_trials(spec: str, params, trials: int) -> float:
    """Milliseconds per empty trial in the storage ``spec`` (opened as the stage does)."""
    import optuna

    from tasks.tuning.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(spec, params), direction="maximize")
    started = time.perf_counter()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return (time.perf_counter() - started) * 1000 / trials


def _worker(params_json: dict, tokenized: str, state: str) -> None:
    import logging

    import torch

    from tasks.core.config import Params
    from tasks.tune import work

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    work(Params.model_validate(params_json), Path(tokenized), Path(state))


def search_wall(params, tokenized: Path, state: Path, workers: int) -> float:
    """Seconds from starting ``workers`` processes to the study holding n_trials."""
    context = multiprocessing.get_context("spawn")
    payload = params.model_dump(by_alias=True, mode="json")
    started = time.perf_counter()
    processes = [
        context.Process(target=_worker, args=(payload, str(tokenized), str(state)))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {process.exitcode})")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="empty trials per storage")
    parser.add_argument("--n-trials", type=int, default=6, help="real trials per search")
    parser.add_argument("--skip-search", action="store_true", help="measure (a) only")
    add_arguments(parser, "tune_storage")
    args = parser.parse_args()

    from conftest import tiny_params, write_toy_prepared

    from tasks.commands.servers import Postgres
    from tasks.core.data.tokenizing import tokenize

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="bench-tune-storage-", dir=ROOT / ".state"))
    pg_root = Path(tempfile.mkdtemp(prefix="bench-postgres-", dir=ROOT / ".state"))
    pg_root.chmod(0o755)  # as root the server runs as the postgres user: it must get in
    server = Postgres(pg_root, port=_free_port()).start()
    search = None
    try:
        params = tiny_params("text_classification", "unused")
        sqlite = f"sqlite:///{scratch / 'optuna.db'}"
        overhead = {
            "SQLite": empty_trials(sqlite, params, args.trials),
            "PostgreSQL": empty_trials(server.create_database("bench_a"), params, args.trials),
        }
        for name, ms in overhead.items():
            print(f"{name}: {ms:.1f} ms per empty trial")
        if not args.skip_search:
            search = []
            model = _tiny_model(scratch / "model")
            for workers in (1, 2):
                storage = server.create_database(f"bench_b{workers}")
                params = tiny_params(
                    "text_classification", model, tracking={"uri": f"sqlite:///{scratch}/ml.db"},
                    train={"epochs": 2, "precision": "fp32"},
                    tune={"n_trials": args.n_trials, "storage": storage, "train_fraction": 0.5,
                          "pruner": {"type": "none"}, "heartbeat_interval": 2,
                          "grace_period": 20,
                          "space": {"learning_rate": {"type": "float", "low": 3e-3,
                                                      "high": 3e-2, "log": True}}},
                )  # fmt: skip
                tokenized = scratch / "tokenized"
                if not tokenized.exists():
                    prepared = write_toy_prepared(scratch / "prepared")
                    tokenize(params, prepared, tokenized, scratch / "tok.json", scratch / "st")
                wall = search_wall(params, tokenized, scratch / "state", workers)
                search.append({"workers": workers, "wall_s": wall})
                print(f"{workers} worker(s): {wall:.1f} s")
    finally:
        server.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    finished = datetime.datetime.now(datetime.UTC)
    result = {
        "bench": "tune_storage",
        "finished": finished.isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "bench/tune_storage.py", *sys.argv[1:]]),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load": load,
        "trials": args.trials,
        "ms_per_trial": overhead,
        "n_trials": args.n_trials,
        "search": search,  # None with --skip-search
    }
    stamp = f"{finished:%Y%m%dT%H%M%S}"
    record(result, args.results, args.json or json_path("tune_storage", stamp, args.results))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_model(directory: Path) -> Path:
    """A randomly initialised 2-layer BERT (tests/conftest.py's tiny model), on disk."""
    import torch
    from conftest import tiny_vocab
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    config = BertConfig(
        vocab_size=len(tiny_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(directory)
    return directory


if __name__ == "__main__":
    main()
