"""Shared entry-point plumbing: every stage is a Typer command with the same error handling."""

from __future__ import annotations

import errno
import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

from tasks.config import ParamsError
from tasks.errors import StageError

# A write that failed for want of space: a full disk, a file size limit, a disk quota.
FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


# The same, as written by libraries that wrap the OS error in their own exception (e.g.
# safetensors, saving a checkpoint: "I/O error: File too large (os error 27)").
_CODES = "|".join(str(code) for code in sorted(FULL_DISK))
FULL_DISK_TEXT = re.compile(
    rf"\(os error (?:{_CODES})\)|No space left on device|File too large|Disk quota exceeded"
)


def full_disk_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that says a write found no space, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            return exc
        if FULL_DISK_TEXT.search(str(exc)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def full_disk_message(exc: BaseException) -> str:
    """One line for a write that found no space: what failed and what is kept."""
    filename = getattr(exc, "filename", None)
    where = f" writing {filename}" if filename else ""
    what = getattr(exc, "strerror", None) or " ".join(str(exc).split())
    return (
        f"{what}{where}: free disk space (or raise the size limit) and run the "
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
            except Exception as exc:
                cause = full_disk_cause(exc)
                if cause is None:
                    raise
                print(f"{stage}: error: {full_disk_message(cause)}", file=sys.stderr)
                sys.exit(1)

        return wrapper

    return decorate
