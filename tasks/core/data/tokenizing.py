"""Tokenize the prepared splits into model inputs (the ``tokenize`` stage's work; its contract
is in ``tasks/tokenize.py``)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tasks.core.config import SPLITS, Params
from tasks.core.data.encoding import encode_texts, encode_words, model_inputs
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.io import staged_dir, write_json
from tasks.core.data.labels import build_labels
from tasks.core.pretrained.model import load_tokenizer, quiet_transformers, resolve_model_source, vocab_hash
from tasks.core.paths import PREPARED_DIR, REPORTS_DIR, TOKENIZED_DIR
from tasks.core.progress import Progress
from tasks.core.data.tokenized import MANIFEST
from tasks.core.data.truncation import auto_max_length, check_unpredicted, encoder_limit

log = logging.getLogger(__name__)
REPORT_PATH = REPORTS_DIR / "tokenize.json"
COLUMNS = {
    "text_classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
}


def read_prepared(prepared_dir: Path, task: str) -> dict[str, Any]:
    """The three prepared splits; StageError if one is missing, empty or lacks a column."""
    import pandas as pd

    frames = {}
    for split in SPLITS:
        path = prepared_dir / f"{split}.parquet"
        if not path.is_file():
            raise StageError(f"{path}: not found (run the prepare stage first)")
        frame = pd.read_parquet(path)
        missing = [c for c in COLUMNS[task] if c not in frame.columns]
        if missing:
            raise StageError(
                f"{path}: missing column(s) {', '.join(missing)} for {task} "
                f"(columns: {', '.join(map(str, frame.columns))})"
            )
        if frame.empty:
            raise StageError(f"{path}: the {split} split is empty")
        for column in ("source_file", "source_line"):
            if column not in frame.columns:
                frame[column] = None if column == "source_file" else -1
        frames[split] = frame.reset_index(drop=True)
    return frames


def tokenize(
    params: Params,
    prepared_dir: Path = PREPARED_DIR,
    output_dir: Path = TOKENIZED_DIR,
    report_path: Path = REPORT_PATH,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Tokenize the prepared splits; write the datasets and ``manifest.json`` into
    ``output_dir`` (replaced whole on success) and the counts to ``report_path``. Returns
    the manifest."""
    quiet_transformers()
    frames = read_prepared(Path(prepared_dir), params.task)
    labels = build_labels(params.task, frames)
    label2id = {label: i for i, label in enumerate(labels)}
    source = resolve_model_source(
        params.model.name_or_path, params.tracking.uri, state_dir, params.model.revision
    )
    tokenizer = load_tokenizer(source)
    limit = encoder_limit(tokenizer, source)
    max_length, choice, full_train = _choose_max_length(params, tokenizer, frames, limit)
    splits, stats = _encode_splits(params, tokenizer, frames, label2id, max_length, full_train)
    if params.task == "token_classification":
        _check_word_coverage(params, stats, max_length, limit)
    manifest = _manifest(params, source, tokenizer, labels, max_length, choice, stats)
    _save(Path(output_dir), splits, manifest)
    write_json(Path(report_path), _report(manifest))
    log.info(
        "tokenized %s with %s (max_length %d, %d labels) into %s",
        ", ".join(f"{s} {manifest['counts'][s]}" for s in SPLITS),
        source.spec,
        max_length,
        len(labels),
        output_dir,
    )
    return manifest


def _manifest(
    params: Params,
    source: Any,
    tokenizer: Any,
    labels: list[str],
    max_length: int,
    choice: dict[str, Any],
    stats: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """``manifest.json``'s content."""
    return {
        "task": params.task,
        "max_length": max_length,
        "max_length_choice": choice,  # the setting, and for auto the statistic and the cap
        "context_tokens": params.tokenize.context_tokens,
        "tokenizer": {
            "name_or_path": source.spec,
            "registry_version": source.registry_version,
            "revision": source.revision,
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer.get_vocab()),
            "vocab_sha256": vocab_hash(tokenizer),
            "model_input_names": list(tokenizer.model_input_names),
        },
        "labels": labels,
        "label2id": {label: i for i, label in enumerate(labels)},
        "counts": {split: stats[split]["examples"] for split in SPLITS},
        "truncated": {split: stats[split]["truncated"] for split in SPLITS},
        "splits": stats,
    }


