"""model.name_or_path / model.revision: a hub id must be pinned by a commit sha, and
`finetune model pin` edits params.yaml line by line, comments kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from tasks.commands.models import set_model_lines
from tasks.core.config import Params, ParamsError, load_params
from tasks.core.errors import StageError
from tasks.core.pretrained.model import resolve_model_source
from tasks.core.tracked_inputs import untracked_inputs

SHA = "0123456789abcdef0123456789abcdef01234567"


def _params(tmp_path: Path, **model) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model": model}))
    return path


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"name_or_path": "acme/bert", "revision": "main"},
            "model.revision: 'main' is not a commit sha (40 hex digits); a branch or tag moves: "
            "run `finetune model pin acme/bert --revision main`",
        ),
        (
            {"name_or_path": "default", "revision": SHA},
            f"model.revision: '{SHA}' is for a Hugging Face Hub id, but model.name_or_path is "
            "'default'; set model.revision: null",
        ),
        (
            {"name_or_path": "models:/sentiment@champion", "revision": SHA},
            "set model.revision: null",
        ),
    ],
)
def test_revision_must_be_a_commit_of_a_hub_id(tmp_path, model, message):
    with pytest.raises(ParamsError, match="invalid parameters") as caught:
        load_params(_params(tmp_path, **model))
    assert message in str(caught.value)


def test_a_hub_id_without_revision_is_refused_naming_the_pin_command(tmp_path):
    params = Params.model_validate({"model": {"name_or_path": "bert-base-cased"}})
    problems = untracked_inputs(params, tmp_path, ["model.name_or_path"], base=tmp_path)
    assert problems == [
        "model.name_or_path: 'bert-base-cased' is not a local directory; as a Hugging Face Hub "
        "model it needs model.revision, a commit sha: run `finetune model pin bert-base-cased` "
        "(or `finetune model pin bert-base-cased --revision BRANCH_OR_TAG`)"
    ]
    with pytest.raises(StageError, match="run `finetune model pin bert-base-cased`"):
        resolve_model_source("bert-base-cased", state_dir=tmp_path)
    pinned = Params.model_validate({"model": {"name_or_path": "acme/bert", "revision": SHA}})
    assert untracked_inputs(pinned, tmp_path, ["model.name_or_path"], base=tmp_path) == []
    # Built-in encoders are the project's own inputs, like the default.
    builtin = Params.model_validate({"model": {"name_or_path": "mpnet-base"}})
    assert untracked_inputs(builtin, tmp_path, ["model.name_or_path"], base=tmp_path) == []


def test_pin_edits_two_lines_and_keeps_the_comments():
    text = (ROOT / "params.yaml").read_text()
    edited = set_model_lines(text, "acme/bert", SHA)
    before, after = text.splitlines(), edited.splitlines()
    changed = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    assert len(changed) == 2
    for i in changed:  # the same comment, if the line had one
        assert before[i].partition("#")[1:] == after[i].partition("#")[1:]
    assert "#" in before[changed[1]]  # (revision has one)
    raw = yaml.safe_load(edited)["model"]
    assert raw == {"name_or_path": "acme/bert", "revision": SHA}


def test_pin_adds_a_missing_revision_line_and_quotes_a_sha_of_digits():
    text = "task: text_classification\nmodel:  # start point\n  name_or_path: default  # which\n"
    digits = "1" * 40  # would read as a number unquoted
    edited = set_model_lines(text, "acme/bert", digits)
    assert edited.splitlines()[:3] == [*text.splitlines()[:2], "  name_or_path: acme/bert  # which"]
    assert yaml.safe_load(edited)["model"] == {"name_or_path": "acme/bert", "revision": digits}
    with pytest.raises(ParamsError, match="no `model:` section"):
        set_model_lines("task: text_classification\n", "acme/bert", SHA)


def test_a_hub_that_refuses_is_not_reported_as_a_lost_tracking_server():
    from tasks.core.errors import HubError
    from tasks.core.tracking import server_lost

    refused = ConnectionRefusedError("[Errno 111] Connection refused")
    try:
        try:
            raise refused
        except ConnectionRefusedError:
            raise HubError("model.name_or_path: ... cannot be reached (Connection refused)")  # noqa: B904
    except HubError as hub_error:
        assert hub_error.__context__ is refused
        assert server_lost(hub_error) is None
    assert server_lost(StageError("Connection refused")) is not None  # as before for others
