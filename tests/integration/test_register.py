"""The register stage: MLflow logging, the champion/challenger gate, lineage and serving."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import signal
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import (
    ROOT,
    free_port,
    run,
    start_server,
    stop_server,
    tiny_params,
    write_toy_prepared,
)

from tasks.core.config import BehaviourParams
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.evaluation.scoring import evaluate
from tasks.core.registration.fingerprints import EVALUATED_FILE, model_md5, record_evaluation
from tasks.core.registration.promotion import decide, trivial_baseline
from tasks.evaluate import run_stage
from tasks.register import register
from tasks.train import train


@dataclass
class Trained:
    """A tiny model trained and evaluated by the real stages, with its own registry."""

    params: object
    root: Path
    model_dir: Path | None = None  # default: root/model
    reports_dir: Path | None = None  # default: root/reports

    @property
    def uri(self) -> str:
        return self.params.tracking.uri

    @property
    def name(self) -> str:
        from tasks.core.tracking import registered_model_name

        return registered_model_name(self.params)

    def dirs(self) -> tuple[Path, Path, Path, Path]:
        r = self.root
        return (
            self.model_dir or r / "model",
            r / "prepared",
            self.reports_dir or r / "reports",
            r / "state",
        )

    def set_score(self, score: float) -> None:
        """Pretend evaluate measured ``score`` (the gate reads metrics.json)."""
        path = self.root / "reports" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["f1_macro" if self.params.task == "text_classification" else "f1_micro"] = score
        path.write_text(json.dumps(metrics))

    def register(self):
        """Register as after an evaluate stage that scored (set_score) these very weights and
        passed its gate: evaluated.json says so (test_register_refuses_... checks without)."""
        model_dir, _, reports_dir, _ = self.dirs()
        record_evaluation(reports_dir, model_dir, "passed")
        return register(self.params, *self.dirs())

    def client(self):
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def versions(self) -> list:
        return self.client().search_model_versions(f"name='{self.name}'")

    def ensure_champion(self) -> None:
        """Register once when an earlier test (run alone, or deselected) has not."""
        if not self.versions():
            self.register()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    def named(self, name: str) -> Trained:
        """The same model and data, registered under ``name`` (a registry of its own)."""
        section = self.params.register_.model_copy(update={"model_name": name})
        return dataclasses.replace(
            self, params=self.params.model_copy(update={"register_": section})
        )

    def variant(self, tag: str) -> Trained:
        """The same model with slightly different weights, in a directory of its own."""
        from safetensors.torch import load_file, save_file

        target = self.root / f"model-{tag}"
        if not target.exists():
            shutil.copytree(self.root / "model", target)
            weights = target / "model.safetensors"
            tensors = load_file(weights)
            bias = next(key for key in tensors if key.endswith("classifier.bias"))
            shift = (int(hashlib.md5(tag.encode()).hexdigest()[:4], 16) + 1) * 1e-7
            tensors[bias] = tensors[bias] + shift
            save_file(tensors, weights, metadata={"format": "pt"})
        return dataclasses.replace(self, model_dir=target)


def _train(root: Path, task: str, model_dir: Path, name: str) -> Trained:
    params = tiny_params(
        task,
        model_dir,
        train={"epochs": 3},
        tracking={"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "tests"},
        register={"model_name": name, "min_score": 0.0},
    )
    write_toy_prepared(root / "prepared", task)
    state = root / "state"
    tokenize(params, root / "prepared", root / "tokenized", root / "tokenize.json", state)
    train(params, root / "tokenized", root / "model", root / "reports", state)
    evaluate(params, root / "tokenized", root / "model", root / "reports")
    return Trained(params, root)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_model_dir) -> Trained:
    return _train(
        tmp_path_factory.mktemp("text"), "text_classification", tiny_model_dir, "toy-sentiment"
    )


@pytest.fixture(scope="module")
def token_model(tmp_path_factory, tiny_model_dir) -> Trained:
    return _train(
        tmp_path_factory.mktemp("token"), "token_classification", tiny_model_dir, "toy-ner"
    )


@pytest.mark.parametrize(
    ("score", "champion", "promote", "words"),
    [
        (0.70, None, True, "first model: 0.7000 reaches min_score 0.5"),
        (0.40, None, False, "first model: 0.4000 is below min_score 0.5"),
        (0.80, 0.70, True, "beats the champion by +0.1000"),
        (0.70, 0.70, False, "does not beat the champion"),
        (0.60, 0.70, False, "does not beat the champion"),
        (0.701, 0.70, False, "min_improvement 0.002"),  # better, but by too little
    ],
)
def test_gate(score, champion, promote, words):
    promoted, reason = decide(score, champion, min_improvement=0.002, min_score=0.5)
    assert promoted is promote
    assert words in reason


def test_auto_gate_for_a_first_model_is_the_trivial_baseline(text_model, token_model):
    # A first NER model at WNUT-17's published level beats "no entities" (0): champion.
    promoted, reason = decide(0.437, None, 0.002, None, (0.0, "no entities"))
    assert promoted and "beats the trivial baseline 0.0000 (no entities)" in reason
    promoted, reason = decide(0.0, None, 0.002, None, (0.0, "no entities"))
    assert not promoted and "register.min_score: auto" in reason
    # A number set by the user still decides.
    assert decide(0.437, None, 0.002, 0.5, (0.0, "no entities"))[0] is False

    # The baselines, measured on the toy test splits.
    import pandas as pd
    from sklearn.metrics import f1_score

    gold = list(pd.read_parquet(text_model.root / "prepared" / "test.parquet")["label"])
    majority = max(sorted(set(gold)), key=gold.count)
    expected = f1_score(gold, [majority] * len(gold), average="macro", zero_division=0)
    value, what = trivial_baseline(text_model.params, text_model.root / "prepared", "f1_macro")
    assert value == pytest.approx(expected) and what == f"always {majority!r}"
    assert 0 < value < 0.5
    accuracy, _ = trivial_baseline(text_model.params, text_model.root / "prepared", "accuracy")
    assert accuracy == pytest.approx(gold.count(majority) / len(gold))
    assert trivial_baseline(token_model.params, token_model.root / "prepared", "f1_micro") == (
        0.0,
        "no entities",
    )


def test_first_better_worse_and_equal_versions(text_model):
    client = text_model.client()
    first = text_model.register()
    assert (first["version"], first["promoted"]) == (1, True)
    assert first["aliases"] == {"champion": 1, "challenger": 1}

    text_model.set_score(first["score"] + 0.1)
    better = text_model.variant("better").register()
    assert better["promoted"] and better["champion_before"]["version"] == 1
    assert better["aliases"] == {"champion": 2, "challenger": 2}

    text_model.set_score(first["score"])
    worse = text_model.variant("worse").register()
    assert not worse["promoted"]
    assert "does not beat the champion" in worse["reason"]
    assert worse["aliases"] == {"champion": 2, "challenger": 3}

    text_model.set_score(better["score"])
    equal = text_model.variant("equal").register()
    assert not equal["promoted"]
    assert equal["aliases"] == {"champion": 2, "challenger": 4}

    # Every version is kept, with its decision, scores, weights and data hash as tags.
    versions = client.search_model_versions("name='toy-sentiment'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    assert len({v.tags["model_md5"] for v in versions}) == 4
    third = client.get_model_version("toy-sentiment", "3")
    assert third.tags["decision"] == "kept as challenger"
    assert float(third.tags["champion_score"]) == pytest.approx(better["score"], abs=1e-6)
    assert third.tags["test_data_hash"] == first["test_data_hash"]
    saved = json.loads((text_model.root / "reports" / "registry.json").read_text())
    assert saved == equal


def test_champion_is_rescored_on_new_test_data(text_model):
    text_model.ensure_champion()
    test_path = text_model.root / "prepared" / "test.parquet"
    original = test_path.read_bytes()
    try:
        pd.read_parquet(test_path).head(30).to_parquet(test_path)  # a new test data version
        report = text_model.variant("rescore").register()
    finally:
        test_path.write_bytes(original)
    before = report["champion_before"]
    assert before["rescored"] is True
    # The stored score was the doctored one; the re-score is the real one on the new split.
    champion = text_model.client().get_model_version("toy-sentiment", str(before["version"]))
    assert before["score"] != pytest.approx(float(champion.tags["test_score"]))
    assert 0.0 <= before["score"] <= 1.0
    assert report["test_data_hash"] != champion.tags["test_data_hash"]


# --- idempotent registration: one version per set of weights -------------------------------


def test_model_md5_is_the_hash_dvc_records(text_model, tmp_path):
    """The ``model_md5`` tag is the ``.dir`` md5 that DVC writes for the model directory."""
    from dvc.repo import Repo

    shutil.copytree(text_model.root / "model", tmp_path / "model")
    with Repo.init(tmp_path, no_scm=True) as repo:
        repo.add(str(tmp_path / "model"))
    recorded = yaml.safe_load((tmp_path / "model.dvc").read_text())["outs"][0]
    assert recorded["hash"] == "md5" and recorded["md5"].endswith(".dir")
    assert model_md5(text_model.root / "model") == recorded["md5"]
    assert model_md5(text_model.variant("md5").model_dir) != recorded["md5"]


def test_same_weights_are_registered_once(text_model):
    trained = text_model.named("toy-once")
    first = trained.register()
    assert (first["version"], first["reused"], first["decision"]) == (
        1,
        False,
        "promoted to champion",
    )
    # evaluate re-ran (a report-only param): same weights, same score.
    second = trained.register()
    assert (second["version"], second["reused"]) == (1, True)
    assert second["decision"] == "stays champion" and not second["promoted"]
    assert second["aliases"] == first["aliases"] == {"champion": 1, "challenger": 1}
    assert second["model_md5"] == first["model_md5"] == model_md5(text_model.root / "model")
    (version,) = trained.versions()
    assert version.tags["model_md5"] == first["model_md5"]
    assert version.tags["test_data_hash"] == first["test_data_hash"]
    assert version.tags["decision"] == "stays champion"
    assert version.run_id == first["run_id"] == second["version_run_id"] != second["run_id"]
    saved = json.loads((text_model.root / "reports" / "registry.json").read_text())
    assert saved == second


def test_different_weights_get_a_new_version_and_old_weights_are_reused(text_model):
    trained = text_model.named("toy-variants")
    first = trained.register()
    other = trained.variant("other").register()
    assert (other["version"], other["reused"]) == (2, False)
    assert other["model_md5"] != first["model_md5"]
    assert other["aliases"] == {"champion": 1, "challenger": 2}  # same score: not promoted
    # Back to the first weights: the gate runs again on version 1, nothing new is logged.
    again = trained.register()
    assert (again["version"], again["reused"], again["decision"]) == (1, True, "stays champion")
    again = trained.variant("other").register()
    assert (again["version"], again["reused"]) == (2, True)
    assert again["decision"] == "kept as challenger"
    assert again["aliases"] == {"champion": 1, "challenger": 2}
    assert sorted(int(v.version) for v in trained.versions()) == [1, 2]


def test_a_kill_after_version_creation_is_repaired_by_the_next_run(text_model, tmp_path):
    """SIGKILL right after the version is created (its tags with it), before any alias or
    report: the next run finds that version, finishes the gate, and writes the report."""
    trained = dataclasses.replace(text_model.named("toy-crash"), reports_dir=tmp_path / "reports")
    trained.reports_dir.mkdir()
    shutil.copy2(text_model.root / "reports" / "metrics.json", trained.reports_dir)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(trained.params.model_dump(mode="json", by_alias=True)))
    model_dir, prepared_dir, reports_dir, _ = trained.dirs()
    record_evaluation(reports_dir, model_dir, "passed")  # as evaluate leaves it
    script = f"""
