"""Shared entry-point plumbing: every stage is a Typer command with the same error handling."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from tasks.config import ParamsError
from tasks.errors import StageError

# A write that failed for want of space: a full disk, a file size limit, a disk quota.
FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def full_disk_message(exc: OSError) -> str:
    """One line for a write that found no space: what failed and what is kept."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return (
        f"{exc.strerror or exc}{where}: free disk space (or raise the size limit) and run the "
        "stage again; outputs are replaced only when complete, so the previous ones (and "
        "any earlier checkpoint) are kept"
    )


def stage_command(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a stage's ``main``: configure logging, and turn expected failures into a clear
    one-paragraph message on stderr and exit code 1 (no traceback for bad input)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            logging.basicConfig(
                level=logging.INFO,
                format=f"%(asctime)s {stage} %(levelname)s %(message)s",
                datefmt="%H:%M:%S",
            )
            try:
                return func(*args, **kwargs)
            except (StageError, ParamsError) as exc:
                print(f"{stage}: error: {exc}", file=sys.stderr)
                sys.exit(1)
            except OSError as exc:
                if exc.errno not in FULL_DISK:
                    raise
                print(f"{stage}: error: {full_disk_message(exc)}", file=sys.stderr)
                sys.exit(1)

        return wrapper

    return decorate
