"""Every user input is tracked by DVC: the data file in ``data/external/``, a local start
point in ``models/pretrained/``, a hub model pinned to a commit (checked before a stage reads
any input; the stages' own list is ``tasks.core.cli.STAGE_INPUTS``)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

from tasks.core.config import BUILTIN_ENCODERS, URI_SCHEME, Params, ParamsError
from tasks.core.paths import EXTERNAL_DATA_DIR, PRETRAINED_DIR

# An input outside DVC's tracked folders would be read, but its change would re-run nothing.
TRACKED_INPUTS = ("data.source", "model.name_or_path")


def untracked_inputs(
    params: Params,
    project_root: Path,
    keys: Iterable[str] = TRACKED_INPUTS,
    base: Path | None = None,
) -> list[str]:
    """The ``keys`` inputs of ``params`` that DVC does not track, one message (with the fix)
    per problem; empty when all are. A data file must lie in ``data/external/``, a local
    start point in ``models/pretrained/`` (links resolved; a link may point into DVC's cache).
    Nothing is read. ``base``: where relative paths start (default: the current directory).
    """
    root = Path(project_root).resolve()
    base = Path(base) if base is not None else Path.cwd()
    problems = []
    if "data.source" in keys and params.data.builtin is None:
        for split, path in params.data.source.files().items():
            key = "data.source." + ("path" if split == "all" else split)
            problem = _outside(key, str(path), base / path, root, EXTERNAL_DATA_DIR)
            problems += [problem] if problem else []
    if "model.name_or_path" not in keys or params.model.revision is not None:
        return problems  # (a hub model pinned by commit: the params are the whole input)
    spec = params.model.name_or_path
    if spec not in BUILTIN_ENCODERS and not URI_SCHEME.match(spec):
        path = Path(spec).expanduser()
        if is_hub_id(spec) and not (base / path).exists():
            return [*problems, unpinned_message(spec)]
        problem = _outside("model.name_or_path", spec, base / path, root, PRETRAINED_DIR)
        problems += [problem] if problem else []
    return problems


# A hub id: NAME or ORG/NAME (the hub's rule, huggingface_hub.utils.validate_repo_id).
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
PIN_COMMAND = "finetune model pin"


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` reads as a hub id (``NAME`` or ``ORG/NAME``), not a path or a URI."""
    return bool(HUB_ID.match(spec)) and ".." not in spec and "--" not in spec


def unpinned_message(spec: str) -> str:
    """The refusal for a hub id without ``model.revision``, naming the command that pins it."""
    return (
        f"model.name_or_path: {spec!r} is not a local directory; as a Hugging Face Hub model it "
        f"needs model.revision, a commit sha: run `{PIN_COMMAND} {spec}` (or "
        f"`{PIN_COMMAND} {spec} --revision BRANCH_OR_TAG`)"
    )


def require_tracked_inputs(
    params: Params, project_root: Path, keys: Iterable[str] = TRACKED_INPUTS
) -> None:
    """Raise ParamsError (a line per problem) unless every input in ``keys`` is tracked."""
    problems = untracked_inputs(params, project_root, keys)
    if problems:
        raise ParamsError("\n".join(problems))


def _outside(key: str, value: str, path: Path, root: Path, folder: Path) -> str | None:
    """The message for ``value`` (read as ``path``) unless it lies in ``root / folder``."""
    allowed = root / folder
    lexical = Path(os.path.normpath(path.absolute()))
    resolved = path.resolve()
    if resolved.is_relative_to(allowed):
        return None
    if lexical.is_relative_to(allowed) and _in_dvc_cache(resolved, root):
        return None
    where = f"{value!r}" if resolved == lexical else f"{value!r} (resolves to {resolved})"
    stages = "prepare" if folder == EXTERNAL_DATA_DIR else "tokenize, tune and train"
    copy = "cp" if folder == EXTERNAL_DATA_DIR else "cp -r"
    origin, target = shlex.quote(str(resolved)), (folder / resolved.name).as_posix()
    return (
        f"{key}: {where} is outside {folder.as_posix()}/: DVC does not track it, so {stages} "
        f"would not re-run when it changes. Bring it into the project and set {key}: "
        f"{target}, either as a copy:\n"
        f"    {copy} {origin} {shlex.quote(target)}\n"
        f"  or keeping its origin (`dvc update {shlex.quote(target + '.dvc')}` fetches it "
        "again after it changed):\n"
        f"    dvc import-url {origin} {shlex.quote(target)}"
    )


def _in_dvc_cache(path: Path, root: Path) -> bool:
    """Whether ``path`` is in the project's DVC cache (links made by ``cache.type: symlink``)."""
    if path.is_relative_to((root / ".dvc" / "cache").resolve()):
        return True
    if not (root / ".dvc").is_dir():
        return False
    with contextlib.suppress(Exception):  # not a DVC repository, or an unreadable config
        from dvc.repo import Repo  # only for this rare case: a configured cache.dir

        with Repo(str(root)) as repo:
            return path.is_relative_to(Path(repo.cache.local.path).resolve())
    return False
