"""The documentation (README.md and docs/*.md) points only at things that exist: every
relative link at a file (and its #anchor at a heading), every quoted ``finetune`` command
at a command (and subcommand) of the CLI, every quoted ``make TARGET`` at a Makefile
target. Each check is first shown to fail on a synthetic broken text."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import typer

from tasks.commands.main import DELEGATED, app
from tasks.core.environment import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def code(text: str) -> str:
    """Fenced blocks and `inline` spans: prose may say "make it" or "finetune it"."""
    inline = re.findall(r"`([^`\n]+)`", FENCED.sub("", text))
    return "\n".join(FENCED.findall(text) + inline)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", FENCED.sub("", text), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path, text: str) -> list[str]:
    """Relative links of ``text`` (read as ``page``) whose file or anchor is missing."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCED.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s)://, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md":
            body = text if file == page else file.read_text(encoding="utf-8")
            if anchor not in anchors(body):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def cli_commands() -> dict[str, set[str]]:
    """``finetune``'s commands, each with its subcommands (empty: not a group)."""
    group = typer.main.get_command(app)
    return {name: subcommands(DELEGATED.get(name, ("",))[0]) for name in group.list_commands(None)}


def subcommands(module: str) -> set[str]:
    """The ``@app.command()`` names of ``module``, read from its source like the group's
    listing reads docstrings: importing the modules would import MLflow, Prefect and
    transformers (seconds, and MLflow starts a process, which the unit tier refuses)."""
    spec = importlib.util.find_spec(module) if module else None
    if not spec or not spec.origin:
        return set()
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names, callback = set(), False
    for node in ast.walk(tree):
        for decorator in getattr(node, "decorator_list", []):
            call = decorator if isinstance(decorator, ast.Call) else None
            callback = callback or bool(call and ast.unparse(call.func) == "app.callback")
            if call and ast.unparse(call.func) == "app.command":
                given = [a.value for a in call.args if isinstance(a, ast.Constant)]
                names.add(given[0] if given else node.name.replace("_", "-"))
    # One command and no callback: Typer makes that command the app (no subcommands).
    return names if len(names) > 1 or callback else set()


def unknown_commands(text: str, commands: dict[str, set[str]]) -> list[str]:
    """Quoted ``finetune NAME [SUB]`` whose command, or whose group's subcommand, is
    missing (a word after a command that is not a group is its argument)."""
    unknown = []
    for name, sub in re.findall(r"\bfinetune ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", code(text)):
        if name not in commands:
            unknown.append(f"finetune {name}")
        elif sub and commands[name] and sub not in commands[name]:
            unknown.append(f"finetune {name} {sub}")
    return unknown


def make_targets() -> set[str]:
    text = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def unknown_make_targets(text: str, targets: set[str]) -> list[str]:
    return sorted(set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", code(text))) - targets)


def test_the_checks_catch_a_broken_link_command_and_target() -> None:
    page = PROJECT_ROOT / "README.md"
    text = (
        "# Read on\n\n[ok](docs/user-guide.md#stages), [self](#read-on), [web](https://x.org),"
        " [gone](docs/nowhere.md), [bad anchor](docs/user-guide.md#no-such-part)\n"
        "```bash\n# a comment, not a heading\nfinetune train\nfinetune trian\n"
        "finetune ui mlflow\nfinetune ui nosuch\nmake run\nmake nosuch\n```\n"
        'Prose may say make it or finetune it; `finetune predict "A film."` is quoted.\n'
    )
    assert broken_links(page, text) == [
        "README.md: docs/nowhere.md (no such file)",
        "README.md: docs/user-guide.md#no-such-part (no such heading)",
    ]
    assert unknown_commands(text, cli_commands()) == ["finetune trian", "finetune ui nosuch"]
    assert unknown_make_targets(text, make_targets()) == ["nosuch"]
    assert "a-comment-not-a-heading" not in anchors(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page: Path) -> None:
    assert not broken_links(page, page.read_text(encoding="utf-8"))


def test_quoted_finetune_commands_exist() -> None:
    commands = cli_commands()
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    assert "finetune model pin" in code(text)  # the extractor reads the pages
    assert commands["model"] == {"pin", "fetch", "rollback"}  # groups' subcommands are read
    assert commands["sources"] == {"fetch"} and commands["train"] == set()
    assert not unknown_commands(text, commands)


def test_quoted_make_targets_exist() -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    assert {"run", "test"} <= set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", code(text)))
    assert not unknown_make_targets(text, make_targets())


def test_the_front_page_is_short_and_links_every_page() -> None:
    readme = PAGES[0].read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 250
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
