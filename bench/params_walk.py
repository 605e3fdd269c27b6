"""Measurement (not a test): where ``params`` travels inside the train stage. Runs the real
``tasks.train.train()`` for one short epoch on a sample of SST-2 and records, in call order,
every call of a project function that receives ``params`` or one of its sections
(``params.train``, ``params.model``, ...). Consecutive calls in one module are one stay.

    .venv/bin/python bench/params_walk.py [--examples 128]

Prints one JSON object: the distinct modules, the number of stays, how many times the walk
comes back to tasks/train.py after leaving it, and the walk itself (issue 32's measure:
"following params from train() visits N modules in M stays").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGE = "tasks/train.py"


def sections(params: Any) -> set[int]:
    """The ids of ``params`` and of every pydantic section inside it."""
    from pydantic import BaseModel

    found, pending = set(), [params]
    while pending:
        model = pending.pop()
        found.add(id(model))
        pending += [v for v in vars(model).values() if isinstance(v, BaseModel)]
    return found


def walk(params: Any, work: Path) -> list[str]:
    """The project modules of every call that receives a params object, in call order."""
    import tasks.train as product

    tracked, calls = sections(params), []
    project = (str(ROOT / "tasks"), str(ROOT / "flows"))

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(project):
            return
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(id(frame.f_locals.get(name)) in tracked for name in names):
            calls.append(Path(code.co_filename).relative_to(ROOT).as_posix())

    sys.setprofile(profile)
    try:
        product.train(params, work / "data" / "tokenized", work / "model", work / "reports",
                      work / "state")  # fmt: skip
    finally:
        sys.setprofile(None)
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--examples", type=int, default=128)
    args = p.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from speed.data import bench_params, read_corpus, sample, tokenize_splits

    options = argparse.Namespace(
        params=str(ROOT / "params.yaml"), batch_size=None, model=None, max_tokens=None
    )
    params = bench_params(options, "text_classification")
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1})})
    corpus = read_corpus("sst2", Path(args.shared), params)
    chosen = sample(corpus.train, args.examples, 42)
    with tempfile.TemporaryDirectory(dir=ROOT / ".state") as scratch:
        work = Path(scratch)
        tokenize_splits(
            params, {"train": chosen, "validation": chosen.head(32), "test": chosen.head(32)},
            work / "data",
        )  # fmt: skip
        calls = walk(params, work)
    stays = [m for i, m in enumerate(calls) if i == 0 or calls[i - 1] != m]
    print(json.dumps({
        "modules": sorted(set(stays)),
        "n_modules": len(set(stays)),
        "stays": len(stays),
        "back_to_stage": sum(m == STAGE for m in stays[1:]),
        "walk": stays,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
