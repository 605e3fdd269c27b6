"""The Prefect flow called in this process, against a real Prefect server on a free loopback
port (the served deployment: test_flows.py): the same locks as ``dvc repro``, overrides as
DVC experiments, bad overrides, stage timeouts and the nightly import update.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from pathlib import Path
from typing import ClassVar

import psutil
import pytest
import yaml
from conftest import (
    ROOT,
    commit,
    experiments,
    make_project,
    run,
    set_params,
)
from flow_helpers import (
    _artifacts,
    _registry,
    _task_runs,
    training_pipeline_in,
)
from prepare_data import TEXT_COLUMNS

from flows.notify import WEBHOOK_ENV
from flows.pipeline import stage_order

pytest_plugins = ["flow_fixtures"]  # prefect_api, small, project_with


def _locked_params(project: Path, stage: str) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["params"]


def test_flow_and_dvc_repro_leave_identical_locks(
    prefect_api, tmp_path, small, project_with, monkeypatch
):
    by_dvc = project_with(tmp_path / "by-dvc")
    by_flow = project_with(tmp_path / "by-flow")
    for project in (by_dvc, by_flow):
        set_params(project, **small)
    run(["dvc", "repro"], by_dvc)
    results = training_pipeline_in(by_flow, monkeypatch)()
    assert [r["stage"] for r in results] == stage_order(by_flow)
    assert all(r["ran"] for r in results)
    assert _lock_without_timings(by_flow) == _lock_without_timings(by_dvc)
    assert run(["dvc", "status"], by_flow).stdout.strip() == "Data and pipelines are up to date."
    # After `dvc repro`, the flow has nothing to do.
    again = training_pipeline_in(by_dvc, monkeypatch)()
    assert not any(r["ran"] for r in again)


# The contract (dvc.yaml): an output that another stage depends on holds no timings, paths
# or run ids, so its hash must match between any two runs. Only outputs nothing depends on
# (speeds, wall times, trial durations, the registry decision with its run id) may differ.
# The report stage is the exception that proves it: it shows everything (timings and run ids
# too), and since nothing depends on its page, such a change re-runs only itself.
def _varying(path: str) -> bool:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    consumed = {
        d
        for name, stage in stages.items()
        if name != "report"
        for d in stage.get("deps", [])
        if isinstance(d, str)
    }
    return not any(path == dep or path.startswith(dep + "/") for dep in consumed)


def _lock_without_timings(project) -> dict:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for entry in stage.get("outs", []) + stage.get("deps", []):
            if _varying(entry["path"]):
                entry.pop("md5", None), entry.pop("size", None)
    return lock


def test_overrides_never_change_what_the_next_plain_run_trains(prefect_api, tmp_path, monkeypatch):
    """An ad-hoc run (prepare.seed 7) is a DVC experiment; the plain run after it (what the
    nightly deployment does) reproduces the committed params. Up to validate, for speed."""
    project = make_project(tmp_path / "project")
    set_params(project, **{"prepare.max_examples": 200})
    commit(project)
    before = (project / "params.yaml").read_bytes()
    pipeline = training_pipeline_in(project, monkeypatch)
    state = pipeline(
        overrides={"prepare.seed": 7},
        stages=["validate"],
        experiment="seed-7",
        return_state=True,
    )
    (record,) = state.result()
    assert record["experiment"] == "seed-7" and record["ran"] == ["prepare", "validate"]
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "dvc.lock").exists()
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    assert {"experiment", "prepare-report", "validate-report"} <= set(artifacts)
    assert "(seed 7)" in artifacts["prepare-report"].description

    results = pipeline(stages=["validate"])
    assert [(r["stage"], r["ran"]) for r in results] == [("prepare", True), ("validate", True)]
    assert (project / "params.yaml").read_bytes() == before
    committed = yaml.safe_load(before)
    assert _locked_params(project, "prepare")["params.yaml"]["prepare"] == committed["prepare"]
    assert experiments(project)["seed-7"]["prepare"]["seed"] == 7


def test_a_bad_override_fails_before_any_work(prefect_api, tmp_path, monkeypatch):
    project = commit(make_project(tmp_path / "project"))
    before = (project / "params.yaml").read_bytes()
    pipeline = training_pipeline_in(project, monkeypatch)
    with pytest.raises(ValueError, match=r"prepare\.sed: unknown key \(did you mean 'seed'"):
        pipeline(overrides={"prepare.sed": 7})
    with pytest.raises(ValueError, match=r"unknown stage\(s\) trian"):
        pipeline(stages=["trian"])
    with pytest.raises(ValueError, match="'a b' cannot name an experiment"):
        pipeline(overrides={"prepare.seed": 7}, experiment="a b")
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "dvc.lock").exists() and not experiments(project)
    assert not (project / "data" / "prepared" / "train.parquet").exists()


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook on 127.0.0.1 that keeps every JSON body it is sent."""

    received: ClassVar[list[dict]] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """(URL, bodies received) of a webhook receiver on a free 127.0.0.1 port."""
    receiver = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{receiver.server_port}/hook", _Receiver.received
    finally:
        receiver.shutdown()


