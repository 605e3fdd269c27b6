"""Run a configuration as a DVC experiment: ``params.yaml`` and ``dvc.lock`` stay as they are.

Presets and the Prefect flow's ``overrides`` come through here, so an ad-hoc configuration
never changes what the next plain ``make run`` trains. ``dvc exp run --temp -n NAME -S ...``
runs the stages in a copy of the workspace and saves a git ref plus DVC-cached outputs; the
stages keep using the project's ``.state/`` (:func:`tasks.core.environment.state_dir`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import ParamsError, load_params
from tasks.core.errors import StageError
from tasks.core.paths import EXTERNAL_DATA_DIR, PRETRAINED_DIR

# The input folders (dvc.yaml deps): the only places data and start-point models come from.
INPUT_DIRS = (EXTERNAL_DATA_DIR.as_posix(), PRETRAINED_DIR.as_posix())
_STAGE_FAILED = re.compile(r"failed to reproduce '([^']+)'")
_EXIT_CODE = re.compile(r"exited with (\d+)")
_RAN = re.compile(r"Running stage '([^']+)'")
_CACHED = re.compile(r"Stage '([^']+)' is cached")
_EXP_REF = re.compile(r"^refs/exps/([0-9a-f]{2})/([0-9a-f]{38})/(.+)$")
# DVC notes every output the fresh copy lacks before the stages run: noise, not news.
_QUIET = ("No file hash info found",)


class ExperimentError(StageError):
    """The experiment could not start (no git commit, a data import failed) or failed."""

    def __init__(self, message: str, stage: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.stage, self.exit_code = stage, exit_code


@dataclass
class Experiment:
    """A finished experiment: its name, git ref target, baseline commit and what ran."""

    name: str
    rev: str
    baseline: str
    overrides: dict[str, Any]
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # stages restored from DVC's run cache
    seconds: float = 0.0
    output: str = ""

    def how_to_use(self) -> str:
        """What to run next: compare it, bring it into the workspace."""
        apply = f"dvc exp apply {self.name}"
        return (
            f"  {'dvc exp show':<28} # compare it with the workspace and other experiments\n"
            f"  {apply:<28} # bring its params, dvc.lock and outputs into the workspace"
        )


def set_param_args(params_file: Path, overrides: Mapping[str, Any]) -> list[str]:
    """``dvc exp run -S`` arguments that give ``params_file`` exactly ``overrides``, checked
    through DVC's own override code. Hydra merges a mapping into a mapping, so one that
    replaces a mapping is sent as ``~key`` then ``++key=value``. Raises ParamsError on a bad
    key or value (named) or one Hydra cannot express exactly."""
    expected = load_params(params_file, dict(overrides))  # names the bad key, before any work
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    args = []
    for dotted, value in overrides.items():
        current = _get_dotted(raw, dotted)
        if isinstance(current, dict) and isinstance(value, dict):
            args.append(f"~{dotted}")
        args.append(f"++{dotted}={_hydra_value(value, dotted)}")
        _set_dotted(raw, dotted, value)
    _check_round_trip(params_file, args, expected)
    return args


def _get_dotted(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _hydra_value(value: Any, key: str) -> str:
    """``value`` in Hydra's override grammar (strings always quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_hydra_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k}: {_hydra_value(v, f'{key}.{k}')}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ParamsError(f"{key}: cannot pass a {type(value).__name__} to dvc exp run -S")


def _check_round_trip(params_file: Path, args: list[str], expected: Any) -> None:
    """Raise ParamsError unless ``args`` applied by DVC to a copy gives ``expected``."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory(prefix="set-params-") as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(params_file, copy)
        try:
            apply_overrides(copy, args)
            got = load_params(copy)
        except (InvalidArgumentError, ParamsError) as exc:
            cause = exc.__cause__ or exc
            raise ParamsError(f"dvc exp run -S {' '.join(args)}: {cause}") from None
    if got != expected:
        raise ParamsError(f"dvc exp run -S {' '.join(args)} would not set the same params")


def _git(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)


def baseline_commit(project: Path) -> str:
    """``HEAD``, where experiments start; ExperimentError without a commit."""
    done = _git(project, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    if done.returncode != 0:
        raise ExperimentError(
            f"{project}: DVC experiments start from a git commit and there is none: "
            "commit the project first (git add -A && git commit)"
        )
    return done.stdout.strip()


def experiment_refs(project: Path) -> dict[str, tuple[str, str]]:
    """Every saved experiment of ``project``: name -> (its commit, its baseline commit)."""
    done = _git(project, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    found = {}
    for line in done.stdout.splitlines():
        rev, _, ref = line.partition(" ")
        match = _EXP_REF.match(ref)
        if match:
            found[match[3]] = (rev, match[1] + match[2])
    return found


def check_name(name: str) -> None:
    """Raise ExperimentError unless ``name`` is a valid git ref name (experiments are refs)."""
    done = subprocess.run(
        ["git", "check-ref-format", f"refs/exps/00/{'0' * 38}/{name}"], capture_output=True
    )
    if done.returncode != 0 or "/" in name:
        raise ExperimentError(f"{name!r} cannot name an experiment (it must be a git ref name)")


def unique_name(project: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... when an experiment already has that name."""
    taken = set(experiment_refs(project))
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def check_imports(imports: Mapping[str, str], where: str) -> None:
    """ParamsError (naming it) unless targets are ``data/external/*`` or ``models/pretrained/*``."""
    for target, source in imports.items():
        parts = Path(target).parts
        if len(parts) != 3 or "/".join(parts[:2]) not in INPUT_DIRS or ".." in parts:
            raise ParamsError(
                f"{where}: imports: {target!r}: the target must be data/external/NAME or "
                "models/pretrained/NAME (the input folders DVC tracks)"
            )
        if not isinstance(source, str) or not source:
            raise ParamsError(f"{where}: imports: {target}: expected a source path, got {source!r}")


