"""int8 dynamic quantization (``predict --quantize``): every Linear layer is quantized and
the predictions agree with fp32 on tiny models trained and registered by the real stages."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, run
from test_register import _train
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tasks.commands.predict import predict
from tasks.commands.quantize import is_quantized, quantize_model

MIN_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_model_dir):
    return _train(
        tmp_path_factory.mktemp("quant-text"), "text_classification", tiny_model_dir, "q-text"
    )


@pytest.fixture(scope="module")
def token_model(tmp_path_factory, tiny_model_dir):
    return _train(
        tmp_path_factory.mktemp("quant-token"), "token_classification", tiny_model_dir, "q-ner"
    )


def _texts(trained, column: str = "text") -> list[str]:
    frames = [
        pd.read_parquet(trained.root / "prepared" / f"{s}.parquet") for s in ("validation", "test")
    ]
    rows = pd.concat(frames)[column].tolist()
    return [r if isinstance(r, str) else " ".join(r) for r in rows]


def test_every_linear_is_dynamic_int8_and_labels_agree(text_model):
    model = AutoModelForSequenceClassification.from_pretrained(text_model.root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(text_model.root / "model")
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    quantized = quantize_model(model)
    assert is_quantized(quantized) and not is_quantized(model)  # a copy: fp32 kept
    dynamic = [m for m in quantized.modules() if isinstance(m, DynamicLinear)]
    assert len(dynamic) == linears > 0
    assert all(m.weight().dtype == torch.qint8 for m in dynamic)

    texts = _texts(text_model)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        fp32 = model(**batch).logits
        int8 = quantized(**batch).logits
    agreement = (fp32.argmax(-1) == int8.argmax(-1)).float().mean().item()
    assert agreement >= MIN_AGREEMENT, agreement
    assert not torch.equal(fp32, int8)  # it did run the int8 kernels


def test_predict_quantize_agrees_with_the_registered_fp32_models(text_model, token_model):
    text_model.ensure_champion()
    texts = _texts(text_model)
    uri = "models:/q-text@champion"
    plain, fast = predict(uri, texts), predict(uri, texts, quantize=True)
    same = [a["label"] == b["label"] for a, b in zip(plain, fast, strict=True)]
    assert sum(same) / len(same) >= MIN_AGREEMENT

    token_model.ensure_champion()
    sentences = _texts(token_model, "tokens")
    uri = "models:/q-ner@champion"
    plain, fast = predict(uri, sentences), predict(uri, sentences, quantize=True)

    def spans(record):
        return [(e["entity"], e["start"], e["end"]) for e in record["entities"]]

    same = [spans(a) == spans(b) for a, b in zip(plain, fast, strict=True)]
    assert sum(same) / len(same) >= MIN_AGREEMENT
    assert any(r["entities"] for r in fast)


def test_predict_cli_quantize_flag(text_model):
    text_model.ensure_champion()
    params_file = text_model.root / "params.yaml"
    params_file.write_text(yaml.safe_dump(text_model.params.model_dump(mode="json", by_alias=True)))
    done = run(
        [sys.executable, "-m", "tasks.commands.predict", "--params", str(params_file), "--json",
         "--quantize", "a great film", "an awful plot"],
        ROOT,
    )  # fmt: skip
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in records] == ["a great film", "an awful plot"]
    assert all(r["label"] in ("positive", "negative") and 0 <= r["score"] <= 1 for r in records)


def test_the_deprecated_api_is_still_the_one_available():
    """quantize_model keeps torch's deprecated ``quantize_dynamic`` (silenced there) because
    its maintained successor, torchao's ``quantize_``, is not installed. This fails when
    torch removes the old API or torchao arrives: migrate ``quantize_model`` then."""
    import importlib.util
    import warnings

    from torch.ao.quantization import quantize_dynamic

    assert importlib.util.find_spec("torchao") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 4)), {torch.nn.Linear})
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert is_quantized(quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 4))))
