"""Atomic writes: every output a stage writes goes through these (a crash never
leaves half a file)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` atomically (a crash never leaves half a report)."""
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=float) + "\n")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to a temporary file beside ``path``, then move it
    into place: a crash never leaves half a file, a failed write no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The process id in the name: two writers never share a temporary file. A plain open (not
    # mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | tuple[str, ...]) -> None:
    """Write ``rows`` as a CSV with the header ``fields`` (other keys ignored), atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def write_figure(path: Path, figure: Any, **savefig: Any) -> None:
    """Save a matplotlib ``figure`` as PNG to ``path``, atomically."""
    image = io.BytesIO()
    figure.savefig(image, format="png", **savefig)
    write_atomic(path, image.getvalue())


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