def test_a_stage_past_its_timeout_is_stopped_and_the_failure_posted(
    prefect_api, tmp_path, monkeypatch, webhook
):
    """prepare gets 1 s (it needs several): the task times out, is not retried, its dvc
    process is stopped (no stage output appears later), and the webhook is told which stage
    failed, with a link to the flow run."""
    url, received = webhook
    project = make_project(tmp_path / "project")
    set_params(project, **{"prepare.max_examples": 200})
    monkeypatch.setenv(WEBHOOK_ENV, url)
    pipeline = training_pipeline_in(project, monkeypatch, timeouts={"prepare": 1})
    state = pipeline(stages=["prepare"], return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    prepare = asyncio.run(_task_runs(flow_run_id))["prepare"]
    assert (prepare.state_name, prepare.run_count) == ("TimedOut", 1)
    time.sleep(5)  # what the stage would have written by now, had it gone on
    assert not (project / "data" / "prepared").exists()
    assert not [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(project)]
    (body,) = received
    assert body["failed_stages"] == ["prepare"]
    assert "failed at stage 'prepare'" in body["text"]
    assert body["flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
    assert body["flow_run_url"] in body["text"]
    assert body["flow_run_url"].startswith(prefect_api.removesuffix("/api"))


def _reviews(path: Path, n: int) -> None:
    """``n`` reviews, both labels in every movie (ten reviews each), as an upstream CSV."""
    rows = ["review,sentiment,movie"]
    for i in range(n):
        word, label = ("great", "pos") if i % 2 else ("dull", "neg")
        rows.append(f'"review {i}: a {word} film",{label},movie{i // 10}')
    path.write_text("\n".join(rows) + "\n")


def test_the_nightly_retrains_only_when_the_imported_data_changed(
    prefect_api, tmp_path, project_with, small, monkeypatch
):
    """User data imported with `dvc import-url` from a folder upstream: a nightly run with
    nothing new skips every stage and says so; after rows are added upstream, the next one
    updates the import, retrains, registers one new version, and its summary artifact gives
    the examples per split before and after, the gate's decision and the files to commit."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    _reviews(upstream / "reviews.csv", 150)
    project = project_with(tmp_path / "project")
    data = {**TEXT_COLUMNS, "source": {"path": "data/external/reviews.csv"}}
    data["group_column"] = "movie"
    set_params(project, **{k: v for k, v in small.items() if k != "prepare.max_examples"})
    set_params(project, **{f"data.{key}": value for key, value in data.items()})
    set_params(project, **{"register.min_score": 0.0})  # version 1 becomes the champion
    run(["dvc", "import-url", str(upstream / "reviews.csv"), "data/external/reviews.csv"], project)
    run(["dvc", "repro", "register"], project)  # all but the HTML report, for speed
    commit(project)
    pipeline = training_pipeline_in(project, monkeypatch)

    state = pipeline(update_imports=True, stages=["register"], return_state=True)
    assert not any(record["ran"] for record in state.result())
    summary = asyncio.run(_artifacts(state.state_details.flow_run_id))["nightly-summary"]
    assert summary.data.startswith("## Nightly: no new data")
    assert "every stage was up to date" in summary.data and "Nothing to commit" in summary.data

    before = json.loads((project / "data/prepared/summary.json").read_text())["splits"]
    _reviews(upstream / "reviews.csv", 190)  # the same 150 rows and 40 new ones
    state = pipeline(update_imports=True, stages=["register"], return_state=True)
    assert all(record["ran"] for record in state.result())
    summary = asyncio.run(_artifacts(state.state_details.flow_run_id))["nightly-summary"].data
    assert summary.startswith("## Nightly: new data")
    after = json.loads((project / "data/prepared/summary.json").read_text())["splits"]
    assert (
        sum(s["examples"] for s in after.values()) - 150
        == 40
        == sum(s["examples"] - before[name]["examples"] for name, s in after.items())
    )
    for name, split in after.items():
        old, new = before[name]["examples"], split["examples"]
        assert f"| {name} | {old} | {new} | {new - old:+d} |" in summary
    registry = json.loads((project / "reports/registry.json").read_text())
    assert len(_registry(project)) == 2 and registry["version"] == 2
    assert f"version 2 scored {registry['score']:.4f}" in summary
    assert f"champion version 1 {registry['champion_before']['score']:.4f}" in summary
    assert f"**{registry['decision']}**" in summary
    assert "git add data/external/reviews.csv.dvc dvc.lock && git commit" in summary
