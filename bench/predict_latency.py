"""Benchmark: the wall time of one ``finetune predict "..."`` call (a new process each time).

Registers, in a store of its own under ``.state/tmp``, a text classifier made from the packaged
default encoder (all-MiniLM-L6-v2 with a new two-label head: the size and layout of a real
champion; its scores are meaningless) with the register stage's own code, then times
``python -m tasks.commands.main predict --params P "..."`` ``--repeats`` times; the first call
also fills the registry download cache (``.state/registry``). Prints the times and appends a
section to bench/RESULTS.md (``--results``).

    .venv/bin/python bench/predict_latency.py --repeats 5 --label "after"
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import RESULTS, append_section  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state inside the project

SCRATCH = ROOT / ".state" / "tmp"
NAME = "latency-text-classifier"


def register_default(work: Path) -> Path:
    """A champion made from the default encoder in a new SQLite store; its params.yaml."""
    import mlflow
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.core.config import Params
    from tasks.core.pretrained.model import default_model_path
    from tasks.core.registration import registry

    labels = ["negative", "positive"]
    model = AutoModelForSequenceClassification.from_pretrained(
        default_model_path(),
        num_labels=2,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(work / "model")
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(work / "model")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    raw = {"tracking": {"uri": uri, "experiment": "latency"}, "register": {"model_name": NAME}}
    params = Params.model_validate(raw)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("latency", work.as_uri()))
    with mlflow.start_run():
        version = registry.log_and_register(
            params, work / "model", NAME, {registry.MODEL_MD5_TAG: "latency"}
        )
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return work / "params.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="", help="what code was measured (a line)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SCRATCH, prefix="latency-") as tmp:
        params = register_default(Path(tmp))
        command = [sys.executable, "-m", "tasks.commands.main", "predict", "--params",
                   str(params), "A moving, beautifully acted film."]  # fmt: skip
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"predict failed:\n{done.stderr}")
        print(done.stdout.strip())
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = ", ".join(f"{t:.2f}" for t in times)
    lines = [
        f"## predict_latency: {stamp}",
        "",
        *([f"_{args.label}_", ""] if args.label else []),
        f"- machine: {platform.processor() or platform.machine()}, {platform.platform()}",
        f"- command: `.venv/bin/python bench/predict_latency.py --repeats {args.repeats}`",
        "- model: the default encoder (all-MiniLM-L6-v2) with a two-label head, registered by "
        "`registry.log_and_register` (transformers flavour) in a SQLite store",
        f'- one `finetune predict "..."` process, wall s: {shown} (first call downloads)',
        f"- median {statistics.median(times):.2f} s, best {min(times):.2f} s",
    ]
    print("\n".join(lines))
    append_section(args.results, lines)


if __name__ == "__main__":
    main()