def import_data(
    project: Path, imports: Mapping[str, str], on_line: Callable[[str], None] = print
) -> list[str]:
    """``dvc import-url`` each target unless done; the targets imported (ExperimentError)."""
    imported = []
    for target, source in imports.items():
        origin = Path(project, source).resolve()
        if not origin.exists():
            raise ExperimentError(f"cannot import {target}: its source {origin} does not exist")
        if (project / target).exists() and imported_from(project, target) == str(origin):
            continue
        command = [sys.executable, "-m", "dvc", "import-url", "--force", str(origin), target]
        on_line(f"importing {origin} -> {target} (dvc import-url)")
        done = subprocess.run(command, cwd=project, env=_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise ExperimentError(
                f"dvc import-url {origin} {target} failed:\n{done.stderr.strip()}"
            )
        imported.append(target)
    return imported


def imported_from(project: Path, target: str) -> str | None:
    """The source recorded in ``target``'s ``.dvc`` file, or None without one."""
    record = project / f"{target}.dvc"
    if not record.is_file():
        return None
    deps = (yaml.safe_load(record.read_text(encoding="utf-8")) or {}).get("deps") or [{}]
    return deps[0].get("path")


def uncommitted_inputs(project: Path) -> list[str]:
    """Untracked, unignored files in the input folders: the experiment's ``--copy-paths``."""
    done = _git(project, "ls-files", "--others", "--exclude-standard", "--", *INPUT_DIRS)
    return [line for line in done.stdout.splitlines() if line]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **(extra or {})}


def _run_streamed(
    command: list[str],
    project: Path,
    env: Mapping[str, str] | None,
    on_line: Callable[[str], None],
) -> tuple[str, int]:
    """Run ``command``, each non-noise line to ``on_line``; return (output, exit code)."""
    process = subprocess.Popen(
        command,
        cwd=project,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert process.stdout is not None
    with contextlib.closing(process.stdout):
        for line in process.stdout:
            lines.append(line)
            if line.strip() and not any(noise in line for noise in _QUIET):
                on_line(line.rstrip())
    process.wait()
    return "".join(lines), process.returncode


def _raise_if_failed(output: str, returncode: int, name: str) -> None:
    """Unless ``returncode`` is 0, raise ExperimentError: failed stage, exit code, log tail."""
    if returncode != 0:
        stages = _STAGE_FAILED.findall(output)
        codes = _EXIT_CODE.findall(output)
        stage = stages[-1] if stages else None
        exit_code = int(codes[-1]) if codes else None
        where = f" in stage '{stage}' (exit code {exit_code})" if stage else ""
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise ExperimentError(f"experiment {name} failed{where}:\n{tail}", stage, exit_code)


def run_experiment(
    project: Path,
    overrides: Mapping[str, Any],
    name: str,
    *,
    targets: Iterable[str] = (),
    imports: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] = print,
    env: Mapping[str, str] | None = None,
) -> Experiment:
    """Run ``project``'s pipeline with ``overrides`` (dotted keys, e.g. ``prepare.seed``) as
    DVC experiment ``name`` (suffixed when taken), ``targets`` only (default all), after
    bringing in ``imports`` (target: source); DVC's log lines go to ``on_line``. Raises
    ParamsError on a bad override (before any work), ExperimentError on no git commit, a
    failed import, or a failed stage (``stage`` and ``exit_code`` set)."""
    project = Path(project).resolve()
    overrides = dict(overrides)
    args = set_param_args(project / "params.yaml", overrides)
    check_imports(imports or {}, "imports")
    check_name(name)
    baseline = baseline_commit(project)
    name = unique_name(project, name)
    import_data(project, imports or {}, on_line)
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name]
    command += [f"--set-param={arg}" for arg in args]
    command += [f"--copy-paths={path}" for path in uncommitted_inputs(project)]
    command += list(targets)
    on_line(f"experiment {name}: {' '.join(f'{k}={v}' for k, v in overrides.items()) or '-'}")
    started = time.perf_counter()
    output, returncode = _run_streamed(command, project, env, on_line)
    _raise_if_failed(output, returncode, name)
    rev, _ = experiment_refs(project).get(name, ("", ""))
    return Experiment(
        name=name,
        rev=rev,
        baseline=baseline,
        overrides=overrides,
        ran=_RAN.findall(output),
        cached=_CACHED.findall(output),
        seconds=round(time.perf_counter() - started, 2),
        output=output,
    )
