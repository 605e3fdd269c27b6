"""Stage ``tokenize``: turn the prepared splits into model inputs with the model's tokenizer.

Reads ``task``, ``model.name_or_path``, ``tracking.uri`` and ``tokenize`` from ``params.yaml``
and ``data/prepared/{train,validation,test}.parquet``. Writes ``data/tokenized/`` (one
Hugging Face dataset per split, unpadded: batches are padded when they are made) with
``manifest.json`` (tokenizer identity, label map, counts, truncation, token lengths), and
``reports/tokenize.json`` (the counts, as DVC metrics).

Text classification: each text is truncated to ``tokenize.max_length`` sub-tokens.
Token classification: words are split into sub-tokens; each word's tag goes on its first
sub-token, ``-100`` (ignored by the loss) on the others and on special tokens. Examples
longer than ``max_length`` are truncated and counted, never silently; words cut off are
counted per split, and above ``tokenize.max_unpredicted_share`` of validation or test the
stage fails. ``max_length: auto`` (the default) is the 99.9th percentile of train's
sub-token lengths (text) or the longest (token tasks: a cut word is never predicted),
rounded up to a multiple of 8, capped at the encoder's limit; the choice and its reason are
in the manifest (``max_length_choice``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

from tasks.core.batching import percentiles
from tasks.core.cli import stage_command
from tasks.core.config import DEFAULT_PARAMS, Params, load_params, require_tracked_inputs
from tasks.core.environment import PROJECT_ROOT, STATE_DIR
from tasks.core.errors import StageError
from tasks.core.io import replace_dir, write_json
from tasks.core.labels import check_iob2, entity_type, iob2_tags
from tasks.core.model import load_tokenizer, quiet_transformers, resolve_model_source, vocab_hash
from tasks.core.progress import Progress

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
PREPARED_DIR = PROJECT_ROOT / "data" / "prepared"
TOKENIZED_DIR = PROJECT_ROOT / "data" / "tokenized"
REPORT_PATH = PROJECT_ROOT / "reports" / "tokenize.json"
MANIFEST = "manifest.json"
COLUMNS = {
    "text_classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
}

app = typer.Typer(add_completion=False, help=__doc__)


# --- input ------------------------------------------------------------------------------------


def read_prepared(prepared_dir: Path, task: str) -> dict[str, Any]:
    """The three prepared splits as DataFrames.

    Raises:
        StageError: a split is missing, empty, or lacks the task's columns.
    """
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


def _where(row: Any, split: str) -> str:
    if row.get("source_file") is not None and row.get("source_line", -1) != -1:
        return f"{split} split ({row['source_file']}:{row['source_line']})"
    return f"{split} split"


def build_labels(task: str, frames: dict[str, Any]) -> list[str]:
    """The label map, built from train: sorted labels, or the IOB2 tag list of the entity
    types seen in train (``O``, then ``B-``/``I-`` per type).

    Raises:
        StageError: a validation/test label (or entity type) never occurs in train, or a
            tag is not IOB2.
    """
    if task == "text_classification":
        known = sorted({str(x) for x in frames["train"]["label"]})
        for split in ("validation", "test"):
            frame = frames[split]
            unseen = sorted({str(x) for x in frame["label"]} - set(known))
            if unseen:
                row = frame[frame["label"].astype(str) == unseen[0]].iloc[0]
                raise StageError(
                    f"{_where(row, split)}: label {unseen[0]!r} does not occur in train, so the "
                    f"model cannot learn it (train labels: {', '.join(known)}; unseen: "
                    f"{', '.join(map(repr, unseen))})"
                )
        return known
    types: dict[str, set[str]] = {}
    for split in SPLITS:
        seen: set[str] = set()
        for row in frames[split].to_dict("records"):
            for tag in row["tags"]:
                check_iob2(str(tag), _where(row, split))
                if (kind := entity_type(str(tag))) is not None:
                    seen.add(kind)
        types[split] = seen
    for split in ("validation", "test"):
        unseen = sorted(types[split] - types["train"])
        if unseen:
            raise StageError(
                f"{split} split: entity type(s) {', '.join(map(repr, unseen))} do not occur in "
                f"train (train types: {', '.join(sorted(types['train'])) or 'none'})"
            )
    return iob2_tags(types["train"])


# --- encoding ---------------------------------------------------------------------------------


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Sub-token labels: a word's label on its first sub-token, -100 on the rest and on
    special tokens (``word_ids`` is ``None`` there)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(-100)
        else:
            labels.append(word_labels[word])
        previous = word
    return labels


def _encode_once(
    tokenizer: Any, inputs: list, max_length: int, full: Any = None, **kwargs: Any
) -> tuple[dict[str, list], tuple[list, list], list[int]]:
    """Tokenize ``inputs`` once without truncation (the full lengths are statistics), then
    re-encode with truncation only the rows longer than ``max_length``: usually none, so the
    data is tokenized once instead of twice (the library's path for both would be two passes).
    ``full``: that untruncated encoding when the caller has it already (``max_length: auto``).

    Returns the model columns (truncated), the word ids per row before and after truncation,
    and the full lengths."""
    if full is None:
        full = tokenizer(inputs, truncation=False, **kwargs)
    columns = {key: list(values) for key, values in full.items()}
    full_lengths = [len(ids) for ids in columns["input_ids"]]
    full_word_ids = [full.word_ids(i) for i in range(len(inputs))]
    kept_word_ids = list(full_word_ids)
    long_rows = [i for i, n in enumerate(full_lengths) if n > max_length]
    if long_rows:
        cut = tokenizer(
            [inputs[i] for i in long_rows], truncation=True, max_length=max_length, **kwargs
        )
        for j, i in enumerate(long_rows):
            for key in columns:
                columns[key][i] = cut[key][j]
            kept_word_ids[i] = cut.word_ids(j)
    return columns, (full_word_ids, kept_word_ids), full_lengths


def model_inputs(task: str, frame: Any) -> tuple[list, dict[str, Any]]:
    """What the tokenizer is given for a split: texts, or word lists (and its keywords)."""
    if task == "text_classification":
        return [str(t) for t in frame["text"]], {}
    return [[str(w) for w in tokens] for tokens in frame["tokens"]], {"is_split_into_words": True}


def encode_texts(
    tokenizer: Any, frame: Any, label2id: dict[str, int], max_length: int, full: Any = None
) -> tuple[dict[str, list], dict[str, Any]]:
    """Columns of the text dataset and this split's statistics."""
    texts, _ = model_inputs("text_classification", frame)
    columns, _, full_lengths = _encode_once(tokenizer, texts, max_length, full)
    columns["labels"] = [label2id[str(x)] for x in frame["label"]]
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    columns["text"] = texts
    columns["label"] = [str(x) for x in frame["label"]]
    stats = {
        "examples": len(texts),
        "truncated": sum(n > max_length for n in full_lengths),
        "token_length": percentiles(full_lengths),
    }
    return columns, stats


def encode_words(
    tokenizer: Any, frame: Any, tag2id: dict[str, int], max_length: int, full: Any = None
) -> tuple[dict[str, list], dict[str, Any]]:
    """Columns of the token-classification dataset and this split's statistics.

    ``word_ids`` keeps, per sub-token, the index of its word (-1 for special tokens), so
    evaluate can map predictions back to words. ``words_past_max_length`` counts the words
    truncation removed: the model never predicts them."""
    words, kwargs = model_inputs("token_classification", frame)
    tags = [[str(t) for t in ts] for ts in frame["tags"]]
    columns, (full_word_ids, kept_word_ids), full_lengths = _encode_once(
        tokenizer, words, max_length, full, **kwargs
    )
    columns["labels"], columns["word_ids"] = [], []
    unaligned = cut = 0
    for sentence_tags, full_ids, word_ids in zip(tags, full_word_ids, kept_word_ids, strict=True):
        columns["labels"].append(align_labels(word_ids, [tag2id[t] for t in sentence_tags]))
        columns["word_ids"].append([-1 if w is None else w for w in word_ids])
        # Words that no sub-token represents (e.g. only control characters) get no label.
        covered = {w for w in full_ids if w is not None}
        unaligned += len(sentence_tags) - len(covered)
        cut += len(covered - {w for w in word_ids if w is not None})
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    columns["tokens"] = words
    columns["tags"] = tags
    stats = {
        "examples": len(words),
        "truncated": sum(n > max_length for n in full_lengths),
        "words": sum(len(t) for t in tags),
        "words_without_subtokens": unaligned,
        "words_past_max_length": cut,
        "token_length": percentiles(full_lengths),
    }
    return columns, stats


# --- the stage --------------------------------------------------------------------------------


def tokenize(
    params: Params,
    prepared_dir: Path = PREPARED_DIR,
    output_dir: Path = TOKENIZED_DIR,
    report_path: Path = REPORT_PATH,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Tokenize the prepared splits; write the datasets, the manifest and the report.

    Args:
        params: validated parameters (``task``, ``model``, ``tracking``, ``tokenize``).
        prepared_dir: holds ``{train,validation,test}.parquet`` from prepare.
        output_dir: receives one dataset per split and ``manifest.json`` (replaced whole,
            only once everything succeeded).
        report_path: DVC metrics file with the counts.
        state_dir: cache for registered models (``models:/...``).

    Returns:
        The manifest.
    """
    import datasets

    quiet_transformers()
    frames = read_prepared(Path(prepared_dir), params.task)
    labels = build_labels(params.task, frames)
    label2id = {label: i for i, label in enumerate(labels)}
    source = resolve_model_source(params.model.name_or_path, params.tracking.uri, state_dir)
    tokenizer = load_tokenizer(source)
    limit = encoder_limit(tokenizer, source)
    full_train = None
    if params.tokenize.max_length == "auto":
        inputs, kwargs = model_inputs(params.task, frames["train"])
        full_train = tokenizer(inputs, truncation=False, **kwargs)  # reused for train below
        lengths = [len(x) for x in full_train["input_ids"]]
        max_length, choice = auto_max_length(lengths, limit, params.task)
    else:
        max_length = params.tokenize.max_length
        choice = {"setting": max_length, "reason": "set by tokenize.max_length"}
    encode = encode_texts if params.task == "text_classification" else encode_words

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

    if params.task == "token_classification":
        check_unpredicted(stats, max_length, limit, params.tokenize.max_unpredicted_share)
    manifest = {
        "task": params.task,
        "max_length": max_length,
        "max_length_choice": choice,  # the setting, and for auto the statistic and the cap
        "tokenizer": {
            "name_or_path": source.spec,
            "registry_version": source.registry_version,
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer.get_vocab()),
            "vocab_sha256": vocab_hash(tokenizer),
            "model_input_names": list(tokenizer.model_input_names),
        },
        "labels": labels,
        "label2id": label2id,
        "counts": {split: stats[split]["examples"] for split in SPLITS},
        "truncated": {split: stats[split]["truncated"] for split in SPLITS},
        "splits": stats,
    }
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary directory
    try:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        _stable_fingerprints(tmp)
        write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


# tokenize.max_length auto: this percentile of train's lengths. Token tasks take the longest
# (100): a word past max_length is never predicted, and on CoNLL-2003 with the default
# encoder the 99.9th percentile (72) would cut 0.44% of the test words (206 of 46,435) where
# train's longest (164 -> 168) cuts none; with batches padded per batch and grouped by length
# the longer limit costs only the few long sentences. Text tasks keep 99.9: a truncated text
# is still classified, from its first max_length sub-tokens.
AUTO_PERCENTILE = {"text_classification": 99.9, "token_classification": 100.0}
NO_LIMIT = 1_000_000  # a tokenizer without a length limit reports int(1e30)


def encoder_limit(tokenizer: Any, source: Any) -> dict[str, Any] | None:
    """The most sub-tokens the encoder takes: the smaller of the tokenizer's
    ``model_max_length`` and the model's ``max_position_embeddings`` (RoBERTa's 514 holds
    2 padding offsets), with where it comes from; ``None`` when neither is known."""
    from transformers import AutoConfig

    limits = {}
    if 0 < int(tokenizer.model_max_length) < NO_LIMIT:
        limits["the tokenizer's model_max_length"] = int(tokenizer.model_max_length)
    try:
        config = AutoConfig.from_pretrained(str(source.model_dir))
    except (OSError, ValueError):
        config = None
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits["the model's max_position_embeddings"] = positions
    if not limits:
        return None
    where = min(limits, key=lambda k: limits[k])
    return {"value": limits[where], "source": where}


def auto_max_length(
    lengths: list[int], limit: dict[str, Any] | None, task: str = "text_classification"
) -> tuple[int, dict]:
    """``tokenize.max_length: auto``: the ``AUTO_PERCENTILE`` of train's sub-token lengths
    (an observed length: 99.9th for text, the longest for token tasks), rounded up to a
    multiple of 8 (tensor-core friendly), at least 8, at most the encoder's limit. Returns the
    value and the record of why (for the manifest)."""
    import numpy as np

    q = AUTO_PERCENTILE[task]
    percentile = int(np.percentile(np.asarray(lengths), q, method="higher"))
    value = max(8, -(-percentile // 8) * 8)
    record: dict[str, Any] = {
        "setting": "auto",
        "percentile": q,
        "train_length_at_percentile": percentile,
        "train_max": max(lengths),
        "encoder_limit": limit,
    }
    what = f"the {q:g}th percentile of train's sub-token lengths ({percentile})"
    if limit is not None and value > limit["value"]:
        value = limit["value"]
        record["reason"] = f"{what} is above the encoder's limit, {limit['value']} "
        record["reason"] += f"({limit['source']})"
    else:
        record["reason"] = f"{what}, rounded up to a multiple of 8"
    return value, record


def check_unpredicted(
    stats: dict[str, Any], max_length: int, limit: dict[str, Any] | None, max_share: float
) -> None:
    """Token task: words past ``max_length`` are never predicted (evaluate scores them as
    ``O``). A warning names the counts and the key; a validation or test share above
    ``tokenize.max_unpredicted_share`` fails the stage (the scores would describe a model
    that never saw part of the data).

    Raises:
        StageError: naming the split, the counts, the keys to change and a value.
    """
    problems = []
    for split in SPLITS:
        cut, words = stats[split]["words_past_max_length"], stats[split]["words"]
        if not cut:
            continue
        share = cut / words if words else 0.0
        longest = int(stats[split]["token_length"].get("max", max_length))
        covering = -(-longest // 8) * 8
        if limit is not None:
            covering = min(covering, limit["value"])
        log.warning(
            "%s: %d of %d words (%.2f%%) lie past tokenize.max_length=%d and are never "
            "predicted%s; tokenize.max_length: %d would keep %s",
            split, cut, words, 100 * share, max_length,
            "" if split == "train" else " (scored as O)", covering,
            "all of them" if covering >= longest else "as many as the encoder can",
        )  # fmt: skip
        if split != "train" and share > max_share:
            problems.append(f"{split} split: {cut} of {words} words ({share:.1%})")
    if problems:
        raise StageError(
            f"{'; '.join(problems)} lie past tokenize.max_length={max_length} and would never "
            f"be predicted (scored as O), more than tokenize.max_unpredicted_share="
            f"{max_share}. Raise tokenize.max_length (auto chooses from train's lengths, up to "
            "the encoder's limit), or accept the loss by raising tokenize.max_unpredicted_share"
        )


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
    """Replace the random fingerprints ``datasets`` writes into ``state.json`` by a hash of
    the data, so the same input gives byte-identical outputs and DVC skips later stages."""
    for state_file in sorted(directory.glob("*/state.json")):
        digest = hashlib.sha256()
        for data_file in sorted(state_file.parent.glob("*.arrow")):
            digest.update(data_file.read_bytes())
        state = json.loads(state_file.read_text())
        state["_fingerprint"] = digest.hexdigest()[:16]
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_manifest(tokenized_dir: Path, task: str | None = None) -> dict[str, Any]:
    """The manifest of the tokenized data; with ``task``, checked to describe that task's data
    (the one "this data holds task X" check of tune, train and evaluate).

    Raises:
        StageError: no manifest (tokenize has not run), or data of another task.
    """
    manifest_path = Path(tokenized_dir) / MANIFEST
    if not manifest_path.is_file():
        raise StageError(f"{manifest_path}: not found (run the tokenize stage first)")
    manifest = json.loads(manifest_path.read_text())
    if task is not None and manifest["task"] != task:
        raise StageError(
            f"{tokenized_dir} holds {manifest['task']} data but task is {task} (re-run tokenize)"
        )
    return manifest


def load_tokenized(
    tokenized_dir: Path, task: str | None = None, splits: tuple[str, ...] = SPLITS
) -> tuple[Any, dict[str, Any]]:
    """The tokenized splits (a ``DatasetDict`` of ``splits`` only: tune never opens test) and
    the manifest (checked against ``task`` when given: ``read_manifest``).

    Raises:
        StageError: the manifest or a split is missing, a split is empty, or the data is of
            another task.
    """
    import datasets

    tokenized_dir = Path(tokenized_dir)
    manifest = read_manifest(tokenized_dir, task)
    data = datasets.DatasetDict()
    for split in splits:
        try:
            data[split] = datasets.load_from_disk(str(tokenized_dir / split))
        except FileNotFoundError as exc:
            raise StageError(f"{tokenized_dir / split}: {exc} (re-run tokenize)") from None
        if len(data[split]) == 0:
            raise StageError(f"{tokenized_dir}: the {split} split is empty")
    return data, manifest


@app.command()
@stage_command("tokenize")
def main(
    params_path: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read"),
    prepared_dir: Path = typer.Option(PREPARED_DIR, help="prepared parquet splits"),
    output_dir: Path = typer.Option(TOKENIZED_DIR, help="where the tokenized datasets go"),
    report_path: Path = typer.Option(REPORT_PATH, "--report", help="DVC metrics file"),
    state_dir: Path = typer.Option(STATE_DIR, help="cache for registered models"),
) -> None:
    """Tokenize data/prepared into data/tokenized (see the module docstring)."""
    from tasks.core import tracking

    params = load_params(params_path)
    # Before the model is read: a local start point must be in models/pretrained/.
    require_tracked_inputs(params, PROJECT_ROOT, ["model.name_or_path"])
    # The first stage that logs: it opens the pipeline's parent run, RUNNING from here on.
    with tracking.stage_run(params, "tokenize", state_dir):
        tracking.log_numbers(tokenize(params, prepared_dir, output_dir, report_path, state_dir))


if __name__ == "__main__":
    app()
