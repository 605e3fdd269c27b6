"""Batches: length-grouped and token-budget training batches, inference batches, the padding
collators, the CUDA attention choice."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import tiny_params, write_toy_prepared

from tasks.core.data.batching import (
    LengthGroupedBatches,
    TokenBudgetBatches,
    check_budget,
    inference_batches,
    padded_length,
    scaled_learning_rate,
    token_budget,
)
from tasks.core.errors import StageError
from tasks.core.modeling.training import budget_mean_batch

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()


def random_lengths(n: int, seed: int = 0, low: int = 3, high: int = 128) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def buckets(max_length: int) -> list[int]:
    return sorted({padded_length(n) for n in range(1, max_length + 1)})


def test_buckets_are_few_and_cover_every_length():
    assert buckets(128) == [8, 16, 24, 32, 40, 48, 56, 64, 96, 128]
    assert len(buckets(512)) == 22
    for n in range(1, 513):
        assert n <= padded_length(n) < n + 32
    assert padded_length(100, cap=100) == 100  # never beyond the model's positions
    assert padded_length(120, cap=100) == 120  # a longer input is never cut


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, tiny_model_dir):
    """Toy text and token data tokenized by the stage (max_length 32), and the tokenizer."""
    from transformers import AutoTokenizer

    from tasks.core.data.tokenized import load_tokenized
    from tasks.core.data.tokenizing import tokenize

    out = {}
    directory = tmp_path_factory.mktemp("batching")
    for task in ("text_classification", "token_classification"):
        params = tiny_params(task, tiny_model_dir)
        prepared = write_toy_prepared(directory / task / "prepared", task, 300, 80)
        target = directory / task / "tokenized"
        tokenize(params, prepared, target, directory / task / "tokenize.json", directory / task)
        out[task] = load_tokenized(target)[0]
    return out, AutoTokenizer.from_pretrained(tiny_model_dir)


def trainer_for(task: str, data, tokenizer, tiny_model_dir: Path, tmp_path: Path, **train):
    """The train stage's Trainer (``make_trainer``) on the CPU, no training run."""
    from tasks.core.config import TrainParams
    from tasks.core.modeling.precision import Precision
    from tasks.core.modeling.training import make_trainer, training_arguments
    from tasks.core.pretrained.model import model_class

    tp = TrainParams(batch_size=16, seed=3, **train)
    model = model_class(task).from_pretrained(tiny_model_dir, num_labels=5)
    args = training_arguments(
        tp, Precision("cpu", "fp32"), tmp_path, best_metric=None, log_steps=False
    )
    labels = [str(i) for i in range(5)]
    return make_trainer(
        task, model, args, data, tokenizer, labels, [], max_tokens=tp.max_tokens_per_batch
    )


@pytest.mark.parametrize("task", ["text_classification", "token_classification"])
@pytest.mark.parametrize("max_tokens", [None, 160])
def test_training_batches_hold_the_budget_or_batch_size_and_pad_to_the_longest(
    task, max_tokens, tokenized, tiny_model_dir, tmp_path
):
    datasets, tokenizer = tokenized
    data = datasets[task]
    trainer = trainer_for(
        task, data, tokenizer, tiny_model_dir, tmp_path, max_tokens_per_batch=max_tokens
    )
    seen = 0
    for batch in trainer.get_train_dataloader():
        rows, width = batch["input_ids"].shape
        assert batch["attention_mask"].sum(dim=1).max() == width  # padded to the longest
        if "labels" in batch and batch["labels"].dim() == 2:
            assert batch["labels"].shape == (rows, width)
        assert rows * width <= max_tokens if max_tokens else rows <= 16
        seen += rows
    assert seen == len(data["train"]) == trainer.data_collator.samples


@pytest.mark.parametrize("task", ["text_classification", "token_classification"])
def test_evaluation_batches_pad_to_their_longest_and_are_not_counted(
    task, tokenized, tiny_model_dir, tmp_path
):
    datasets, tokenizer = tokenized
    trainer = trainer_for(task, datasets[task], tokenizer, tiny_model_dir, tmp_path)
    seen = 0
    for batch in trainer.get_eval_dataloader():
        width = batch["input_ids"].shape[1]
        assert batch["attention_mask"].sum(dim=1).max() == width  # no all-padding column
        seen += batch["input_ids"].shape[0]
    assert seen == len(datasets[task]["validation"])
    assert trainer.data_collator.samples == 0


def test_cuda_pads_to_multiples_of_8(tokenized):
    from tasks.core.data.batching import padding_collator

    datasets, tokenizer = tokenized
    for task, data in datasets.items():
        rows = [{k: data["train"][i][k] for k in ("input_ids", "attention_mask", "labels")}
                for i in range(5)]  # fmt: skip
        batch = padding_collator(task, tokenizer, "cuda")(rows)
        assert batch["input_ids"].shape[1] % 8 == 0


def test_token_budget_batches_never_exceed_the_budget_and_cover_each_example_once():
    lengths = random_lengths(3000)
    for budget in (128, 1000, 4096):
        sampler = TokenBudgetBatches(lengths, budget, seed=5)
        epochs = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)  # the same count every epoch
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
            for batch in batches:
                assert len(batch) * padded_length(max(lengths[i] for i in batch)) <= budget
            epochs.append(batches)
        assert epochs[0] != epochs[1]  # reshuffled per epoch ...
        sampler.set_epoch(0)
        assert list(sampler) == epochs[0]  # ... and reproducible (exact resume)
        assert list(TokenBudgetBatches(lengths, budget, seed=5)) == epochs[0]
        shapes = {(len(b), padded_length(max(lengths[i] for i in b))) for b in epochs[0]}
        assert len(shapes) <= 2 * len(buckets(128))


