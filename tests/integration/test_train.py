"""The train stage on tiny random BERTs: learning, methods, determinism, resume, start points."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    ROOT,
    make_project,
    project_env,
    start_point_in,
    tiny_params,
    write_toy_prepared,
)
from conftest import run as run_command

from tasks.core.config import load_params
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.modeling.precision import choose_precision, cpu_supports_bf16
from tasks.core.modeling.training import (
    build_model,
    head_parameter_names,
    make_trainer,
    training_arguments,
)
from tasks.train import train


def prepare_run(directory: Path, params, task: str = "text_classification", **sizes) -> Path:
    """Toy prepared data tokenized into ``directory / "tokenized"``."""
    prepared = write_toy_prepared(directory / "prepared", task, **sizes)
    tokenized = directory / "tokenized"
    tokenize(params, prepared, tokenized, directory / "reports" / "tokenize.json", directory)
    return tokenized


def run_train(directory: Path, params, tokenized: Path, name: str = "run") -> dict:
    out = directory / name
    metrics = train(params, tokenized, out / "model", out / "reports", out / "state")
    return metrics


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def validation_loss(model_dir: Path, tokenized: Path) -> float:
    """Mean cross-entropy of the saved model on the validation split (fp32)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.core.data.batching import model_columns, padding_collator
    from tasks.core.data.tokenized import load_tokenized

    data, _ = load_tokenized(tokenized)
    split = data["validation"].select_columns(model_columns(data["validation"]))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    collate = padding_collator(
        "text_classification", AutoTokenizer.from_pretrained(model_dir), "cpu"
    )
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(split), 32):
            batch = collate([split[i] for i in range(start, min(start + 32, len(split)))])
            total += float(model(**batch).loss) * len(batch["labels"])
    return total / len(split)


def saved_checkpoint(checkpoints: Path) -> bool:
    """True once a checkpoint's trainer state (written last) is complete."""
    for state in checkpoints.glob("*/checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except ValueError:
            pass
    return False


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_model_dir):
    """One text run with early stopping (patience 1) shared by several tests."""
    directory = tmp_path_factory.mktemp("text-run")
    params = tiny_params(
        "text_classification", tiny_model_dir, train={"early_stopping_patience": 1}
    )
    tokenized = prepare_run(directory, params)
    metrics = run_train(directory, params, tokenized)
    return directory / "run", tokenized, metrics


def test_text_task_learns_and_writes_outputs(text_run):
    run, _, metrics = text_run
    assert metrics["best_validation"]["accuracy"] >= 0.9
    assert metrics["metric"] == "f1_macro" and metrics["best_validation_metric"] >= 0.9
    assert metrics["head"] == "new" and metrics["method"] == "full"
    assert metrics["trainable_parameters"] == metrics["total_parameters"]
    assert metrics["device"] == "cpu" and metrics["precision"] == "fp32"
    assert metrics["train_samples_per_second"] > 0 and metrics["train_tokens_per_second"] > 0
    assert 0 <= metrics["padding_share"] < 0.5
    assert json.loads((run / "reports" / "train_metrics.json").read_text()) == metrics

    model_dir = run / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}

    history = read_csv(run / "reports" / "train_history.csv")
    assert list(history[0]) == ["step", "epoch", "loss", "learning_rate", "grad_norm"]
    assert [int(r["step"]) for r in history] == sorted(int(r["step"]) for r in history)
    validation = read_csv(run / "reports" / "validation_history.csv")
    assert {"epoch", "step", "loss", "accuracy", "f1_macro", "f1_weighted"} <= set(validation[0])
    assert len(validation) == metrics["epochs_run"]
    # Finished runs leave no checkpoints behind (the model is DVC's output now).
    assert not any((run / "state" / "checkpoints").glob("*"))


def test_early_stopping_restores_the_best_epoch(text_run):
    run, tokenized, metrics = text_run
    validation = read_csv(run / "reports" / "validation_history.csv")
    scores = [float(r["f1_macro"]) for r in validation]
    best = scores.index(max(scores))  # the first epoch reaching the best score
    assert metrics["stopped_early"] and metrics["epochs_run"] == best + 2  # patience 1
    assert metrics["best_epoch"] == best + 1
    # The saved weights are the best epoch's, not the last one's: their validation loss is
    # the one recorded for the best epoch.
    expected = float(validation[best]["loss"])
    assert float(validation[-1]["loss"]) != pytest.approx(expected, rel=1e-3)
    assert validation_loss(run / "model", tokenized) == pytest.approx(expected, rel=1e-4)