import os, signal
from pathlib import Path
import mlflow
from tasks.register import main

def killed(*args, **kwargs):  # the first call after the version is created
    os.kill(os.getpid(), signal.SIGKILL)

mlflow.MlflowClient.set_registered_model_alias = killed
main(params_path=Path({str(params_file)!r}), model_dir=Path({str(model_dir)!r}),
     prepared_dir=Path({str(prepared_dir)!r}), reports_dir=Path({str(reports_dir)!r}))
"""
    done = run([sys.executable, "-c", script], ROOT, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not (reports_dir / "registry.json").exists()
    (created,) = trained.versions()
    assert created.tags["model_md5"] == model_md5(model_dir)
    assert created.aliases == []

    report = trained.register()
    assert (report["version"], report["reused"]) == (1, True)
    assert report["aliases"] == {"champion": 1, "challenger": 1}
    assert report["version_run_id"] == created.run_id
    assert len(trained.versions()) == 1
    assert json.loads((reports_dir / "registry.json").read_text()) == report


def test_champions_load_as_pyfunc_and_predict(text_model, token_model):
    text_model.ensure_champion()
    sentiment = mlflow.pyfunc.load_model("models:/toy-sentiment@champion")
    predictions = sentiment.predict(["a great film", "an awful plot"])
    assert set(predictions["label"]) <= {"positive", "negative"}
    assert predictions["score"].between(0, 1).all()

    token_model.ensure_champion()
    ner = mlflow.pyfunc.load_model("models:/toy-ner@champion")
    texts = ["alice smith went to paris", "the movie was long"]
    entities = ner.predict(texts)
    assert len(entities) == 2
    found = {(e["entity"], e["word"]) for e in entities[0]}
    assert ("PER", "alice smith") in found and ("LOC", "paris") in found
    for entity in entities[0]:
        assert texts[0][entity["start"] : entity["end"]] == entity["word"]
    assert entities[1] == []  # no entities: an empty list, not an error


def test_version_run_has_lineage(token_model):
    report = token_model.register()
    client = token_model.client()
    version = client.get_model_version("toy-ner", str(report["version"]))
    run = client.get_run(version.run_id)
    tags, params = run.data.tags, run.data.params
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["pipeline.stage"] == "register" and tags["device"].startswith(("cpu", "cuda"))
    assert tags["torch.version"] and tags["transformers.version"]
    assert params["task"] == "token_classification"
    assert params["train.learning_rate"] == "0.01"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["pipeline.stage"] == "pipeline"
    # The registry pages link the version to its pipeline run (which holds the report) and
    # its register run, with the score and the gate's decision.
    # (The latest register run: the module's fixture may have registered these weights again.)
    links = re.findall(r"\(#/experiments/(\w+)/runs/(\w+)\)", version.description)
    (pipeline_experiment, pipeline_id), (register_experiment, register_id) = links
    assert pipeline_experiment == register_experiment == run.info.experiment_id
    registered_by = client.get_run(register_id).data.tags
    assert registered_by["pipeline.stage"] == "register"
    assert registered_by["mlflow.parentRunId"] == pipeline_id
    assert client.get_run(pipeline_id).data.tags["pipeline.stage"] == "pipeline"
    assert "report/report.html" in version.description
    assert f"**{report['score']:.4f}**" in version.description
    assert version.tags["decision"] in version.description
    model = client.get_registered_model("toy-ner")
    assert "Alias `champion`" in model.description


def test_predict_cli_prints_labels_and_entity_spans(text_model, token_model):
    outputs = {}
    for trained in (text_model, token_model):
        trained.ensure_champion()
        params_file = trained.root / "params.yaml"
        params_file.write_text(
            yaml.safe_dump(trained.params.model_dump(mode="json", by_alias=True))
        )
        texts = trained.root / "texts.txt"
        texts.write_text("alice smith liked paris\n\nthe film was great\n")
        done = run(
            [sys.executable, "-m", "tasks.commands.predict", "--params", str(params_file), "--json",
             "--file", str(texts), "a dull movie"],
            ROOT,
        )  # fmt: skip
        outputs[trained.params.task] = [json.loads(line) for line in done.stdout.splitlines()]
    texts = [r["text"] for r in outputs["text_classification"]]
    assert texts == ["a dull movie", "alice smith liked paris", "the film was great"]
    assert all(r["label"] in ("positive", "negative") for r in outputs["text_classification"])
    first = outputs["token_classification"][1]
    assert {"entity": "PER", "word": "alice smith"} in [
        {k: e[k] for k in ("entity", "word")} for e in first["entities"]
    ]
    missing = run(
        [sys.executable, "-m", "tasks.commands.predict", "--params", str(params_file)],
        ROOT,
        check=False,
    )
    assert missing.returncode == 1
    assert "predict: error: no text given" in missing.stderr


# --- a real MLflow server and a served model ---------------------------------------------


def _get(url: str, timeout: float = 2):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def test_server_lists_aliases_and_served_model_answers(text_model, tmp_path):
    text_model.ensure_champion()
    port = free_port()
    server = start_server(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", text_model.uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        f"http://127.0.0.1:{port}/health", tmp_path / "server.log",
        MLFLOW_TRACKING_URI=text_model.uri,
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        model = _get(f"{api}/registered-models/get?name=toy-sentiment")["registered_model"]
        aliases = {a["alias"] for a in model["aliases"]}
        assert {"champion", "challenger"} <= aliases
    finally:
        stop_server(server)

    port = free_port()
    served = start_server(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/toy-sentiment@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log",
        MLFLOW_TRACKING_URI=text_model.uri,
    )  # fmt: skip
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": ["a great film", "a dull plot"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        predictions = answer["predictions"]
        assert len(predictions) == 2
        assert {p["label"] for p in predictions} <= {"positive", "negative"}
    finally:
        stop_server(served)


def test_register_refuses_scores_of_other_weights_or_a_failed_gate(text_model, tmp_path):
    """Issue 31 item 7: evaluate records the weights it scored and its behaviour gate's
    outcome beside metrics.json (also when the gate fails); register refuses a failed gate,
    scores of other weights (e.g. after `finetune train` alone) and a missing record, before
    touching the registry."""
    params = text_model.params
    model_dir, prepared, reports, state = text_model.dirs()
    work = tmp_path / "reports"
    shutil.copytree(reports, work)
    (work / EVALUATED_FILE).unlink(missing_ok=True)
    behaviour = {"min_pass_rate": 1.0, "sentiment_labels": {"positive": "negative",
                                                            "negative": "positive"}}  # fmt: skip
    section = params.evaluate.model_copy(update={"behaviour": BehaviourParams(**behaviour)})
    strict = params.model_copy(update={"evaluate": section})
    with pytest.raises(StageError, match=r"evaluate\.behaviour\.min_pass_rate"):
        run_stage(strict, text_model.root / "tokenized", model_dir, work, state)
    record = json.loads((work / EVALUATED_FILE).read_text())
    assert record["behaviour_gate"] == "failed" and record["model_md5"] == model_md5(model_dir)
    assert (work / "metrics.json").is_file()  # the scores exist: register must still refuse
    before = len(text_model.versions())
    with pytest.raises(StageError, match=r"failed the behaviour gate .*min_pass_rate"):
        register(params, model_dir, prepared, work, state)

    record_evaluation(work, model_dir, "passed")
    retrained = text_model.variant("retrained-not-evaluated").model_dir
    with pytest.raises(StageError, match="measured on other weights"):
        register(params, retrained, prepared, work, state)
    (work / EVALUATED_FILE).unlink()
    with pytest.raises(StageError, match="evaluate did not finish"):
        register(params, model_dir, prepared, work, state)
    assert len(text_model.versions()) == before


def test_test_scores_are_metrics_of_the_logged_model_on_the_test_split(text_model):
    """MLflow 3 links metrics to the logged model and the dataset they were measured on: the
    Models view and the version's page show them."""
    import mlflow

    report = text_model.register()
    client = text_model.client()
    version = client.get_model_version("toy-sentiment", str(report["version"]))
    logged = mlflow.get_logged_model(version.source.removeprefix("models:/"))
    by_key = {m.key: m for m in logged.metrics}
    scored = json.loads((text_model.root / "reports/metrics.json").read_text())
    assert by_key["test_f1_macro"].value == pytest.approx(scored["f1_macro"])
    assert {"test_accuracy", "test_f1_macro"} <= set(by_key) and "test_samples" not in by_key
    for metric in by_key.values():
        assert metric.dataset_name == "test"
        assert metric.dataset_digest == report["test_data_hash"]


