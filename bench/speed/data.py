"""The benchmark's data: the reference corpora, a fixed sample, the product's tokenize stage
on it, and the tokenize stage's encode speed."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXED_LENGTH = 128  # the tutorial's padding="max_length"
TASK_OF = {"sst2": "text_classification", "conll2003": "token_classification"}
LABEL_OF = {"sst2": "SST-2", "conll2003": "CoNLL-2003"}


@dataclass
class Corpus:
    """One benchmark dataset: its train frame and (for the accuracy guard) its dev frame."""

    name: str
    task: str
    train: Any  # DataFrame: text,label or tokens,tags
    dev: Any | None
    origin: str


def _user_data(name: str, shared: Path, params: Any) -> tuple[Any, Path, Path]:
    """The ``data`` params that read ``name`` as a user file, and its train and dev paths."""
    if name == "sst2":
        data = params.data.model_copy(
            update={
                "format": "tsv",
                "text_column": "sentence",
                "label_column": "label",
                "group_column": None,
            }
        )
        return data, shared / "sst2" / "train.tsv", shared / "sst2" / "dev.tsv"
    conll = params.data.conll.model_copy(
        update={"token_column": 0, "tag_column": -1, "scheme": "iob2"}
    )
    data = params.data.model_copy(update={"format": "conll", "conll": conll})
    return data, shared / "conll2003" / "train.txt", shared / "conll2003" / "dev.txt"


def read_corpus(name: str, shared: Path, params: Any) -> Corpus | None:
    """SST-2 or CoNLL-2003 from ``shared``, read with the prepare stage's own reader."""
    from tasks.core.data.sources import read_user_file

    data, train, dev = _user_data(name, shared, params)
    if not train.is_file():
        print(f"skipping {name}: {train} not found", flush=True)
        return None
    frame = read_user_file(train, data, TASK_OF[name])
    dev_frame = read_user_file(dev, data, TASK_OF[name]) if dev.is_file() else None
    return Corpus(LABEL_OF[name], TASK_OF[name], frame, dev_frame, shown(train))


def read_default_corpus() -> Corpus | None:
    """The project's default data (``data/prepared``), used when ``../shared`` is absent."""
    import pandas as pd

    prepared = ROOT / "data" / "prepared"
    train = prepared / "train.parquet"
    if not train.is_file():
        print(f"skipping: no shared datasets and no {train} (run `make run` first)", flush=True)
        return None
    frame = pd.read_parquet(train)
    task = "text_classification" if "text" in frame.columns else "token_classification"
    dev_path = prepared / "validation.parquet"
    dev = pd.read_parquet(dev_path) if dev_path.is_file() else None
    return Corpus("default data", task, frame, dev, shown(train))


def shown(path: Path) -> str:
    """``path`` relative to the project (``../shared/...`` for the reference datasets)."""
    path = path.resolve()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    with contextlib.suppress(ValueError):
        return str(Path("..") / path.relative_to(ROOT.parent))
    return str(path)


def bench_params(args: Any, task: str) -> Any:
    """params.yaml for ``task``; every path sees the same sub-tokens (truncated at 128)."""
    from tasks.core.config import load_params

    overrides: dict[str, Any] = {
        "task": task,
        "train.resume": "never",  # a left-over scratch checkpoint must not be resumed
        "tokenize.max_length": FIXED_LENGTH,
        # The benchmark brings its own data: a built-in source of the other task would be
        # rejected by the params check, so name the benchmark's files instead.
        "data.source": {"path": "bench-sample"},
    }
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    if args.model:
        overrides["model.name_or_path"] = args.model
    if args.max_tokens:
        budget = None if args.max_tokens == "null" else args.max_tokens
        overrides["train.max_tokens_per_batch"] = int(budget) if str(budget).isdigit() else budget
    return load_params(args.params, overrides=overrides)


def sample(frame: Any, n: int, seed: int) -> Any:
    """A fixed random sample of ``n`` rows (all rows when there are fewer)."""
    return frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)


def tokenize_splits(params: Any, splits: dict[str, Any], work: Path) -> tuple[Any, dict, float]:
    """Run the product's tokenize stage on ``splits``; the datasets, manifest and its seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.core.data.tokenized import load_tokenized
    from tasks.core.data.tokenizing import tokenize

    prepared = work / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    keep = ["text", "label"] if params.task == "text_classification" else ["tokens", "tags"]
    for split, frame in splits.items():
        # Without pandas' metadata: it would name the Arrow list dtype of CoNLL columns
        # (read_user_file's), which pandas cannot read back; the lists read as prepare's do.
        table = pa.Table.from_pandas(frame[keep], preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), prepared / f"{split}.parquet")
    started = time.perf_counter()
    tokenize(params, prepared, work / "tokenized", work / "tokenize.json", work / "state")
    seconds = time.perf_counter() - started
    data, manifest = load_tokenized(work / "tokenized")
    return data, manifest, seconds


def time_tokenization(tokenizer: Any, corpus: Corpus, max_length: int, limit: int | None) -> dict:
    """Sentences/s of the tokenize stage's encode function on the train file (no imports)."""
    from tasks.core.data.encoding import encode_texts, encode_words
    from tasks.core.data.labels import entity_type, iob2_tags

    frame = corpus.train if not limit else corpus.train.head(limit)
    if corpus.task == "text_classification":
        encode = encode_texts
        mapping = {label: i for i, label in enumerate(sorted({str(x) for x in frame["label"]}))}
    else:
        encode = encode_words
        kinds = {entity_type(str(t)) for tags in frame["tags"] for t in tags} - {None}
        mapping = {tag: i for i, tag in enumerate(iob2_tags(kinds))}
    encode(tokenizer, frame.head(256), mapping, max_length)  # warm-up
    started = time.perf_counter()
    encode(tokenizer, frame, mapping, max_length)
    seconds = time.perf_counter() - started
    return {"function": encode.__name__, "sentences": len(frame), "seconds": seconds}
