"""Hub models pinned by commit, tested for real without the internet: a Hugging Face endpoint on
127.0.0.1 (tests/hubserver.py) serves a tiny BERT under two commits, and the real
huggingface_hub downloads it into a per-test cache (``HF_HUB_CACHE``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from conftest import ROOT, free_port, project_env, tiny_params, write_toy_prepared
from hubserver import LocalHub

from tasks.core.config import load_params
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.modeling.training import build_model
from tasks.core.pretrained.hub import resolve_revision
from tasks.core.pretrained.model import load_tokenizer, resolve_model_source

REPO = "acme/tiny-bert"


@pytest.fixture(scope="module")
def commits(tiny_model_dir, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Two commits of the tiny BERT: ``a`` (tiny_model_dir) and ``b`` (other weights)."""
    import torch
    from transformers import BertModel

    other = tmp_path_factory.mktemp("tiny-bert-b")
    model = BertModel.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.save_pretrained(other)
    files_a = LocalHub.folder_files(tiny_model_dir)
    return {
        "a": files_a,
        "b": {**files_a, "model.safetensors": (other / "model.safetensors").read_bytes()},
    }


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """Online hub access for this test (the suite runs offline), into a cache of its own."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest set it to 1 before).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def local_hub(commits, hub_env, monkeypatch):
    """The repository ``acme/tiny-bert``: main -> commit a, tag v2 -> commit b."""
    hub = LocalHub()
    hub.sha_a = hub.add_commit(REPO, commits["a"], ref="main")
    hub.sha_b = hub.add_commit(REPO, commits["b"], ref="v2")
    monkeypatch.setenv("HF_ENDPOINT", hub.start())
    yield hub
    hub.stop()


def weights(source) -> bytes:
    return (source.model_dir / "model.safetensors").read_bytes()


def test_first_run_downloads_later_runs_read_the_cache_offline(
    local_hub, commits, tmp_path, monkeypatch
):
    params = tiny_params("text_classification", REPO)
    params = params.model_copy(
        update={"model": params.model.model_copy(update={"revision": local_hub.sha_a})}
    )
    prepared = write_toy_prepared(tmp_path / "prepared", n_train=40, n_eval=10)

    first = tokenize(params, prepared, tmp_path / "tok1", tmp_path / "tok1.json", tmp_path)
    assert any(r.startswith("GET /acme/tiny-bert/resolve/") for r in local_hub.requests)
    assert first["tokenizer"]["name_or_path"] == REPO
    assert first["tokenizer"]["revision"] == local_hub.sha_a

    local_hub.stop()  # no hub any more, and offline as a user would set it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    second = tokenize(params, prepared, tmp_path / "tok2", tmp_path / "tok2.json", tmp_path)
    assert second["tokenizer"] == first["tokenizer"]
    source = resolve_model_source(REPO, state_dir=tmp_path, revision=local_hub.sha_a)
    assert weights(source) == commits["a"]["model.safetensors"]
    model, head = build_model("text_classification", source, ["negative", "positive"], None)
    assert head == "new" and model.config.num_labels == 2


def test_a_moved_branch_changes_nothing_until_the_sha_in_params_changes(
    local_hub, commits, tmp_path
):
    pinned = resolve_revision(REPO)
    assert pinned == local_hub.sha_a
    before = resolve_model_source(REPO, state_dir=tmp_path, revision=pinned)

    local_hub.refs[REPO]["main"] = local_hub.sha_b  # someone pushes new weights to main
    local_hub.requests.clear()
    again = resolve_model_source(REPO, state_dir=tmp_path, revision=pinned)
    assert weights(again) == weights(before) == commits["a"]["model.safetensors"]
    assert local_hub.requests == []  # the cache answered: no network at all

    repinned = resolve_revision(REPO)  # `finetune model pin` now writes the new sha
    assert repinned == local_hub.sha_b
    moved = resolve_model_source(REPO, state_dir=tmp_path, revision=repinned)
    assert weights(moved) == commits["b"]["model.safetensors"] != weights(before)


def _pin(params: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tasks.commands.main", "model", "pin", *args]
    return subprocess.run(
        [*command, "--params", str(params)],
        cwd=ROOT,
        env=project_env(),
        capture_output=True,
        text=True,
    )


def test_model_pin_writes_the_commit_and_keeps_every_comment(local_hub, tmp_path):
    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    params.write_text(original)

    done = _pin(params, REPO, "--revision", "v2")
    assert done.returncode == 0, done.stderr
    assert load_params(params).model.name_or_path == REPO
    assert load_params(params).model.revision == local_hub.sha_b
    changed = [
        (old, new)
        for old, new in zip(original.splitlines(), params.read_text().splitlines(), strict=True)
        if old != new
    ]
    assert [yaml.safe_load(new.split("#")[0]) for _, new in changed] == [
        {"name_or_path": REPO},
        {"revision": local_hub.sha_b},
    ]
    assert all("#" in new for old, new in changed if "#" in old)  # comments kept

    done = _pin(params, REPO, "--revision", "no-such-branch")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "no such branch, tag or commit" in done.stderr
    assert load_params(params).model.revision == local_hub.sha_b  # left as it was


def test_no_hub_and_no_cache_is_one_line_naming_model_revision_and_fix(
    hub_env, monkeypatch, tmp_path
):
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    with pytest.raises(StageError) as caught:
        resolve_model_source(REPO, state_dir=tmp_path, revision=sha)
    message = str(caught.value)
    assert time.monotonic() - started < 10  # one refused connection, no retry loop
    assert "\n" not in message
    assert message.startswith(f"model.name_or_path: {REPO!r} at model.revision {sha}: not in")
    assert "cannot be reached" in message and "HF_ENDPOINT" in message

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StageError, match="HF_HUB_OFFLINE is set: unset it for one run"):
        resolve_model_source(REPO, state_dir=tmp_path, revision=sha)


def _with_code(files: dict[str, bytes], marker: Path, model_type: str) -> dict[str, bytes]:
    """``files`` plus a Python model file that would leave ``marker`` if it were ever run."""
    config = json.loads(files["config.json"])
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "modeling_acme.AcmeConfig",
        "AutoModel": "modeling_acme.AcmeModel",
    }
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    return {**files, "config.json": json.dumps(config).encode(), "modeling_acme.py": code.encode()}


def test_a_repository_with_its_own_code_is_never_run(local_hub, commits, tmp_path):
    marker = tmp_path / "remote-code-ran"
    custom = local_hub.add_commit("acme/custom-net", _with_code(commits["a"], marker, "acme-net"))
    with pytest.raises(StageError, match="model type 'acme-net' is not built into transformers"):
        resolve_model_source("acme/custom-net", state_dir=tmp_path, revision=custom)

    # A known architecture that also ships code: transformers' own BERT is used, the code ignored.
    bert = local_hub.add_commit("acme/bert-with-code", _with_code(commits["a"], marker, "bert"))
    source = resolve_model_source("acme/bert-with-code", state_dir=tmp_path, revision=bert)
    assert not list(source.model_dir.glob("*.py"))  # never downloaded
    load_tokenizer(source)
    model, _ = build_model("text_classification", source, ["negative", "positive"], None)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert not marker.exists()
    assert yaml.safe_load((source.model_dir / "config.json").read_text())["auto_map"]


class _RunsCode:
    """A pickle that would run ``touch MARKER`` when unpickled by an unsafe loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_safetensors_are_preferred_and_pickles_load_only_as_weights(local_hub, commits, tmp_path):
    import io

    import torch
    from safetensors.torch import load_file

    source_a = resolve_model_source(REPO, state_dir=tmp_path, revision=local_hub.sha_a)
    tensors = load_file(str(source_a.model_dir / "model.safetensors"))
    pickled = io.BytesIO()
    torch.save(tensors, pickled)
    with_both = {**commits["a"], "pytorch_model.bin": pickled.getvalue()}
    both = local_hub.add_commit("acme/both", with_both)
    source = resolve_model_source("acme/both", state_dir=tmp_path, revision=both)
    assert not (source.model_dir / "pytorch_model.bin").exists()  # never downloaded

    only_pickle = {k: v for k, v in with_both.items() if k != "model.safetensors"}
    sha = local_hub.add_commit("acme/pickled", only_pickle)
    source = resolve_model_source("acme/pickled", state_dir=tmp_path, revision=sha)
    model, _ = build_model("text_classification", source, ["negative", "positive"], None)
    assert type(model).__name__ == "BertForSequenceClassification"

    marker = tmp_path / "pickle-ran"
    evil = io.BytesIO()
    torch.save({"embeddings": _RunsCode(marker)}, evil)
    sha = local_hub.add_commit("acme/evil", {**only_pickle, "pytorch_model.bin": evil.getvalue()})
    source = resolve_model_source("acme/evil", state_dir=tmp_path, revision=sha)
    with pytest.raises(StageError, match=r"cannot load a model from .*: Weights only load failed"):
        build_model("text_classification", source, ["negative", "positive"], None)
    assert not marker.exists()


def test_the_stage_command_refuses_in_one_line(hub_env, tmp_path, monkeypatch):
    """`tokenize` (as DVC runs it): an unpinned hub id names `finetune model pin`; a pinned
    one that is neither cached nor reachable names the model, the commit and the fix."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    prepared = write_toy_prepared(tmp_path / "prepared", n_train=40, n_eval=10)
    for revision, expected in [
        (None, f"tokenize: error: model.name_or_path: {REPO!r} is not a local directory"),
        (sha, f"tokenize: error: model.name_or_path: {REPO!r} at model.revision {sha}: not in"),
    ]:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["model"] = {"name_or_path": REPO, "revision": revision}
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(raw))
        done = subprocess.run(
            [sys.executable, "-m", "tasks.tokenize", "--params", str(params),
             "--prepared-dir", str(prepared), "--output-dir", str(tmp_path / "out"),
             "--report", str(tmp_path / "tokenize.json"), "--state-dir", str(tmp_path / "state")],
            cwd=ROOT, env=project_env(), capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 1
        [error] = [line for line in done.stderr.splitlines() if " error: " in line]
        assert error.startswith(expected), done.stderr
        assert done.stderr.endswith(error + "\n") and "Traceback" not in done.stderr
