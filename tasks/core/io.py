"""Atomic writes: every output a stage writes goes through these (a crash never leaves half
a file or folder)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A temporary folder untouched this long belongs to a killed process.
STALE_AFTER_S = 24 * 3600


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON, atomically."""
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=float) + "\n")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` atomically (never half a file, nor a
    leftover temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # per-process name; a plain open (not mkstemp) keeps umask permissions, not 0600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: never an empty file
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power loss
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename into it) to disk."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder entry under ``root`` to disk (before renaming it)."""
    for folder, _, files in os.walk(root):
        for name in files:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_dir(Path(folder))


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | tuple[str, ...]) -> None:
    """Write ``rows`` as a CSV with the header ``fields``, atomically, spreadsheet-safe."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(
        {k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in row.items()}
        for row in rows
    )
    write_atomic(path, text.getvalue())


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula (CSV
    injection, OWASP), unless it is a plain number."""
    if not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def write_figure(path: Path, figure: Any, **savefig: Any) -> None:
    """Save a matplotlib ``figure`` as PNG to ``path``, atomically."""
    image = io.BytesIO()
    figure.savefig(image, format="png", **savefig)
    write_atomic(path, image.getvalue())


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A new folder to write into that replaces ``target`` whole when the block succeeds;
    on an error ``target`` stays as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_files(out_dir: Path) -> Iterator[Path]:
    """A temporary folder whose files move into ``out_dir`` (each atomically) when the block
    succeeds; other files of ``out_dir`` stay; on an error nothing is moved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        staged = Path(tmp)
        yield staged
        fsync_tree(staged)  # the files on disk before they replace the old ones
        for path in staged.iterdir():
            os.replace(path, out_dir / path.name)
        fsync_dir(out_dir)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory to ``target``, flushed, replacing the old one."""
    fsync_tree(tmp)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    fsync_dir(target.parent)
    sweep_stale(target.parent.glob(f".{target.name}-*"))  # staged by killed runs


def sweep_stale(candidates: Iterable[Path], older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove and return the folders among ``candidates`` untouched for ``older_than_s``."""
    now, removed = time.time(), []
    for path in candidates:
        try:
            newest = max(
                (entry.stat().st_mtime for entry in path.rglob("*")), default=path.stat().st_mtime
            )
        except FileNotFoundError:
            continue
        if path.is_dir() and now - newest > older_than_s:
            shutil.rmtree(path, ignore_errors=True)
            hours = (now - newest) / 3600
            log.info("removed %s, left by a run that stopped %.0f h ago", path, hours)
            removed.append(path)
    return removed
