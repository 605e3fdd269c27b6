"""DVC is the contract: every stage depends on the code it imports and the params it reads.

The code a stage imports is derived from the source (an ``ast`` walk from
``tasks/<stage>.py`` through every project import, lazy ones inside functions included).
The params a stage reads are recorded while ``dvc repro`` runs the real stages of a tiny
project: a ``sitecustomize`` hook in the stage processes notes every params field they read.
"""

from __future__ import annotations

import ast
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_project, run, set_params, toy_text_frame

PROJECT_PACKAGES = ("tasks", "flows")


def _stages(project: Path = ROOT) -> dict[str, dict]:
    return yaml.safe_load((project / "dvc.yaml").read_text())["stages"]


def _module_file(module: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tasks.core import tracking` imports the module tasks.core.tracking.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT_PACKAGES and _module_file(n)}
    return found


def code_closure(module: str) -> set[str]:
    """Files (relative to the project) of ``module`` and everything it imports, transitively,
    with the ``__init__.py`` of every package on the way."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            package = ".".join(parts[:depth])
            if package not in seen:
                seen.add(package)
                pending.append(package)
        path = _module_file(name)
        pending += [m for m in _imported_modules(path) if m not in seen] if path else []
    return {_module_file(m).relative_to(ROOT).as_posix() for m in seen if _module_file(m)}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", list(_stages()))
def test_stage_depends_on_exactly_the_code_it_imports(stage):
    spec = _stages()[stage]
    module = spec["cmd"].removeprefix("python -m ")
    assert spec["cmd"] == f"python -m {module}" and _module_file(module), spec["cmd"]
    needed = code_closure(module)
    deps = [d for d in spec["deps"] if isinstance(d, str)]
    missing = sorted(p for p in needed if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on {missing}"
    code_deps = [d for d in deps if d.endswith(".py")]
    unused = sorted(d for d in code_deps if d not in needed)
    assert not unused, f"dvc.yaml stage {stage!r} depends on code it never imports: {unused}"


def test_import_walk_follows_lazy_imports():
    """The walk sees imports inside functions (the CLI loads the flow only for --flow)."""
    assert "flows/pipeline.py" in code_closure("tasks.commands.main")
    closure = code_closure("tasks.register")
    assert {
        "tasks/core/evaluation/scoring.py",
        "tasks/core/data/tokenizing.py",
        "tasks/__init__.py",
    } <= closure
    assert "flows/pipeline.py" not in closure


def test_stages_never_import_stages():
    """What one stage needs of another's work lives in tasks/core (register re-scores with
    tasks.core.data.tokenizing and tasks.core.evaluation.scoring), so a stage's CLI changes only
    itself."""
    stages = {f"tasks/{name}.py" for name in _stages()}
    for stage in _stages():
        assert code_closure(f"tasks.{stage}") & stages == {f"tasks/{stage}.py"}, stage


# --- params each stage reads ------------------------------------------------------------------

# Installed into every Python process of the test project (PYTHONPATH). When tasks.core.config is
# imported, Section.__getattribute__ records each leaf field read (as its params key) and
# model_dump records every key it dumps. Reads while validating (load_params, overlays) and
# the dump that only logs params to MLflow (tracking.log_params) are not reads of an input.
RECORDER = """
import atexit, importlib.abc, importlib.util, json, os, sys, typing

READS = set()
QUIET = [0]


def _members(annotation):
    found = [annotation]
    for arg in typing.get_args(annotation):
        found += _members(arg)
    return found


def _install(config):
    from pydantic import BaseModel

    prefixes = {}

    def walk(model, prefix):
        prefixes[model] = prefix
        for name, field in model.model_fields.items():
            for member in _members(field.annotation):
                if isinstance(member, type) and issubclass(member, BaseModel):
                    walk(member, prefix + (field.alias or name) + ".")

    walk(config.Params, "")

    def key(cls, name):
        return prefixes[cls] + (cls.model_fields[name].alias or name)

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        cls = type(self)
        if not QUIET[0] and cls in prefixes and name in cls.model_fields:
            if not isinstance(value, BaseModel):
                READS.add(key(cls, name))
        return value

    def quietly(function):
        def wrapper(*args, **kwargs):
            QUIET[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                QUIET[0] -= 1
        return wrapper

    dump = config.Section.model_dump

    def model_dump(self, *args, **kwargs):
        caller = sys._getframe(1).f_code
        if not QUIET[0] and caller.co_name != "log_params" and type(self) in prefixes:
            READS.update(key(type(self), name) for name in type(self).model_fields)
        return quietly(dump)(self, *args, **kwargs)

    validate = config.Section.model_validate.__func__
    config.Section.__getattribute__ = getattribute
    config.Section.model_dump = model_dump
    config.Section.model_validate = classmethod(quietly(validate))
    config.Section.__init__ = quietly(config.Section.__init__)
    atexit.register(_save)


def _save():
    with open(os.environ["PARAMS_READ_LOG"], "a") as handle:
        handle.write(json.dumps({"argv0": sys.argv[0], "reads": sorted(READS)}) + "\\n")


class _WhenConfigLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tasks.core.config":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _install(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _WhenConfigLoads())
"""


def _covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(declared + ".")


@pytest.fixture(scope="module")
def recorded_reads(tmp_path_factory, tiny_model_dir) -> tuple[dict[str, set[str]], Path]:
    """Run the whole pipeline of a tiny project with the recorder; params read per stage."""
    base = tmp_path_factory.mktemp("reads")
    project = make_project(base / "project")
    toy_text_frame(200, seed=3)[["text", "label"]].to_csv(
        project / "data/external/toy.csv", index=False
    )
    shutil.copytree(tiny_model_dir, project / "models/pretrained/tiny")
    set_params(
        project,
        **{
            "data.source": {"path": "data/external/toy.csv"},
            "model.name_or_path": "models/pretrained/tiny",
            "tokenize.max_length": 32,
            "train.epochs": 1,
            "train.precision": "fp32",
            "tune.n_trials": 1,
            "tune.timeout": None,
            "tune.space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}},
            "register.min_score": 0.0,
        },
    )
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(RECORDER))
    log = base / "reads.jsonl"
    run(["dvc", "repro"], project, PYTHONPATH=str(hook), PARAMS_READ_LOG=str(log))
    reads: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        stage = Path(record["argv0"]).stem
        reads.setdefault(stage, set()).update(record["reads"])
    return reads, project


@pytest.mark.parametrize("stage", list(_stages()))
def test_stage_declares_exactly_the_params_it_reads(recorded_reads, stage):
    reads, _ = recorded_reads
    assert stage in reads, f"no params reads were recorded for {stage} (recorded: {set(reads)})"
    declared = [p for p in _stages()[stage].get("params", []) if isinstance(p, str)]
    undeclared = sorted(k for k in reads[stage] if not any(_covers(d, k) for d in declared))
    assert not undeclared, f"stage {stage!r} reads params it does not declare: {undeclared}"
    unread = sorted(d for d in declared if not any(_covers(d, k) for k in reads[stage]))
    assert not unread, f"stage {stage!r} declares params it never reads: {unread}"


def test_recorder_sees_reads(recorded_reads):
    """The recorder itself works: prepare read the split seed, train the learning rate."""
    reads, project = recorded_reads
    assert "prepare.seed" in reads["prepare"]
    assert "train.learning_rate" in reads["train"]
    assert "evaluate.max_errors" in reads["evaluate"]
    assert not {k for k in reads["validate"] if k.startswith("train.")}
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."


def test_changed_inputs_rerun_exactly_their_stages(recorded_reads):
    """A code edit is seen by `dvc status`; a register param re-runs register (and the run
    report after it, which shows its decision) every time: neither output is ever restored
    from the run cache behind MLflow's back."""
    _, project = recorded_reads
    sources = project / "tasks/core/data/sources.py"
    original = sources.read_text()
    sources.write_text(original + "\n# an edit to a parser\n")
    status = run(["dvc", "status"], project).stdout
    assert "prepare:" in status and "modified:           tasks/core/data/sources.py" in status
    sources.write_text(original)
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."

    for min_score in (0.01, 0.0):  # the second returns to params DVC has seen before
        set_params(project, **{"register.min_score": min_score})
        output = run(["dvc", "repro"], project).stdout
        assert output.count("Running stage") == 2 and "Running stage 'register'" in output
        assert "Running stage 'report'" in output
        assert "is cached" not in output