def test_token_task_learns(tmp_path, tiny_model_dir):
    # Also exercises gradient accumulation, the cosine schedule and the dropout override.
    train_params = {"epochs": 3, "batch_size": 8, "gradient_accumulation_steps": 2}
    train_params.update(scheduler="cosine", dropout=0.0)
    params = tiny_params("token_classification", tiny_model_dir, train=train_params)
    metrics = run_train(tmp_path, params, prepare_run(tmp_path, params, "token_classification"))
    assert metrics["global_steps"] == 3 * 15  # 240 examples / (8 x 2) per optimizer step
    assert metrics["metric"] == "f1_micro"
    config = json.loads((tmp_path / "run/model/config.json").read_text())
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.0
    validation = (tmp_path / "run/reports/validation_history.csv").read_text().splitlines()
    assert validation[0].endswith(",f1_micro")  # the metric DVC plots by default
    assert metrics["best_validation"]["f1_micro"] >= 0.9
    assert metrics["best_validation"]["token_accuracy"] >= 0.9


def test_same_seed_gives_identical_runs(tmp_path, tiny_model_dir):
    # precision auto: bf16 autocast on CPUs that support it (as on the real runs), else fp32.
    params = tiny_params(
        "text_classification", tiny_model_dir, train={"epochs": 2, "precision": "auto"}
    )
    tokenized = prepare_run(tmp_path, params)
    first = run_train(tmp_path, params, tokenized, "first")
    second = run_train(tmp_path, params, tokenized, "second")
    assert first["best_validation"] == second["best_validation"]
    assert first["precision"] == ("bf16" if cpu_supports_bf16() else "fp32")
    for name in ("train_history.csv", "validation_history.csv"):
        assert (tmp_path / "first/reports" / name).read_text() == (
            tmp_path / "second/reports" / name
        ).read_text()
    a, b = weights(tmp_path / "first/model"), weights(tmp_path / "second/model")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    params_path = tmp_path / "params.yaml"
    # The CLI runs in a project copy: it accepts a start point from models/pretrained only.
    project = make_project(tmp_path / "project")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(start_point_in(project, tiny_model_dir))
    raw["tokenize"]["max_length"] = 32
    raw["train"].update(
        learning_rate=1e-2, epochs=4, batch_size=8, save_steps=4, logging_steps=5,
        early_stopping_patience=0, precision="fp32",
    )  # fmt: skip
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    tokenized = prepare_run(tmp_path, params)
    reference = run_train(tmp_path, params, tokenized, "reference")

    run = tmp_path / "interrupted"
    command = [
        sys.executable, "-m", "tasks.train", "--params", str(params_path),
        "--tokenized-dir", str(tokenized), "--model-dir", str(run / "model"),
        "--reports-dir", str(run / "reports"), "--state-dir", str(run / "state"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=project, env=project_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not saved_checkpoint(run / "state" / "checkpoints"):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-epoch: 30 steps per epoch, first save at 4
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "model").exists()

    resumed = train(params, tokenized, run / "model", run / "reports", run / "state")
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] < 30
    assert resumed["best_validation"] == reference["best_validation"]
    assert resumed["global_steps"] == reference["global_steps"] == 120
    assert (run / "reports/validation_history.csv").read_text() == (
        tmp_path / "reference/reports/validation_history.csv"
    ).read_text()
    # The first loss logged after the resume averages fewer steps (Trainer restarts its
    # running sum at the checkpoint); every other row is identical.
    history = read_csv(run / "reports/train_history.csv")
    expected = read_csv(tmp_path / "reference/reports/train_history.csv")
    first_after = min(
        int(r["step"]) for r in history if int(r["step"]) > resumed["resumed_from_step"]
    )
    assert [r["step"] for r in history] == [r["step"] for r in expected]
    assert [r for r in history if int(r["step"]) != first_after] == [
        r for r in expected if int(r["step"]) != first_after
    ]
    a, b = weights(run / "model"), weights(tmp_path / "reference/model")
    assert all((a[k] == b[k]).all() for k in a)


