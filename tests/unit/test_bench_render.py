"""bench/render.py, the one renderer of benchmark results: a JSON result in, the markdown of
bench/RESULTS.md out, exact text (and the target checks of bench/speed/targets.py it prints)."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "bench"
COMPARED = ("Trainer best flags", "Trainer default", "fixed-128")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """The bench modules as ``bench/throughput.py`` imports them (bench/ on the path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("render", "results"):
        sys.modules.pop(name, None)
    return importlib.import_module("render"), importlib.import_module("speed.targets")


def timed(path: str, precision: str, tokens_s: float, **more) -> dict:
    """A timed row as bench/speed writes it (rates relative to the baselines' 1000 tokens/s)."""
    row = {
        "path": path,
        "precision": precision,
        "batching": "length-grouped, padded to buckets",
        "samples": 64,
        "steps": 2,
        "seconds": 4.0,
        "samples_s": 16.0,
        "tokens_s": tokens_s,
        "padding": 0.25,
        "mfu": 0.031,
        "mfu_attention": 0.0324,
        "mfu_bf16": 0.0124,
        "vs": {name: tokens_s / 1000 for name in COMPARED},
    }
    return {**row, **more}


def dataset() -> dict:
    training = [
        timed("product", "bf16", 2500.4),
        timed("product (pad to longest)", "bf16", 2000.0),
        *(timed(name, "fp32", 1000.0) for name in COMPARED),
    ]
    training[0]["vs"]["product (pad to longest)"] = 1.25
    inference = [timed("product", "bf16", 3100.0), *(timed(n, "fp32", 1000.0) for n in COMPARED)]
    return {
        "name": "SST-2",
        "task": "text_classification",
        "origin": "../shared/datasets/sst2/train.tsv",
        "examples": 96,
        "mean_length": 15.06,
        "params": 10795394,
        "layers": 6,
        "hidden": 384,
        "batch": 32,
        "eval_batch": 64,
        "training": training,
        "inference": inference,
        "tokenization": [{"function": "encode_texts", "sentences": 67349, "seconds": 9.76}],
    }


def test_training_table_is_exact(bench):
    render, _ = bench
    lines = render.training_table([timed("product", "bf16", 1234.4)])
    assert lines == [
        "| path | precision | batches | examples/step | s | samples/s | real tokens/s | padding "
        "| MFU 6N | MFU +attn | vs best flags | vs Trainer default | vs fixed-128 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| product | bf16 | length-grouped, padded to buckets | 32 | 4.0 | 16.0 | 1,234 | 25% "
        "| 3.1% | 3.2% | 1.23x | 1.23x | 1.23x |",
    ]


def test_inference_and_tokenization_tables_are_exact(bench):
    render, _ = bench
    assert render.inference_table([timed("fixed-128", "fp32", 500.0)])[1:] == [
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| fixed-128 | fp32 | length-grouped, padded to buckets | 4.0 | 16.0 | 500 | 25% | 3.1% "
        "| 3.2% | 0.50x | 0.50x | 0.50x |",
    ]
    assert render.tokenization_table(dataset()["tokenization"])[2] == (
        "| `encode_texts` | 67,349 | 9.76 | 6,901 |"
    )


def test_target_checks_render_with_their_verdicts(bench):
    render, targets = bench
    lines = [render.check_line(c) for c in targets.dataset_checks(dataset(), "cpu")]
    assert lines == [
        "- SST-2: training 2.50x Trainer best flags (target >= 1.2x): met",
        "- SST-2: training 2.50x Trainer defaults (target >= 1x): met",
        "- SST-2: inference 3.10x fixed padding (target >= 3x): met",
        "- SST-2: inference 3.10x best flags, 3.10x defaults (target: never slower than the "
        "defaults): met",
        "- SST-2: buckets vs padding to the longest (same product otherwise): training 1.25x",
        "- SST-2: training MFU 1.2% of the bf16 peak (target >= 40%): **NOT met**",
    ]
    fp32 = dataset()
    fp32["training"][0]["precision"] = "fp32"
    cuda = [render.check_line(c) for c in targets.dataset_checks(fp32, "cuda")]
    assert cuda[0] == "- SST-2: training 2.50x Trainer best flags (target >= 2x): met"
    assert cuda[1] == "- SST-2: training 2.50x Trainer defaults (target >= 3x): **NOT met**"
    assert cuda[-1] == (
        "- SST-2: training MFU target (bf16) not applicable: the product trains in fp32 here "
        "(MFU 3.1% of the fp32 peak)"
    )
    guard = {"corpus": "SST-2", "gap": -0.6}
    assert render.check_line(targets.accuracy_check(guard)) == (
        "- accuracy: product -0.60 points vs Trainer defaults (target: at most 0.5 points "
        "lower): **NOT met**"
    )


def result(bench) -> dict:
    """A whole throughput result, through JSON as the file holds it."""
    _, targets = bench
    data = dataset()
    return json.loads(
        json.dumps(
            {
                "bench": "throughput",
                "started": "2026-01-02T03:04:05+00:00",
                "wall_s": 365.4,
                "command": ".venv/bin/python bench/throughput.py --steps 2",
                "machine": {
                    "device": "cpu: test (2 threads)",
                    "platform": "Linux",
                    "torch": "2.13.0",
                    "threads": 2,
                    "transformers": "5.24.0",
                    "float32_matmul_precision": "highest",
                },
                "model": "default",
                "precision": {"device": "cpu", "dtype": "bf16"},
                "peak": {"size": 256, "fp32": 161.2e9, "bf16": 224.4e9},
                "settings": {
                    "batch_size": 32,
                    "learning_rate": 5e-05,
                    "warmup_ratio": 0.1,
                    "precision": "auto",
                    "group_by_length": True,
                    "max_tokens_per_batch": None,
                    "max_length": 128,
                },
                "method": {"examples": 96, "seed": 42, "warmup_steps": 1, "steps": 2},
                "datasets": [data],
                "accuracy": None,
                "checks": targets.dataset_checks(data, "cpu"),
            }
        )
    )


def test_a_throughput_result_renders_as_its_results_md_section(bench):
    render, _ = bench
    section = render.render(result(bench))
    assert section[:8] == [
        "## throughput: 2026-01-02 03:04 UTC",
        "",
        "- machine: cpu: test (2 threads), Linux; torch 2.13.0 (threads 2), transformers 5.24.0",
        "- command: `.venv/bin/python bench/throughput.py --steps 2` (wall time 365 s)",
        "- model `default`: 6 layers, hidden 384 (N, the non-embedding parameters with the task's "
        "head, per dataset below); product precision bf16 on cpu",
        "- matmul peak (256x256, best of 5x3): fp32 161 GFLOP/s (float32 matmul precision "
        "`highest`), bf16 224 GFLOP/s",
        "- product settings (params.yaml `train`, no tuned values): batch 32, learning rate 5e-05, "
        "warmup ratio 0.1, precision `auto`, group_by_length true, max_tokens_per_batch `None`; "
        "inference batch 64; `tokenize.max_length` pinned to 128 for all paths",
        "- method: sample of 96 train examples per dataset (seed 42); 1 untimed warm-up steps "
        "then 2 timed steps per path; real tokens = attention-mask sum. product = "
        "`tasks.train.train()` (its Trainer subclass, stopped by `max_steps`; `pad to longest`: "
        "the same with buckets off); Trainer best flags = `transformers.Trainer` with bf16/fp16 "
        "where the device has it natively, `train_sampling_strategy='group_by_length'`, cuDNN "
        "attention off on CUDA; Trainer default = `transformers.Trainer`, default "
        "`TrainingArguments` but batch size and steps, collator padding to the longest (token "
        "task: `DataCollatorForTokenClassification`); fixed-128 = the same, padded to 128. "
        "Inference: `tasks.core.inference.predict` vs a DataLoader sorted by length with autocast "
        "(best flags), or in random order, fp32.",
    ]
    heading = section.index(
        "### SST-2 (text_classification): 96 examples from `../shared/datasets/sst2/train.tsv`, "
        "mean 15.1 real tokens; N = 10,795,394 non-embedding parameters"
    )
    assert section[heading + 2] == "Training: batch 32, timed steps per path: 2."
    assert section[heading + 4 : heading + 6] == render.training_table(dataset()["training"])[:2]
    assert len([line for line in section if line.startswith("| product |")]) == 2
    assert section[heading + 12] == "Inference: batch 64, all 96 examples."
    assert section[-8:] == [
        "",
        "- SST-2: training 2.50x Trainer best flags (target >= 1.2x): met",
        "- SST-2: training 2.50x Trainer defaults (target >= 1x): met",
        "- SST-2: inference 3.10x fixed padding (target >= 3x): met",
        "- SST-2: inference 3.10x best flags, 3.10x defaults (target: never slower than the "
        "defaults): met",
        "- SST-2: buckets vs padding to the longest (same product otherwise): training 1.25x",
        "- SST-2: training MFU 1.2% of the bf16 peak (target >= 40%): **NOT met**",
        "",
    ]


def test_the_accuracy_guard_renders_between_the_tables_and_the_checks(bench):
    render, targets = bench
    run = result(bench)
    run["accuracy"] = {
        "corpus": "SST-2",
        "steps": 200,
        "examples": 6400,
        "dev": 872,
        "precision": "bf16",
        "product": 0.8853,
        "product_fp32": 0.8842,
        "default": 0.8819,
        "product_s": 412.3,
        "default_s": 530.6,
        "gap": 0.34,
    }
    run["checks"].append(targets.accuracy_check(run["accuracy"]))
    section = render.render(run)
    start = section.index(
        "Accuracy guard (200 steps each, batch 32, 6400 SST-2 train examples sampled with seed "
        "42, 872 dev examples):"
    )
    assert section[start + 2 : start + 8] == [
        "| path | dev accuracy | training s (all steps) |",
        "|---|---|---|",
        "| product (bf16 inference, as the evaluate stage) | 0.8853 | 412 |",
        "| product (fp32 inference) | 0.8842 | |",
        "| Trainer default (fp32) | 0.8819 | 531 |",
        "",
    ]
    assert section[-2] == (
        "- accuracy: product +0.34 points vs Trainer defaults (target: at most 0.5 points "
        "lower): met"
    )


def test_results_are_stored_and_read_back_one_file_or_one_line_per_run(bench, tmp_path):
    render, _ = bench
    results = importlib.import_module("results")
    run = result(bench)
    single = results.write_json(run, tmp_path / "throughput-1.json")
    lines = tmp_path / "throughput.jsonl"
    results.write_json(run, lines)
    results.write_json({**run, "wall_s": 1.0}, lines)
    assert render.read_results(single) == [run]
    assert [r["wall_s"] for r in render.read_results(lines)] == [365.4, 1.0]
    assert results.json_path("throughput", "20260102T030405", results.RESULTS) == (
        BENCH / "results" / "throughput-20260102T030405.json"
    )
    assert results.json_path("throughput", "x", tmp_path / "t.md") == tmp_path / "throughput-x.json"
    md = tmp_path / "t.md"
    results.record(run, md, tmp_path / "r.json")
    assert (
        md.read_text() == "# Benchmark results\n\n" + "\n".join(render.render(run)).rstrip() + "\n"
    )
    assert json.loads((tmp_path / "r.json").read_text()) == run


def test_an_unknown_bench_is_refused_by_name(bench):
    render, _ = bench
    with pytest.raises(ValueError, match="no renderer for bench 'memory'"):
        render.render({"bench": "memory"})


QUANTIZE = {
    "bench": "quantize",
    "started": "2026-12-04T13:08:44+00:00",
    "machine": "cpu: AMD EPYC (2 threads)",
    "platform": "Linux-6",
    "model": "default",
    "train_examples": 8000,
    "train_s": 113.1,
    "train_precision": "bf16",
    "dev_examples": 872,
    "batch_size": 32,
    "repeats": 2,
    "threads": 2,
    "fp32_texts_per_s": 193.9,
    "int8_texts_per_s": 472.4,
    "speedup": 2.44,
    "speedup_cpu_time": 2.44,
    "bf16_speedup_cpu_time": 1.67,
    "texts_per_cpu_s": {"fp32": 97.6, "int8": 238.1, "bf16": 162.8},
    "bf16_autocast_texts_per_s": 323.8,
    "fp32_accuracy": 0.8326,
    "int8_accuracy": 0.8188,
    "accuracy_delta_points": -1.38,
    "bf16_accuracy": 0.8337,
    "agreement": 0.9427,
    "fp32_seconds": [4.916, 4.844],
    "int8_seconds": [1.664, 1.916],
    "bf16_seconds": [2.842, 2.532],
    "torch": "2.13.0+cpu",
    "engine": "x86",
}


def test_a_quantize_result_renders_as_its_results_md_section(bench):
    render, _ = bench
    assert "\n".join(render.render(QUANTIZE)) == (
        "## quantize: 2026-12-04 13:08 UTC\n"
        "\n"
        "- machine: cpu: AMD EPYC (2 threads), Linux-6; torch 2.13.0+cpu, quantized engine "
        "`x86`, 2 threads\n"
        "- command: `.venv/bin/python bench/quantize.py --examples 8000 --batch-size 32 "
        "--repeats 2`\n"
        "- model: `default` fine-tuned 1 epoch on 8000 SST-2 train sentences (bf16, 113.1 s); "
        "scored on the 872 SST-2 dev sentences (held out), batches of 32 by length, fp32, int8 "
        "and bf16 autocast alternating 2 times (median)\n"
        "\n"
        "| model | texts/s (wall) | texts per CPU-second | dev accuracy |\n"
        "|---|---|---|---|\n"
        "| fp32 | 193.9 | 97.6 | 0.8326 |\n"
        "| int8 dynamic (`--quantize`) | 472.4 | 238.1 | 0.8188 |\n"
        "| fp32 weights, bf16 autocast | 323.8 | 162.8 | 0.8337 |\n"
        "\n"
        "int8 is **2.44x** as fast in wall time, 2.44x in CPU time; accuracy -1.38 points; the "
        "two agree on 94.3% of the sentences (fp32 vs int8). Seconds per pass: fp32 [4.916, "
        "4.844], int8 [1.664, 1.916], bf16 [2.842, 2.532]."
    )


def transfer_seed(seed: int, untuned: float, tuned: float, decided_on: str) -> dict:
    """One seed of bench/tune_transfer.py as it stores it (the share's choice is the tuned)."""
    run = {"values": {}, "test_f1_macro": 0.0, "train_s": 1.0}
    return {
        "seed": seed,
        "decided_on": decided_on,
        "source": "tuned",
        "reason": "r",
        "finalists": [],
        "defaults_value": 0.8,
        "defaults_full_value": 0.82,
        "tune_s": 422.4,
        "tune_examples_trained": 32187,
        "policies": {
            "untuned": {**run, "test_accuracy": untuned, "examples_trained": 30654},
            "share": {**run, "test_accuracy": tuned, "examples_trained": 20436},
            "finalists": {**run, "test_accuracy": tuned, "examples_trained": 20436},
        },
    }


def test_a_tune_transfer_result_averages_the_seeds_against_the_target(bench):
    render, _ = bench
    seeds = [transfer_seed(0, 0.82, 0.83, "whole train split"), transfer_seed(1, 0.81, 0.81, "x")]
    result = {
        "bench": "tune_transfer",
        "started": "2026-12-05T08:15:00+00:00",
        "machine": "x86_64, 2 torch threads",
        "platform": "Linux-6",
        "command": "bench/tune_transfer.py --seeds 0 1 2",
        "data": {"source": "rotten_tomatoes", "examples": {"train": 10218, "test": 1265}},
        "tune": {"n_trials": 6, "train_fraction": 0.2, "finalists": 1, "pruner": "hyperband"},
        "work": ".state/bench/tune_transfer/x",
        "seeds_asked": [0, 1, 2],
        "seeds": seeds,
        "mean_test_accuracy": {"untuned": 0.815, "share": 0.82, "finalists": 0.82},
        "gain_points": {"untuned": 0.0, "share": 0.5, "finalists": 0.5},
    }
    lines = render.render(result)
    assert lines[0] == "## tune_transfer: 2026-12-05 08:15 UTC"
    assert "- data: `rotten_tomatoes`, train 10,218, test 1,265; tuning as `make run`: 6 " in (
        "\n".join(lines)
    )
    assert "- seeds complete: 2 of 3 asked (folder `.state/bench/tune_transfer/x`)" in lines
    assert (
        "| 0 | whole train split | 0.8200 | 0.8300 | 0.8300 | 32,187 | 30,654 / 20,436 | 422 "
        "| tuned: r |"
    ) in lines
    assert "| mean | | **0.8150** | **0.8200** | **0.8200** | | | | |" in lines
    assert lines[-1] == (
        "Tuned (finalists) vs untuned: +0.50 points on average; share-only +0.50 (target: "
        "tuned >= untuned + 0.5): met."
    )
