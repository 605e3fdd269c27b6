"""Entity predictions return the user's own text: spans sliced from the input, word-level."""

from __future__ import annotations

import unicodedata

import mlflow
import pytest
from conftest import register_tiny
from transformers import AutoModelForTokenClassification, AutoTokenizer

from tasks.commands.predict import predict, render
from tasks.core.data.labels import iob2_tags
from tasks.core.entity_pipeline import EntityPipeline


def _token(index: int, tag: str, start: int, end: int, score: float = 0.9) -> dict:
    """One sub-token as the pipeline's ``none`` aggregation returns it (``O`` kept)."""
    return {"entity": tag, "score": score, "index": index, "word": "?", "start": start, "end": end}


def test_spans_are_slices_of_the_input_grouped_by_word():
    text = "lufthansa flew  Paris Berlin"
    # [CLS] lu ##ft ##han ##sa flew paris berlin [SEP]; the pieces after a word's first
    # are untrained: their tags (O, B-ORG, I-PER) must not split or cut the word.
    tokens = [
        _token(0, "O", 0, 0),
        _token(1, "B-ORG", 0, 2, 0.8),
        _token(2, "O", 2, 4),
        _token(3, "B-ORG", 4, 7),
        _token(4, "I-PER", 7, 9),
        _token(5, "I-ORG", 10, 14, 0.6),  # flew: continues the organisation
        _token(6, "B-LOC", 16, 21),
        _token(7, "B-LOC", 22, 28, 0.7),  # B- after B-: a second entity
        _token(8, "O", 28, 28),
    ]
    word_ids = [None, 0, 0, 0, 0, 1, 2, 3, None]
    found = EntityPipeline.spans(text, tokens, word_ids)
    assert found == [
        {"entity": "ORG", "score": 0.7, "word": "lufthansa flew", "start": 0, "end": 14},
        {"entity": "LOC", "score": 0.9, "word": "Paris", "start": 16, "end": 21},
        {"entity": "LOC", "score": 0.7, "word": "Berlin", "start": 22, "end": 28},
    ]
    # A stray I- starts an entity; O ends one; a word of another type starts a new one.
    tokens = [
        _token(1, "I-PER", 0, 2),
        _token(2, "O", 3, 5),
        _token(3, "B-PER", 6, 8),
        _token(4, "I-LOC", 9, 11),
    ]
    found = EntityPipeline.spans("ab cd ef gh", tokens, [None, 0, 1, 2, 3])
    words = [(e["entity"], e["word"]) for e in found]
    assert words == [("PER", "ab"), ("PER", "ef"), ("LOC", "gh")]


