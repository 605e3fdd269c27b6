"""Shared entry-point plumbing: every stage is a Typer command with the same error handling."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.core.config import Params, ParamsError, load_params
from tasks.core.environment import PROJECT_ROOT
from tasks.core.errors import StageError
from tasks.core.tracked_inputs import require_tracked_inputs

SEE_MODULE = " (see the module docstring)"


def help_text(func: Callable[..., Any]) -> str:
    """The command's ``--help``: its docstring, then :func:`user_help` of its module."""
    summary = plain(reflow(inspect.cleandoc(func.__doc__ or "").replace(SEE_MODULE, "")))
    summary = summary.replace("[", "\\[")  # `text[start:end]` is text, not rich markup
    module = user_help(sys.modules[func.__module__].__doc__ or "")
    return "\n\n".join(part for part in (summary, module) if part)


def user_help(doc: str) -> str:
    """A module docstring as ``--help`` text: its first paragraph and indented command
    examples, without reST markup, ``[`` escaped for rich; other paragraphs left out."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    indented = [p for p in paragraphs[1:] if all(ln.startswith("    ") for ln in p.splitlines())]
    text = reflow("\n\n".join([paragraphs[0], *indented]))
    return plain(text).replace("[", "\\[")


def plain(text: str) -> str:
    """``text`` without reST roles and double backquotes."""
    return re.sub(r":[a-z]+:`([^`]*)`", r"\1", text).replace("``", "")


def reflow(text: str) -> str:
    """Paragraphs as single lines; indented blocks (command examples) kept line by line."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.splitlines()
        if all(line.startswith("    ") for line in lines):
            paragraphs.append("\n".join(lines))
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


ParamsPath = Annotated[Path, typer.Option("--params", help="params.yaml to read")]


def relative_defaults(func: Callable[..., Any]) -> None:
    """Show path defaults inside the project relative to it in ``--help``; the values stay
    absolute."""
    # string annotations give new Option objects per evaluation: store the changed one
    hints = typing.get_type_hints(func, include_extras=True)
    for parameter in inspect.signature(func).parameters.values():
        default = parameter.default
        if not (isinstance(default, Path) and default.is_relative_to(PROJECT_ROOT)):
            continue
        for info in getattr(hints.get(parameter.name), "__metadata__", ()):
            if getattr(info, "show_default", None) is True:
                info.show_default = default.relative_to(PROJECT_ROOT).as_posix() or "."
                func.__annotations__[parameter.name] = hints[parameter.name]


# A write that failed for want of space: a full disk, a file size limit, a disk quota.
FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


# The same, as text of libraries that wrap the OS error (e.g. safetensors).
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


# The user's inputs each stage reads, checked to be tracked by DVC before any is read.
STAGE_INPUTS = {
    "prepare": ("data.source",),
    "tokenize": ("model.name_or_path",),
    "tune": ("model.name_or_path",),
    "train": ("model.name_or_path",),
}


def stage_params(path: Path, stage: str, project_root: Path = PROJECT_ROOT) -> Params:
    """``path`` loaded as ``stage``'s params, its :data:`STAGE_INPUTS` checked to be tracked
    (ParamsError otherwise, one line each)."""
    params = load_params(path)
    require_tracked_inputs(params, project_root, STAGE_INPUTS.get(stage, ()))
    return params


def stage_command(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a stage's ``main``: configure logging; expected failures (and a full disk)
    become one message on stderr and exit code 1, no traceback. Sets its ``--help``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        relative_defaults(func)

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

        wrapper.__doc__ = help_text(func)
        return wrapper

    return decorate