def test_the_cli_streams_its_curves_into_a_run_open_while_training(tmp_path, tiny_model_dir):
    """The train run is opened before training and fed as the Trainer logs: every logged
    step's loss and every epoch's validation score are in MLflow with their steps."""
    import mlflow

    project = make_project(tmp_path / "project")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(start_point_in(project, tiny_model_dir))
    raw["tokenize"]["max_length"] = 32
    raw["train"].update(epochs=2, batch_size=8, logging_steps=5, precision="fp32")
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    tokenized = prepare_run(tmp_path, load_params(params_path))
    out = tmp_path / "cli"
    started = time.time()
    run_command(
        [sys.executable, "-m", "tasks.train", "--params", str(params_path),
         "--tokenized-dir", str(tokenized), "--model-dir", str(out / "model"),
         "--reports-dir", str(out / "reports"), "--state-dir", str(out / "state")],
        project,
    )  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{out / 'state' / 'mlflow' / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        (train_run,) = mlflow.search_runs(
            search_all_experiments=True,
            filter_string="tags.mlflow.runName = 'train'",
            output_format="list",
        )
        history = client.get_metric_history(train_run.info.run_id, "train_loss")
        validation = client.get_metric_history(train_run.info.run_id, "val_f1_macro")
    finally:
        mlflow.set_tracking_uri(None)
    assert train_run.info.status == "FINISHED"
    written = (out / "model" / "config.json").stat().st_mtime
    assert started * 1000 <= train_run.info.start_time < written * 1000  # open while training
    csv_rows = read_csv(out / "reports/train_history.csv")
    assert [m.step for m in history] == [int(r["step"]) for r in csv_rows]
    assert [m.value for m in history] == pytest.approx([float(r["loss"]) for r in csv_rows])
    assert len(validation) == 2  # one per epoch
    assert train_run.data.metrics["summary.global_steps"] > 0


def test_two_processes_train_like_one_only_rank_0_writes_and_resume(tmp_path, tiny_model_dir):
    """``train.processes: 2``: DVC's one command runs two torchrun processes (DDP over gloo);
    the same global batch (2 x 8 vs 1 x 16) reaches the one-process validation score within
    0.05, every example is seen once per epoch across the two, and rank 0 alone writes
    the model, the reports and one MLflow run. Both processes killed after a checkpoint, the
    same command resumes and ends with the uninterrupted run's history and weights."""
    import mlflow

    project = make_project(tmp_path / "project")
    raw = tiny_params("text_classification", start_point_in(project, tiny_model_dir))
    raw = raw.model_dump(mode="json", by_alias=True)
    raw["train"].update(epochs=3, early_stopping_patience=0, save_steps=4)
    tokenized = prepare_run(tmp_path, load_params_from(raw, tmp_path / "one.yaml"))
    one = run_train(tmp_path, load_params_from(raw, tmp_path / "one.yaml"), tokenized)

    raw["train"].update(processes=2, batch_size=8)
    params_path = write_yaml(raw, tmp_path)

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "tasks.train", "--params", str(params_path),
            "--tokenized-dir", str(tokenized), "--model-dir", str(out / "model"),
            "--reports-dir", str(out / "reports"), "--state-dir", str(out / "state"),
        ]  # fmt: skip

    out = tmp_path / "two"
    done = run_command(command(out), project)
    two = json.loads((out / "reports" / "train_metrics.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["best_validation_metric"] == pytest.approx(one["best_validation_metric"], abs=0.05)
    assert two["global_steps"] == one["global_steps"]  # same global batch, same step count
    assert two["train_examples"] * 3 <= two["train_samples_per_second"] * two["train_time_s"] * 1.01
    assert (out / "model" / "model.safetensors").is_file()
    assert done.stderr.count("train INFO best ") == 1  # one summary line: rank 0's
    mlflow.set_tracking_uri(f"sqlite:///{out / 'state' / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_name for r in runs if r.info.run_name == "train"] == ["train"]
    assert not any((out / "state" / "checkpoints").glob("*"))
    mlflow.set_tracking_uri(None)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command(killed), cwd=project, env=project_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not saved_checkpoint(killed / "state" / "checkpoints"):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks
    process.wait()
    process.stderr.close()
    assert not (killed / "model").exists()
    resumed = run_command(command(killed), project)
    assert "resuming from" in resumed.stderr, resumed.stderr
    assert (killed / "reports/validation_history.csv").read_text() == (
        out / "reports/validation_history.csv"
    ).read_text()
    a, b = weights(killed / "model"), weights(out / "model")
    assert all((a[k] == b[k]).all() for k in a)


def load_params_from(raw: dict, path: Path):
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def write_yaml(raw: dict, directory: Path) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_head_method_trains_only_the_classifier(tmp_path, tiny_model_dir):
    params = tiny_params(
        "text_classification", tiny_model_dir, train={"method": "head", "epochs": 2}
    )
    metrics = run_train(tmp_path, params, prepare_run(tmp_path, params))
    hidden, labels = 32, 2
    assert metrics["trainable_parameters"] == hidden * labels + labels
    assert metrics["total_parameters"] > 10 * metrics["trainable_parameters"]
    before, after = weights(tiny_model_dir), weights(tmp_path / "run/model")
    encoder = [k for k in after if k.startswith("bert.")]
    assert encoder
    for key in encoder:  # the encoder did not move
        assert (after[key] == before[key.removeprefix("bert.")]).all(), key


def test_lora_trains_adapters_and_saves_a_merged_model(tmp_path, tiny_model_dir):
    params = tiny_params(
        "text_classification", tiny_model_dir, train={"method": "lora", "epochs": 2}
    )
    metrics = run_train(tmp_path, params, prepare_run(tmp_path, params))
    hidden, layers, r, labels = 32, 2, params.train.lora.r, 2
    lora = layers * 2 * r * (hidden + hidden)  # query and value: A (r x in) + B (out x r)
    assert metrics["trainable_parameters"] == lora + hidden * labels + labels
    after, before = weights(tmp_path / "run/model"), weights(tiny_model_dir)
    assert not any("lora" in k for k in after)  # merged: a plain model
    query = "encoder.layer.0.attention.self.query.weight"
    key = "encoder.layer.0.attention.self.key.weight"
    assert not (after[f"bert.{query}"] == before[query]).all()  # LoRA folded into query
    assert (after[f"bert.{key}"] == before[key]).all()  # untouched module

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/model")
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_a_head_for_the_same_labels_is_kept_and_reordered(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    source = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label={0: "positive", 1: "negative"},
        label2id={"positive": 0, "negative": 1},
    )  # fmt: skip
    source.save_pretrained(tmp_path / "source")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "source")
    from tasks.core.pretrained.model import resolve_model_source

    start = resolve_model_source(str(tmp_path / "source"))
    model, head = build_model("text_classification", start, ["negative", "positive"], None)
    assert head == "kept"
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (model.classifier.weight[0] == source.classifier.weight[1]).all()
    assert (model.classifier.weight[1] == source.classifier.weight[0]).all()

    model, head = build_model("text_classification", start, ["bad", "good"], 0.3)
    assert head == "new" and model.config.hidden_dropout_prob == 0.3
    assert not (model.classifier.weight == source.classifier.weight).all()
    assert head_parameter_names(model) == ["classifier.weight", "classifier.bias"]


def test_registered_model_is_a_start_point(tmp_path, tiny_model_dir, text_run):
    import mlflow

    run, tokenized, _ = text_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(run / "model")
        tokenizer = AutoTokenizer.from_pretrained(run / "model")
        experiment = mlflow.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            mlflow.transformers.log_model(
                {"model": model, "tokenizer": tokenizer}, name="model",
                task="text-classification", pip_requirements=["transformers", "torch"],
                registered_model_name="sentiment",
            )  # fmt: skip
        mlflow.MlflowClient().set_registered_model_alias("sentiment", "champion", "1")
    finally:
        mlflow.set_tracking_uri(None)
    params = tiny_params(
        "text_classification", "models:/sentiment@champion", tracking={"uri": uri},
        train={"epochs": 1},
    )  # fmt: skip
    metrics = train(params, tokenized, tmp_path / "model", tmp_path / "reports", tmp_path)
    assert metrics["head"] == "kept"  # same label set: continue with the trained head
    assert metrics["best_validation"]["accuracy"] >= 0.9
    cached = list((tmp_path / "registry").glob("*/sentiment/v1"))  # one folder per store
    assert len(cached) == 1 and cached[0].is_dir()  # downloaded once, cached

    missing = tiny_params("text_classification", "models:/sentiment@nobody", tracking={"uri": uri})
    with pytest.raises(StageError, match="not found in the registry"):
        train(missing, tokenized, tmp_path / "m2", tmp_path / "r2", tmp_path)


def test_data_from_another_tokenizer_is_an_error(tmp_path, tiny_model_dir, text_run):
    _, tokenized, _ = text_run
    params = tiny_params("text_classification", "default")
    with pytest.raises(StageError, match="tokenized with another tokenizer"):
        train(params, tokenized, tmp_path / "model", tmp_path / "reports", tmp_path)


def test_precision_choice_on_cpu():
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # native bf16 only: AVX512 alone would emulate it, slower than fp32
        native = {"avx512_bf16", "amx_bf16"} & set(cpuinfo.read_text().split())
        assert cpu_supports_bf16() == bool(native)
    auto = choose_precision("auto")
    assert auto.device == "cpu"
    assert auto.dtype == ("bf16" if cpu_supports_bf16() else "fp32")
    assert choose_precision("fp32").dtype == "fp32"
    with pytest.raises(StageError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16")


def test_group_by_length_pads_less_and_every_example_is_counted_once(tmp_path, tiny_model_dir):
    """train.group_by_length (Trainer's own sampler) cuts the padding of random batches; the
    collator counts every training example and its real tokens once, evaluation none."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.core.data.tokenized import load_tokenized

    padded = {}
    for group in (True, False):
        params = tiny_params(
            "text_classification", tiny_model_dir, train={"group_by_length": group}
        )
        tokenized = prepare_run(tmp_path / str(group), params, n_train=400)
        data, manifest = load_tokenized(tokenized)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
        args = training_arguments(
            params.train,
            choose_precision("fp32"),
            tmp_path / "out",
            best_metric=None,
            log_steps=False,
        )
        trainer = make_trainer(
            "text_classification",
            model,
            args,
            data,
            AutoTokenizer.from_pretrained(tiny_model_dir),
            manifest["labels"],
            [],
        )
        for _ in trainer.get_train_dataloader():
            pass
        for _ in trainer.get_eval_dataloader():
            pass
        counts = trainer.data_collator
        assert counts.samples == len(data["train"])
        assert counts.tokens == sum(data["train"]["length"])
        padded[group] = counts.padded - counts.tokens
    assert padded[True] < padded[False] / 3


def test_tokenized_data_of_another_task_is_refused_by_every_stage_that_reads_it(
    tmp_path, tiny_model_dir
):
    """Tune, train and evaluate share one check of the tokenized data (``load_tokenized``):
    the same message, before any model is loaded; tune and train never open the test split."""
    import shutil

    from tasks.core.data.tokenized import load_tokenized
    from tasks.core.evaluation.scoring import evaluate
    from tasks.tuning.data import load_tuning_data

    text = tiny_params("text_classification", tiny_model_dir)
    prepared = write_toy_prepared(tmp_path / "prepared", "text_classification")
    tokenized = tmp_path / "tokenized"
    tokenize(text, prepared, tokenized, tmp_path / "tokenize.json", tmp_path)
    token = tiny_params("token_classification", tiny_model_dir)
    readers = {
        "train": lambda: train(token, tokenized, tmp_path / "m", tmp_path / "r", tmp_path / "s"),
        "tune": lambda: load_tuning_data(token, tokenized, tmp_path / "s"),
        "evaluate": lambda: evaluate(token, tokenized, tmp_path / "m", tmp_path / "r"),
    }
    for stage, read in readers.items():
        with pytest.raises(StageError, match="holds text_classification data but task is tok"):
            read()
        assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists(), stage
    shutil.rmtree(tokenized / "test")
    data, manifest = load_tokenized(tokenized, "text_classification", ("train", "validation"))
    assert sorted(data) == ["train", "validation"] and manifest["task"] == "text_classification"
    with pytest.raises(StageError, match=r"test: .*\(re-run tokenize\)"):
        load_tokenized(tokenized, "text_classification")


@pytest.mark.parametrize("task", ["text_classification", "token_classification"])
def test_every_selectable_metric_is_scored_and_auto_means_the_same_everywhere(task):
    """``config.TASK_METRICS`` is the one list: each metric ``train.metric`` accepts is a
    score Trainer's evaluation computes, and ``auto`` is the same metric for train's best
    epoch, tune's objective and register's gate (``metrics.json`` holds the same keys)."""
    import numpy as np
    from transformers import EvalPrediction

    from tasks.core.config import TASK_METRICS
    from tasks.core.modeling.training import metrics_function
    from tasks.core.registration.promotion import metric_key

    labels = ["neg", "pos"] if task == "text_classification" else ["O", "B-PER", "I-PER"]
    if task == "text_classification":
        gold, predicted = np.array([0, 1, 1]), np.array([0, 1, 0])
    else:
        gold, predicted = np.array([[0, 1, 2], [1, 0, 0]]), np.array([[0, 1, 2], [0, 0, 0]])
    scores = metrics_function(task, labels)(EvalPrediction(predicted, gold))
    assert set(TASK_METRICS[task]) <= set(scores), sorted(scores)
    assert all(0 < scores[m] < 1 for m in TASK_METRICS[task]), scores  # one right, one wrong
    params = tiny_params(task, "unused")
    assert params.train.metric == "auto" and params.register_.metric == "auto"
    assert params.train.resolved_metric(task) == metric_key(params) == TASK_METRICS[task][0]
    for metric in TASK_METRICS[task]:
        chosen = tiny_params(task, "unused", train={"metric": metric})
        assert chosen.train.resolved_metric(task) == metric
    own = TASK_METRICS[task]
    other = next(m for ms in TASK_METRICS.values() for m in ms if m not in own)
    with pytest.raises(ValueError, match=f"train.metric: '{other}' is not a {task} metric"):
        tiny_params(task, "unused", train={"metric": other})


def test_a_second_run_of_one_configuration_waits_for_the_first(tmp_path, tiny_model_dir, caplog):
    """Two trainings of one run key at once (queued experiments differing in later stages'
    params): the second waits for the first's lock instead of clearing its checkpoints."""
    import threading

    from tasks.core.modeling.checkpoints import run_key, run_lock
    from tasks.core.pretrained.model import resolve_model_source

    params = tiny_params("text_classification", tiny_model_dir, train={"epochs": 1})
    tokenized = prepare_run(tmp_path, params)
    state = tmp_path / "run" / "state"
    source = resolve_model_source(params.model.name_or_path, params.tracking.uri, state)
    run_dir = state / "checkpoints" / run_key(params, source, choose_precision("fp32"), tokenized)
    result: dict = {}
    with run_lock(run_dir):  # the first run, training
        (run_dir / "checkpoint-7").mkdir(parents=True)
        second = threading.Thread(
            target=lambda: result.update(run_train(tmp_path, params, tokenized))
        )
        second.start()
        deadline = time.monotonic() + 120
        while "another run is training this configuration" not in caplog.text:
            assert time.monotonic() < deadline and second.is_alive(), caplog.text
            time.sleep(0.05)
        time.sleep(0.5)
        assert (run_dir / "checkpoint-7").is_dir() and second.is_alive()
    second.join(300)
    assert result["global_steps"] > 0 and not run_dir.exists()


def test_a_missing_best_checkpoint_is_an_error(tmp_path):
    from types import SimpleNamespace

    from transformers import TrainerState

    from tasks.core.modeling.checkpoints import final_model

    state = TrainerState(best_model_checkpoint=str(tmp_path / "checkpoint-30"))
    with pytest.raises(StageError, match=r"best checkpoint .*checkpoint-30 is missing"):
        final_model(SimpleNamespace(state=state, model=object()))


def test_auto_epochs_train_small_data_longer_and_early_stopping_ends_the_run(
    tmp_path, tiny_model_dir, caplog
):
    """240 examples in batches of 120: 2 steps an epoch, so auto plans the most epochs
    (AUTO_EPOCHS_RANGE) and early stopping (patience 1) decides within them."""
    from tasks.core.config import AUTO_EPOCHS_RANGE

    train_params = {"epochs": "auto", "batch_size": 120, "early_stopping_patience": 1}
    params = tiny_params(
        "text_classification", tiny_model_dir, train=train_params, tune={"enabled": False}
    )
    with caplog.at_level("INFO", logger="tasks.train"):
        metrics = run_train(tmp_path, params, prepare_run(tmp_path, params))
    assert metrics["epochs_planned"] == AUTO_EPOCHS_RANGE[1]
    assert metrics["global_steps"] == 2 * metrics["epochs_run"]
    assert metrics["stopped_early"] and metrics["epochs_run"] < AUTO_EPOCHS_RANGE[1]
    assert f"train.epochs auto: {AUTO_EPOCHS_RANGE[1]} for 240 training examples" in caplog.text