def test_entity_models_pickled_before_the_move_still_load():
    """A logged EntityPipeline is pickled by reference (module and class name): versions
    registered while the class lived in tasks.register name it there."""
    import pickle

    import cloudpickle

    assert pickle.loads(b"ctasks.register\nEntityPipeline\n.") is EntityPipeline
    assert b"tasks.core.entity_pipeline" in cloudpickle.dumps(EntityPipeline())


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_offsets_of_the_uncased_tokenizer_keep_case_accents_and_spacing(tiny_model_dir, form):
    """The real (uncased, accent-stripping) fast tokenizer's offsets and word_ids; tags
    are crafted per word, with conflicting tags on every non-first sub-token. In NFD, the
    tokenizer's offsets of "José" leave out the final combining accent."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = unicodedata.normalize(form, "MÜLLER  José flew to  São Paulo, then Zürich.")
    plan = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "O", "B-LOC", "O"]
    encoding = tokenizer(text, return_offsets_mapping=True)
    word_ids = encoding.word_ids()
    assert max(w for w in word_ids if w is not None) == len(plan) - 1
    tokens, previous = [], None
    for index, (word, (start, end)) in enumerate(
        zip(word_ids, encoding["offset_mapping"], strict=True)
    ):
        tag = "O" if word is None else plan[word] if word != previous else "B-ORG"
        tokens.append(_token(index, tag, start, end))
        previous = word
    found = EntityPipeline.spans(text, tokens, word_ids)
    for entity in found:
        assert entity["word"] == text[entity["start"] : entity["end"]]
    words = [(e["entity"], unicodedata.normalize("NFC", e["word"])) for e in found]
    assert words == [("PER", "MÜLLER  José"), ("LOC", "São Paulo"), ("LOC", "Zürich")]


def test_served_model_returns_the_users_words(tiny_model_dir, tmp_path, sqlite_store):
    """Register the entity model, predict through tasks.commands.predict: every entity's word is
    the input's slice, in its original case. The head is crafted (zero weights, a bias
    towards B-PER) so that every word is an entity of its own."""
    import torch

    labels = iob2_tags(["LOC", "PER"])
    model = AutoModelForTokenClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0 if t != "B-PER" else 5.0 for t in labels]))
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "model")

    uri = register_tiny(tmp_path / "model", "toy-words", "token_classification")
    long_text = " ".join(["Lufthansa", "flew"] * 150)  # 1,200 sub-tokens, windows of 128
    texts = ["Alice went to PARIS", "Lufthansa  flew", "...", long_text]
    records = predict(uri, texts)
    assert [r["text"] for r in records] == texts
    for record in records:
        for entity in record["entities"]:
            assert entity["word"] == record["text"][entity["start"] : entity["end"]]
            assert entity["entity"] == "PER" and 0 < entity["score"] <= 1
    words = [[e["word"] for e in r["entities"]] for r in records]
    # Lufthansa is nine sub-tokens (l ##u ##f ...) all tagged B-PER: still one word.
    assert words[:3] == [["Alice", "went", "to", "PARIS"], ["Lufthansa", "flew"], [".", ".", "."]]
    assert words[3] == long_text.split()  # every word of a text past the model's window
    # The text output: e^5 / (e^5 + 4) = 0.974 on every word.
    assert render(records[0]).splitlines()[1:] == [
        "  PER\t0.974\t[0:5]\tAlice",
        "  PER\t0.974\t[6:10]\twent",
        "  PER\t0.974\t[11:13]\tto",
        "  PER\t0.974\t[14:19]\tPARIS",
    ]


def test_no_champion_says_why_and_what_to_do(sqlite_store):
    """A first model below register.min_score is only challenger: predict names the alias
    that exists, the gate's reason, and what to run; a missing model says to run the
    pipeline."""
    from tasks.core.errors import StageError

    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "model/weights.txt")
    client.create_registered_model("toy-text-classifier")
    reason = "0.4100 is below register.min_score 0.5"
    client.create_model_version(
        "toy-text-classifier",
        f"runs:/{run.info.run_id}/model",
        run_id=run.info.run_id,
        tags={"decision": "kept as challenger", "reason": reason},
    )
    client.set_registered_model_alias("toy-text-classifier", "challenger", "1")
    with pytest.raises(StageError) as raised:
        predict("models:/toy-text-classifier@champion", ["a text"])
    message = str(raised.value)
    assert "has no @champion version (aliases: @challenger (v1))" in message
    assert f"v1, was kept as challenger: {reason}" in message
    assert "--model-uri models:/toy-text-classifier@challenger" in message
    with pytest.raises(StageError, match=r"no registered model 'other'.*run the pipeline"):
        predict("models:/other@champion", ["a text"])


def test_auto_model_name_follows_data_and_task():
    from tasks.core.config import Params
    from tasks.core.tracking import registered_model_name

    text = Params.model_validate({})
    assert text.register_.model_name == "auto"
    assert registered_model_name(text) == "rotten_tomatoes-text-classifier"
    tokens = Params.model_validate({"task": "token_classification", "data": {"source": "wnut16"}})
    assert registered_model_name(tokens) == "wnut16-token-classifier"
    files = Params.model_validate({"data": {"source": {"path": "data/external/My Reviews.csv"}}})
    assert registered_model_name(files) == "My-Reviews-text-classifier"
    named = Params.model_validate({"register": {"model_name": "mine"}})
    assert registered_model_name(named) == "mine"
