"""Progress reporting and quiet output: concise lines off a terminal, no raw dicts, no
library noise, and --help that documents each stage."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from conftest import ROOT, run

from tasks.core.modeling.trainer_progress import install
from tasks.core.progress import Progress


def test_progress_logs_one_line_every_few_percent(caplog, monkeypatch):
    monkeypatch.delenv("FINETUNE_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="tasks.demo")
    progress = Progress(200, "demo", every=10, stream=io.StringIO())  # not a terminal
    for step in range(1, 201):
        progress.update(step, loss=1.0 / step)
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.demo"]
    assert len(lines) == 10, lines  # 10%, 20%, ... 100%
    assert lines[0].startswith("step 20/200 (10%) loss 0.0500 ETA ")
    assert lines[-1].startswith("step 200/200 (100%) loss 0.0050 in ")


def test_trainer_progress_replaces_the_raw_dicts(tiny_model_dir, capfd, caplog):
    """A real Trainer on the tiny model: step counts, loss, tokens/s and the epoch's
    validation in log lines; none of Trainer's ``{'loss': ...}`` dicts or bars."""
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [f"the movie was {'good' if i % 2 else 'bad'} " * (1 + i % 4) for i in range(48)]
    data = datasets.Dataset.from_dict({**tokenizer(texts), "labels": [i % 2 for i in range(48)]})
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    args = TrainingArguments(
        output_dir=str(ROOT / ".state" / "tmp" / "progress-trainer"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        logging_steps=2,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    install(trainer, "train", every=25)
    caplog.set_level(logging.INFO, logger="tasks.train")
    capfd.readouterr()
    trainer.train()
    out, err = capfd.readouterr()
    assert "{'loss'" not in out + err and "'grad_norm'" not in out + err
    assert "it/s]" not in err  # no tqdm bar off a terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.train"]
    steps = [line for line in lines if line.startswith("step ")]
    assert steps[-1].startswith("step 12/12 (100%)"), lines
    assert any("loss" in line and "tokens/s" in line for line in steps), lines
    assert sum(line.startswith("epoch ") and "validation" in line for line in lines) == 2


NOISE = (
    "Add type hints",
    "\x1b[",
    "Loading weights",
    "Writing model shards",
    "model card",
    "license",
    "fontManager",
    "[I 20",
    "Creating initial MLflow database",
)


@pytest.mark.parametrize("stage", ["register", "evaluate", "tokenize", "predict"])
def test_help_documents_the_stage_quietly(stage):
    name = "tasks.commands.predict" if stage == "predict" else f"tasks.{stage}"
    done = run([sys.executable, "-m", name, "--help"], ROOT, COLUMNS="200")
    text = done.stdout + done.stderr
    assert not [noise for noise in NOISE if noise in text], text
    assert "see the module docstring" not in text
    module = __import__(name, fromlist=["_"])
    first_line = module.__doc__.strip().splitlines()[0].replace("[", "").replace("``", "")
    assert first_line[:60] in text.replace("\\[", "").replace("[", ""), text
    assert str(ROOT) not in text, text  # defaults are shown relative to the project
    assert "(params.yaml)" in text


def test_stages_that_never_train_start_without_the_trainer():
    """tokenize, evaluate, register and predict report progress without importing
    transformers' Trainer, and peft with it (seconds of every such process's start)."""
    heavy = ["peft", "transformers.trainer", "transformers.trainer_utils"]
    script = (
        "import json, sys, tasks.tokenize, tasks.evaluate, tasks.register, tasks.report, "
        f"tasks.commands.predict; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    assert run([sys.executable, "-c", script], ROOT).stdout.splitlines()[-1] == "[]"
    trains = run([sys.executable, "-c", f"{script.replace('tasks.tokenize', 'tasks.train')}"], ROOT)
    assert trains.stdout.splitlines()[-1] == json.dumps(heavy)  # the check sees them
