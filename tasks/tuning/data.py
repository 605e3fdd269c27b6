"""What every tune trial trains and is scored on (never the test split), the trivial
baseline's score, and the configuration's fingerprint that names the study."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.core.config import Params
from tasks.core.data.batching import model_columns
from tasks.core.data.tokenized import load_tokenized
from tasks.core.modeling.training import metrics_function
from tasks.core.pretrained.model import ModelSource, load_matching_tokenizer, resolve_model_source
from tasks.tuning.study import FINGERPRINT_CHARS


@dataclass
class TuningData:
    """What every trial trains and evaluates on (train subset and validation only)."""

    task: str
    labels: list[str]
    metric: str
    source: ModelSource
    tokenizer: Any
    train: Any  # the stratified subset, model columns and length
    validation: Any
    train_examples: int
    fingerprint: str  # the configuration whose trials are comparable: names the study
    baseline: float = 0.0  # the metric of the trivial prediction on validation
    whole_train: Any = None  # the whole train split, as train (the finalists round)
    extra: dict[str, Any] = field(default_factory=dict)

    def on_whole_train(self) -> TuningData:
        """The same data with the whole train split in place of the share."""
        return replace(self, train=self.whole_train)


def stratified_subset(keys: list[Any], fraction: float, seed: int) -> list[int]:
    """Sorted indices of about ``fraction`` of the rows, per key (at least one), by ``seed``."""
    import random

    if fraction >= 1:
        return list(range(len(keys)))
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(repr(key), []).append(index)
    rng = random.Random(seed)
    chosen: list[int] = []
    for name in sorted(groups):
        members = groups[name]
        rng.shuffle(members)
        chosen += members[: max(1, round(len(members) * fraction))]
    return sorted(chosen)


def _strata(task: str, labels_column: list[Any], label_names: list[str]) -> list[Any]:
    """Stratification key per example: the label, or the sentence's first entity tag (``O``)."""
    if task == "text_classification":
        return list(labels_column)
    outside = label_names.index("O") if "O" in label_names else -1
    keys = []
    for row in labels_column:
        keys.append(next((label for label in row if label not in (-100, outside)), outside))
    return keys


def load_tuning_data(params: Params, tokenized_dir: Path, state_dir: Path) -> TuningData:
    """Train (a stratified ``train_fraction``) and validation; StageError for bad tokenized data."""
    task, tokenized_dir = params.task, Path(tokenized_dir)
    splits, manifest = load_tokenized(tokenized_dir, task, ("train", "validation"))
    source = resolve_model_source(
        params.model.name_or_path, params.tracking.uri, state_dir, params.model.revision
    )
    tokenizer = load_matching_tokenizer(source, manifest, tokenized_dir)
    labels: list[str] = manifest["labels"]
    full = splits["train"]
    tune = params.tune
    keep = stratified_subset(_strata(task, full["labels"], labels), tune.train_fraction, tune.seed)
    subset = full.select(keep) if len(keep) < len(full) else full
    validation = splits["validation"]
    metric = params.train.resolved_metric(task)
    data_prints = [_dataset_fingerprint(tokenized_dir / s, splits[s]) for s in splits]
    return TuningData(
        task=task,
        labels=labels,
        metric=metric,
        source=source,
        tokenizer=tokenizer,
        train=subset.select_columns([*model_columns(subset), "length"]),
        validation=validation,
        train_examples=len(full),
        fingerprint=_configuration(params, source, data_prints, labels, metric),
        baseline=trivial_baseline(task, list(validation["labels"]), labels, metric),
        whole_train=full.select_columns([*model_columns(full), "length"]),
    )


def _configuration(
    params: Params, source: ModelSource, data: list[str], labels: list[str], metric: str
) -> str:
    """The fingerprint of what makes two trials comparable (it names the study)."""
    tune = params.tune
    identity = {
        "task": params.task,
        "model": [source.spec, source.registry_version, *filter(None, [source.revision])],
        "data": data,
        "labels": labels,
        "metric": metric,
        "train": {
            k: v
            for k, v in params.train.model_dump(mode="json").items()
            if k not in tune.space and k not in ("resume", "save_steps", "logging_steps")
        },
        "space": {k: v.model_dump(mode="json") for k, v in tune.space.items()},
        "train_fraction": tune.train_fraction,
        "evals_per_epoch": tune.evals_per_epoch,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:FINGERPRINT_CHARS]


def trivial_baseline(task: str, gold: list[Any], labels: list[str], metric: str) -> float:
    """``metric`` of the best constant prediction (the top label, or no entities)."""
    import numpy as np
    from transformers import EvalPrediction

    if task == "text_classification":
        majority = max(sorted(set(gold)), key=gold.count)
        predicted: Any = np.full(len(gold), majority)
        gold_array: Any = np.asarray(gold)
    else:
        outside = labels.index("O") if "O" in labels else 0
        width = max(len(row) for row in gold)
        gold_array = np.full((len(gold), width), -100)
        for i, row in enumerate(gold):
            gold_array[i, : len(row)] = row
        predicted = np.full_like(gold_array, outside)
    scores = metrics_function(task, labels)(EvalPrediction(predicted, gold_array))
    return float(scores[metric])


def _dataset_fingerprint(directory: Path, dataset: Any) -> str:
    """The content fingerprint tokenize stores in ``state.json``."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((directory / "state.json").read_text())["_fingerprint"]
    return str(getattr(dataset, "_fingerprint", ""))
