"""Models from the Hugging Face Hub (or a mirror named by ``HF_ENDPOINT``), pinned by commit.

``model.name_or_path: ORG/NAME`` with ``model.revision: <commit sha>`` names one immutable
set of files, so DVC's params are the whole truth about the weights. That revision is
downloaded once into the Hugging Face cache; later stages never touch the network.

Security: only configuration, tokenizer and weight files are fetched (never a ``.py`` file;
safetensors when present), never ``trust_remote_code``; a model that exists only as its own
code is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tasks.core.config import COMMIT_SHA
from tasks.core.errors import HubError, StageError
from tasks.core.tracked_inputs import PIN_COMMAND

log = logging.getLogger(__name__)

# What a fine-tuning start point needs (top-level files; BIN_WEIGHTS only without safetensors).
CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
]
SAFE_WEIGHTS = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
BIN_WEIGHTS = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
SAFE_PATTERNS = CONFIG_FILES + TOKENIZER_FILES + SAFE_WEIGHTS


def hub_cache_dir(state_dir: Path) -> Path:
    """``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``state_dir/hf/hub`` (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or state_dir / "hf") / "hub"


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` (a mirror, or the tests' local hub), else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def snapshot(repo_id: str, revision: str, cache_dir: Path) -> Path:
    """The local folder of ``repo_id`` at commit ``revision``, from the cache or downloaded
    once into ``cache_dir``. HubError (one line with the fix) when neither works; StageError
    for a model that needs its own code."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"model.name_or_path: {repo_id!r} at model.revision {revision}"
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=SAFE_PATTERNS,
                local_files_only=True,
            )
        )
        if _has_weights(folder):
            _refuse_remote_code(folder, where)
            return folder
    except LocalEntryNotFoundError:
        pass  # not cached (or an interrupted download): fetch it
    if _offline():
        raise HubError(
            f"{where}: not in the Hugging Face cache ({cache_dir}) and HF_HUB_OFFLINE is set: "
            "unset it for one run to download the model"
        )
    folder = _download(repo_id, revision, cache_dir, where)
    _refuse_remote_code(folder, where)
    return folder


def _download(repo_id: str, revision: str, cache_dir: Path, where: str) -> Path:
    """Download the start-point files of ``repo_id`` at ``revision`` (the only network use)."""
    import httpx2  # huggingface_hub's HTTP client: its connection errors are not OSErrors
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    log.info("downloading %s at %s from %s into %s", repo_id, revision, endpoint, cache_dir)
    try:
        # one request first: an unreachable hub fails fast; the file list picks the weights
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
        names = [sibling.rfilename for sibling in info.siblings or []]
        safe = any(name.endswith(".safetensors") for name in names)
        patterns = SAFE_PATTERNS if safe else CONFIG_FILES + TOKENIZER_FILES + BIN_WEIGHTS
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            endpoint=endpoint,
        )
    except RevisionNotFoundError:
        raise HubError(
            f"{where}: {endpoint} has no such revision: run `{PIN_COMMAND} {repo_id}`"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{where}: {endpoint} has no such model (or it is private: log in with `hf auth "
            "login` or set HF_TOKEN)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, httpx2.HTTPError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise HubError(
            f"{where}: not in the Hugging Face cache ({cache_dir}) and {endpoint} cannot be "
            f"reached ({type(exc).__name__}: {reason}): connect once to download it, set "
            "HF_ENDPOINT to a reachable mirror, or copy the model into models/pretrained/ and "
            "point model.name_or_path at it"
        ) from None
    folder = Path(folder)
    if not _has_weights(folder):
        raise HubError(
            f"{where}: the revision holds no config.json with safetensors or PyTorch weights"
        )
    return folder


def _has_weights(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    weights = any(n.endswith(".safetensors") or n.endswith(".bin") for n in names)
    return "config.json" in names and weights


def _refuse_remote_code(folder: Path, where: str) -> None:
    """Refuse a model whose architecture is only its own code (a model type transformers does
    not know); with a known type, ``auto_map`` is ignored."""
    from transformers import CONFIG_MAPPING

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") in CONFIG_MAPPING:
        if config.get("auto_map"):
            log.warning("%s: its auto_map (custom code) is ignored", where)
        return
    raise StageError(
        f"{where}: model type {config.get('model_type')!r} is not built into transformers "
        f"(the repository ships its own code{', auto_map' if config.get('auto_map') else ''}), "
        "which this project never runs (no trust_remote_code): choose a model transformers "
        "supports"
    )


def resolve_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit sha that ``revision`` (default ``main``) of ``repo_id`` points at now;
    HubError when the hub cannot be reached or has no such model or revision."""
    import httpx2  # huggingface_hub's HTTP client: its connection errors are not OSErrors
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    name = f"{repo_id}@{revision or 'main'}"
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        raise HubError(f"{name}: {endpoint} has no such branch, tag or commit") from None
    except RepositoryNotFoundError:
        raise HubError(f"{name}: {endpoint} has no such model (or it is private)") from None
    except (HfHubHTTPError, OSError, httpx2.HTTPError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise HubError(
            f"{name}: cannot reach {endpoint} ({type(exc).__name__}: {reason}); set "
            "HF_ENDPOINT to a reachable mirror, or unset HF_HUB_OFFLINE"
        ) from None
    if not info.sha or not COMMIT_SHA.match(info.sha):
        raise HubError(f"{name}: {endpoint} returned no commit sha ({info.sha!r})")
    return info.sha