def _choose_max_length(
    params: Params, tokenizer: Any, frames: dict[str, Any], limit: dict[str, Any] | None
) -> tuple[int, dict[str, Any], Any]:
    """(max_length, how it was chosen, the untruncated train encoding for ``auto`` or None)."""
    if params.tokenize.max_length == "auto":
        inputs, kwargs = model_inputs(params.task, frames["train"])
        full_train = tokenizer(inputs, truncation=False, **kwargs)  # reused for train below
        lengths = [len(x) for x in full_train["input_ids"]]
        max_length, choice = auto_max_length(lengths, limit, params.task)
        return max_length, choice, full_train
    max_length = params.tokenize.max_length
    return max_length, {"setting": max_length, "reason": "set by tokenize.max_length"}, None


def _encode_splits(
    params: Params,
    tokenizer: Any,
    frames: dict[str, Any],
    label2id: dict[str, int],
    max_length: int,
    full_train: Any,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(one ``datasets.Dataset`` per split, its statistics); warns about truncation."""
    import datasets

    encode = encode_texts
    if params.task == "token_classification":
        encode = functools.partial(encode_words, context_tokens=params.tokenize.context_tokens)
    splits, stats = {}, {}
    progress = Progress(sum(len(frames[split]) for split in SPLITS), "tokenize", "example")
    for split in SPLITS:
        frame = frames[split]
        full = full_train if split == "train" else None
        columns, stats[split] = encode(tokenizer, frame, label2id, max_length, full)
        progress.update(advance=len(frame), split=split)
        columns["source_file"] = [None if x is None else str(x) for x in frame["source_file"]]
        columns["source_line"] = [int(x) for x in frame["source_line"]]
        splits[split] = datasets.Dataset.from_dict(columns)
        if stats[split]["truncated"]:
            log.warning(
                "%s: %d of %d examples are longer than tokenize.max_length=%d and were truncated",
                split,
                stats[split]["truncated"],
                stats[split]["examples"],
                max_length,
            )
    return splits, stats


def _check_word_coverage(
    params: Params, stats: dict[str, dict[str, Any]], max_length: int, limit: dict[str, Any] | None
) -> None:
    """Raise when too many words lost their prediction to truncation; warn about context
    tokens without documents."""
    check_unpredicted(stats, max_length, limit, params.tokenize.max_unpredicted_share)
    alone = [s for s in SPLITS if params.tokenize.context_tokens and not
             stats[s]["context"]["documents"]]  # fmt: skip
    if alone:
        log.warning(
            "tokenize.context_tokens=%d: %s without documents (no -DOCSTART- lines): "
            "its sentences are encoded without context",
            params.tokenize.context_tokens,
            ", ".join(alone),
        )


def _save(output_dir: Path, splits: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The datasets and the manifest into ``output_dir``, replaced whole once all is written."""
    import datasets

    with staged_dir(output_dir) as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        _stable_fingerprints(tmp)
        write_json(tmp / MANIFEST, manifest)


def _report(manifest: dict[str, Any]) -> dict[str, Any]:
    splits = manifest["splits"]
    return {
        "max_length": manifest["max_length"],
        "labels": len(manifest["labels"]),
        "examples": manifest["counts"],
        "truncated": manifest["truncated"],
        "truncated_share": {
            s: round(v["truncated"] / v["examples"], 6) for s, v in splits.items() if v["examples"]
        },
        "token_length_p95": {s: v["token_length"].get("p95") for s, v in splits.items()},
        **(
            {"words_past_max_length": {s: v["words_past_max_length"] for s, v in splits.items()}}
            if manifest["task"] == "token_classification"
            else {}
        ),
    }


def _stable_fingerprints(directory: Path) -> None:
    """Replace ``datasets``' random fingerprints by a hash of the data: byte-identical outputs
    for the same input, so DVC skips later stages."""
    for state_file in sorted(directory.glob("*/state.json")):
        digest = hashlib.sha256()
        for data_file in sorted(state_file.parent.glob("*.arrow")):
            digest.update(data_file.read_bytes())
        state = json.loads(state_file.read_text())
        state["_fingerprint"] = digest.hexdigest()[:16]
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