def test_inference_batches_respect_budget_or_batch_size():
    lengths = random_lengths(1000, seed=1)
    for budget in (128, 2000, 65536):
        batches = inference_batches(lengths, 64, budget)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        for batch in batches:
            assert len(batch) * padded_length(max(lengths[i] for i in batch)) <= budget
        shapes = {(len(b), padded_length(max(lengths[i] for i in b))) for b in batches}
        assert len(shapes) <= len(buckets(128)) + 1
    by_size = inference_batches(lengths, 64)
    assert [len(b) for b in by_size] == [64] * 15 + [40]
    assert by_size[0][0] == max(range(1000), key=lambda i: (lengths[i], -i))


def test_budget_resolution_learning_rate_rule_and_too_small_budget():
    from tasks.core.config import TrainParams

    assert token_budget("auto", "cpu") is None
    assert token_budget("auto", "cuda") == 65536
    assert token_budget(512, "cpu") == 512
    assert token_budget(None, "cuda") is None
    assert TrainParams().max_tokens_per_batch is None  # batch_size examples on every device
    lengths = [10] * 1000  # bucket 16: 64 per batch of 1024 tokens
    assert budget_mean_batch(TrainParams(batch_size=32), lengths, None) is None
    budget = TrainParams(batch_size=32, max_tokens_per_batch=1024)
    assert budget_mean_batch(budget, lengths, None) == pytest.approx(1000 / 16)
    assert scaled_learning_rate(1e-4, 32, 128) == pytest.approx(2e-4)
    check_budget(128, [100, 128], None, "train.max_tokens_per_batch")
    with pytest.raises(StageError, match=r"train.max_tokens_per_batch: 100 is below .* 128"):
        check_budget(100, [100, 127], None, "train.max_tokens_per_batch")


def test_train_with_a_token_budget_learns_and_scales_the_learning_rate(tmp_path, tiny_model_dir):
    from tasks.core.data.tokenizing import tokenize
    from tasks.train import train

    params = tiny_params(
        "text_classification",
        tiny_model_dir,
        train={"max_tokens_per_batch": 512, "epochs": 4, "learning_rate": 5e-3},
    )
    prepared = write_toy_prepared(tmp_path / "prepared")
    tokenize(params, prepared, tmp_path / "tok", tmp_path / "tok.json", tmp_path)
    metrics = train(params, tmp_path / "tok", tmp_path / "m", tmp_path / "r", tmp_path / "s")
    assert metrics["max_tokens_per_batch"] == 512
    assert metrics["mean_batch_examples"] > 16  # toy sentences: ~16-24 tokens, 20+ a batch
    ratio = (metrics["mean_batch_examples"] / 16) ** 0.5
    assert metrics["learning_rate"] == pytest.approx(5e-3 * ratio, rel=1e-3)
    assert metrics["best_validation_metric"] > 0.8


def test_predict_with_a_budget_matches_batch_size_predictions(tokenized, tiny_model_dir):
    import numpy as np

    from tasks.core.evaluation.inference import predict
    from tasks.core.modeling.precision import Precision
    from tasks.core.pretrained.model import model_class

    datasets, tokenizer = tokenized
    for task, data in datasets.items():
        model = model_class(task).from_pretrained(tiny_model_dir, num_labels=3).eval()
        fp32 = Precision("cpu", "fp32")
        by_size, _ = predict(model, tokenizer, data["test"], task, 16, fp32)
        by_budget, _ = predict(model, tokenizer, data["test"], task, 16, fp32, max_tokens=256)
        for a, b in zip(by_size, by_budget, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_length_grouped_batches_are_reproducible_shuffled_and_pad_little():
    lengths = random_lengths(1000, seed=0, high=60)
    batches = LengthGroupedBatches(lengths, 16, seed=7)
    first = list(batches)
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert list(batches) == first == list(LengthGroupedBatches(lengths, 16, seed=7))
    batches.set_epoch(1)
    assert list(batches) != first  # reshuffled per epoch, from (seed, epoch) alone
    assert [len(b) for b in first[:-1]] == [16] * (len(first) - 1)  # only the last is short
    # Batch order is shuffled, not longest first (Trainer's group_by_length order).
    longest = [max(lengths[i] for i in b) for b in first]
    assert longest != sorted(longest, reverse=True)

    def padding(chosen):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in chosen)

    order = list(range(1000))
    random_batches = [order[i : i + 16] for i in range(0, 1000, 16)]
    assert padding(first) < padding(random_batches) / 5


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_precision_turns_cudnn_attention_off_and_every_length_runs():
    from transformers import BertConfig, BertForSequenceClassification

    from tasks.core.modeling.precision import choose_precision

    torch.backends.cuda.enable_cudnn_sdp(True)
    precision = choose_precision("auto")
    assert precision.device == "cuda"
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = BertForSequenceClassification(config).cuda()
    with precision.autocast():
        for width in range(1, 129):
            ids = torch.randint(0, 1000, (8, width), device="cuda")
            loss = model(input_ids=ids, labels=torch.zeros(8, dtype=torch.long).cuda()).loss
            loss.backward()
    assert torch.isfinite(loss)