# Loaded first by every Python process started with it on PYTHONPATH: this project's package
# cannot be imported there, whatever the venv's editable install says.
WITHOUT_THIS_PROJECT = "import sys\n\nsys.modules['tasks'] = None\n"
LOAD_AND_PREDICT = (
    "import json, sys, mlflow\n"
    "assert sys.modules['tasks'] is None\n"
    "out = mlflow.pyfunc.load_model(sys.argv[1]).predict(sys.argv[2:])\n"
    "print(json.dumps(out.to_dict('records') if hasattr(out, 'to_dict') else out))\n"
)


def test_champions_load_and_serve_where_this_project_is_not(text_model, token_model, tmp_path):
    """The registered models carry what they need: loaded (and the entity model served over
    REST) by processes whose working directory and sys.path hold no part of this project."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(WITHOUT_THIS_PROJECT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for trained, uri, text in (
        (token_model, "models:/toy-ner@champion", "alice smith went to paris"),
        (text_model, "models:/toy-sentiment@champion", "a great film"),
    ):
        trained.ensure_champion()
        command = [sys.executable, "-c", LOAD_AND_PREDICT, uri, text]
        env = {"PYTHONPATH": str(block), "MLFLOW_TRACKING_URI": trained.uri}
        env["MLFLOW_REGISTRY_URI"] = trained.uri
        done = run(command, elsewhere, **env)
        [answer] = json.loads(done.stdout.strip().splitlines()[-1])
        if trained is token_model:
            assert ("PER", "alice smith") in {(e["entity"], e["word"]) for e in answer}
        else:
            assert answer["label"] in {"positive", "negative"}

    port = free_port()
    served = start_server(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/toy-ner@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", cwd=elsewhere,
        PYTHONPATH=str(block), MLFLOW_TRACKING_URI=token_model.uri,
        MLFLOW_REGISTRY_URI=token_model.uri,
    )  # fmt: skip
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": ["alice smith went to paris"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            [entities] = json.loads(response.read())["predictions"]
        assert ("PER", "alice smith") in {(e["entity"], e["word"]) for e in entities}
    finally:
        stop_server(served)


def test_a_champion_without_the_digest_is_replaced_by_a_verified_version(text_model):
    """Issue 31 item 3: a version registered before versions carried ``weights_sha256`` is
    refused by predict; registering its weights again makes a verified version, which takes
    its place as champion (the unverified one is not reused)."""
    from tasks.commands.predict import predict
    from tasks.core.registration.verified import DIGEST_TAG

    own = text_model.named("toy-reverify")
    first = own.register()
    assert first["aliases"]["champion"] == first["version"]
    own.client().delete_model_version_tag("toy-reverify", str(first["version"]), DIGEST_TAG)
    with pytest.raises(StageError, match=f"has no {DIGEST_TAG} tag.*`finetune register`"):
        predict("models:/toy-reverify@champion", ["a great film"], tracking_uri=own.uri)
    again = own.register()
    assert (again["version"], again["reused"]) == (first["version"] + 1, False)
    assert again["aliases"]["champion"] == again["version"]
    assert "registered before verification" in again["reason"]
    [record] = predict("models:/toy-reverify@champion", ["a great film"], tracking_uri=own.uri)
    assert record["label"] in ("positive", "negative")


def test_rollback_moves_the_champion_back(text_model):
    from tasks.commands.models import roll_back
    from tasks.core.errors import StageError

    own = text_model.named("toy-rollback")
    first = own.register()
    own.set_score(first["score"] + 0.1)
    second = own.variant("rollback-better").register()
    assert second["aliases"]["champion"] == second["version"] == first["version"] + 1
    assert roll_back(own.params) == (str(second["version"]), str(first["version"]))
    client = own.client()
    champion = client.get_model_version_by_alias("toy-rollback", "champion")
    assert str(champion.version) == str(first["version"])
    assert champion.tags["rolled_back_from"] == str(second["version"])
    with pytest.raises(StageError, match="was the first champion; name a version with --to"):
        roll_back(own.params)
    with pytest.raises(StageError, match="no version 99"):
        roll_back(own.params, 99)
    assert roll_back(own.params, second["version"])[1] == str(second["version"])
