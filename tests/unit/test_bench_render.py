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
        timed("product (other padding)", "bf16", 2000.0),
        *(timed(name, "fp32", 1000.0) for name in COMPARED),
    ]
    training[0]["vs"]["product (other padding)"] = 1.25
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
        "- SST-2: padding for the device (padded to buckets) vs the other padding (same product "
        "otherwise): training 1.25x",
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
        "`tasks.train.train()` (stock `Trainer` with shuffled length-grouped batches, stopped "
        "by `max_steps`; `other padding`: the same padded to multiples of 8 where the device "
        "pads to the longest, or the reverse); Trainer "
        "best flags = `transformers.Trainer` with bf16/fp16 "
        "where the device has it natively, `train_sampling_strategy='group_by_length'`, cuDNN "
        "attention off on CUDA; Trainer default = `transformers.Trainer`, default "
        "`TrainingArguments` but batch size and steps, collator padding to the longest (token "
        "task: `DataCollatorForTokenClassification`); fixed-128 = the same, padded to 128. "
        "Inference: `tasks.core.evaluation.inference.predict` vs a DataLoader sorted by length "
        "with autocast "
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
        "- SST-2: padding for the device (padded to buckets) vs the other padding (same product "
        "otherwise): training 1.25x",
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
    with pytest.raises(ValueError, match="no renderer for bench 'no_such_bench'"):
        render.render({"bench": "no_such_bench"})


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


def test_a_tune_headroom_result_compares_each_configuration_with_the_defaults(bench):
    render, _ = bench

    def runs(*accuracies: float) -> list[dict]:
        return [
            {"seed": i, "test_accuracy": a, "validation": 0.82, "best_epoch": 2.0, "train_s": 180}
            for i, a in enumerate(accuracies)
        ]

    result = {
        "bench": "tune_headroom",
        "started": "2026-12-06T04:40:00+00:00",
        "machine": "x86_64, 2 torch threads",
        "command": "bench/tune_headroom.py --seeds 0 1",
        "data": "rotten_tomatoes",
        "work": ".state/bench/grid",
        "seeds": [0, 1],
        "configs": [
            {"values": {}, "runs": runs(0.84, 0.83), "mean_test_accuracy": 0.835, "gain_points": 0},
            {
                "values": {"learning_rate": 1e-4, "epochs": 5},
                "runs": runs(0.85, 0.83),
                "mean_test_accuracy": 0.84,
                "gain_points": 0.5,
            },
        ],
    }
    lines = render.render(through_json(result))
    assert lines[0] == "## tune_headroom: 2026-12-06 04:40 UTC"
    assert (
        "| train values over params.yaml | test acc seed 0 | test acc seed 1 | mean | vs defaults "
        "| validation (mean) | best epochs | train s (mean) |"
    ) in lines
    assert "| defaults | 0.8400 | 0.8300 | **0.8350** | +0.00 | 0.8200 | 2, 2 | 180 |" in lines
    assert lines[-1] == (
        "Best fixed configuration (learning_rate=0.0001, epochs=5): +0.50 points over the "
        "defaults on average (the issue asks tuning for >= +0.5)."
    )


def through_json(result: dict) -> dict:
    """``result`` as its JSON file holds it (strict JSON: no NaN)."""
    return json.loads(json.dumps(result, allow_nan=False))


def pruning_variant(pruner: str, complete: int, epochs: float, wall: float, best) -> dict:
    """One search of bench/tune_pruning.py as ``run_variant`` returns it."""
    return {
        "pruner": pruner,
        "trials": 8,
        "complete": complete,
        "pruned": 8 - complete,
        "failed": 0,
        "trial_epochs": epochs,
        "planned_epochs": 18,
        "wall_s": wall,
        "best": best,
        "best_params": {"learning_rate": 5e-5},
        "study": f"20261123T170638-{pruner}",
    }


TUNE_PRUNING = {
    "bench": "tune_pruning",
    "finished": "2026-11-23T17:20:31+00:00",
    "machine": "cpu: AMD EPYC (2 threads)",
    "platform": "Linux-6",
    "threads": 2,
    "command": ".venv/bin/python bench/tune_pruning.py --trials 8 --fraction 0.2",
    "model": "default",
    "precision": "auto",
    "dtype": "bf16",
    "data": {
        "train": 2049,
        "train_examples": 10248,
        "fraction": 0.2,
        "validation": 1267,
        "metric": "f1_macro",
    },
    "search": {
        "seed": 42,
        "startup_trials": 3,
        "trials": 8,
        "evals_per_epoch": 2,
        "pruner": "median",
        "pruner_startup_trials": 2,
        "pruner_warmup_steps": 1,
        "space": ["learning_rate", "batch_size"],
    },
    "variants": [
        pruning_variant("median", 2, 10.0, 313.2, 0.80041),
        pruning_variant("none", 8, 18.0, 546.4, 0.81994),
    ],
    "summary": {"saved": 0.4444, "wall_saved": 0.4268, "gap_points": 1.953, "met": False},
    "storage": ".state/bench/tune_pruning.db",
}


def test_a_tune_pruning_result_renders_as_its_results_md_section(bench):
    render, _ = bench
    assert render.render(through_json(TUNE_PRUNING)) == [
        "## tune_pruning: 2026-11-23 17:20 UTC",
        "",
        "- machine: cpu: AMD EPYC (2 threads), Linux-6; torch threads 2",
        "- command: `.venv/bin/python bench/tune_pruning.py --trials 8 --fraction 0.2`",
        "- data: 2049 of 10248 train examples (stratified 0.2), 1267 validation; model "
        "`default`, precision `auto` (bf16)",
        "- search: TPE seed 42 (3 random startup trials), 8 trials each, 2 evaluations per "
        "epoch, pruner `median` (startup 2, warmup 1) vs none; space: learning_rate, batch_size",
        "",
        "| pruner | trials (complete/pruned/failed) | trial-epochs (planned) | wall s "
        "| best f1_macro |",
        "|---|---|---|---|---|",
        "| median | 8 (2/6/0) | 10.00 (18) | 313 | 0.8004 |",
        "| none | 8 (8/0/0) | 18.00 (18) | 546 | 0.8199 |",
        "",
        "Pruning saved 44% of trial-epochs (43% of wall time); its best score is 1.95 points "
        "lower than without pruning (negative: higher) (target: >= 40% saved, <= 0.5 points "
        "lower): **NOT met**.",
        "Studies (every trial's curve): `.state/bench/tune_pruning.db`, "
        "`20261123T170638-median`, `20261123T170638-none`.",
        "",
    ]


def test_a_pruned_search_without_a_complete_trial_renders_nan_as_before(bench):
    render, _ = bench
    run = json.loads(json.dumps(TUNE_PRUNING))
    run["variants"][0].update(complete=0, pruned=8, best=None)
    run["summary"].update(gap_points=None, met=False)
    lines = render.render(through_json(run))
    assert "| median | 8 (0/8/0) | 10.00 (18) | 313 | nan |" in lines
    assert "its best score is nan points lower" in "\n".join(lines)


PRUNING_REPLAY = {
    "bench": "pruning_replay",
    "finished": "2026-11-23T17:51:02+00:00",
    "command": ".venv/bin/python bench/pruning_replay.py --study 20261123T171152-none",
    "study": "20261123T171152-none",
    "storage": "sqlite:///.state/bench/tune_pruning.db",
    "curves": 8,
    "evaluations": 36,
    "ceiling": 0.81994,
    "repeats": 20,
    "pruners": [
        {
            "pruner": "median, warmup 1",
            "spent": 20.0,
            "saved": 0.4444,
            "best_kept": 0.80041,
            "lost_points": 1.953,
            "lost_points_worst": 1.953,
        },
        {
            "pruner": "hyperband (min 1, factor 3): the new default",
            "spent": 24.2,
            "saved": 0.329,
            "best_kept": 0.81853,
            "lost_points": 0.1411,
            "lost_points_worst": 1.9551,
        },
    ],
}


def test_a_pruning_replay_result_renders_its_table(bench):
    render, _ = bench
    assert render.render(through_json(PRUNING_REPLAY)) == [
        "## pruning_replay: 2026-11-23 17:51 UTC",
        "",
        "- command: `.venv/bin/python bench/pruning_replay.py --study 20261123T171152-none` "
        "(no training: the 8 curves of the no-pruning study `20261123T171152-none`, fed in "
        "order to the tune stage's own pruners)",
        "",
        "8 curves, 36 evaluations, best 0.8199 without pruning",
        "mean over 20 study names (hyperband brackets depend on the name)",
        "| pruner | evaluations spent | saved | best kept | points lost (worst) |",
        "|---|---|---|---|---|",
        "| median, warmup 1 | 20.0 | 44% | 0.8004 | 1.95 (1.95) |",
        "| hyperband (min 1, factor 3): the new default | 24.2 | 33% | 0.8185 | 0.14 (1.96) |",
    ]


def overhead_stage(stage: str, wall: float, imports: float, compute=None) -> dict:
    return {"stage": stage, "wall_s": wall, "compute_s": compute, "import_s": imports}


PIPELINE_OVERHEAD = {
    "bench": "pipeline_overhead",
    "finished": "2026-11-23T19:00:12+00:00",
    "machine": {"processor": "x86_64", "cpus": 2, "platform": "Linux-6"},
    "command": "/work/main/.venv/bin/python bench/pipeline_overhead.py --project .state/fresh-run",
    "project": "fresh-run",
    "stages": [
        overhead_stage("prepare", 1.7, 0.5),
        overhead_stage("validate", 6.24, 0.56),
        overhead_stage("tokenize", 6.4, 0.2),
        overhead_stage("tune", 203.4, 0.6, 188.84),
        overhead_stage("train", 337.9, 0.2, 324.04),
        overhead_stage("evaluate", 13.8, 0.2, 3.24),
        overhead_stage("register", 9.26, 1.74),
    ],
    "reported_compute": {"tune": 188.84, "train": 324.04, "evaluate": 3.24},
    "total_s": 579.7,
    "before_first_s": 1.0,
    "noop_s": [1.2, 0.81, 0.79],
}


def test_a_pipeline_overhead_result_renders_as_its_results_md_section(bench):
    """The numbers of the 2026-11-23 19:00 section of bench/RESULTS.md, rendered the same."""
    render, _ = bench
    assert render.render(through_json(PIPELINE_OVERHEAD)) == [
        "## pipeline_overhead: 2026-11-23 19:00 UTC",
        "",
        "- machine: x86_64, 2 CPUs, Linux-6",
        "- command: `/work/main/.venv/bin/python bench/pipeline_overhead.py --project "
        ".state/fresh-run` (runs `make run` in `fresh-run`)",
        "",
        "| stage | wall s | compute s (reported) | module import s "
        "| rest s (libraries, I/O, logging) |",
        "|---|---|---|---|---|",
        "| prepare | 1.7 | — | 0.5 | 1.2 |",
        "| validate | 6.2 | — | 0.6 | 5.7 |",
        "| tokenize | 6.4 | — | 0.2 | 6.2 |",
        "| tune | 203.4 | 188.8 | 0.6 | 14.0 |",
        "| train | 337.9 | 324.0 | 0.2 | 13.7 |",
        "| evaluate | 13.8 | 3.2 | 0.2 | 10.4 |",
        "| register | 9.3 | — | 1.7 | 7.5 |",
        "",
        "`make run` 579.7 s in all (1.0 s before the first stage: make, setup check, DVC "
        "start). Stages that report compute: 516.1 s of 555.1 s wall, overhead 39.0 s = 7.0%. "
        "Stages without reported compute (prepare, validate, tokenize, register) take 23.6 s "
        "= 4.1% of the run.",
        "No-op `dvc repro`: 1.20, 0.81, 0.79 s (target <= 3 s).",
        "",
    ]


MEMORY = {
    "bench": "memory",
    "finished": "2026-12-04T19:54:40+00:00",
    "label": "issue 16m: CoNLL as Arrow lists",
    "machine": {"machine": "x86_64", "cpus": 2, "platform": "Linux-6"},
    "mb": 100.0,
    "code": None,
    "input": {"format": "conll", "bytes": 100_000_317, "rows": 342896},
    "stages": [
        {"stage": "prepare", "peak_rss_bytes": 362_213_376, "wall_s": 11.46},
        {"stage": "validate", "peak_rss_bytes": 538_112_000, "wall_s": 8.01},
    ],
}


def test_a_memory_result_renders_as_its_results_md_section(bench):
    render, _ = bench
    assert render.render(through_json(MEMORY)) == [
        "## memory: 2026-12-04 19:54 UTC (issue 16m: CoNLL as Arrow lists)",
        "",
        "- machine: x86_64, 2 CPUs, Linux-6",
        "- command: `.venv/bin/python bench/memory.py --mb 100 --format conll`",
        "- input: CONLL 100.0 MB, 342,896 rows",
        "",
        "| stage | peak RSS MB | peak RSS / file size | wall s |",
        "|---|---|---|---|",
        "| prepare | 362 | 3.62 | 11.5 |",
        "| validate | 538 | 5.38 | 8.0 |",
    ]
    older = {**MEMORY, "label": "", "code": "/tmp/16m/before", "mb": 0.5}
    lines = render.render(through_json(older))
    assert lines[0] == "## memory: 2026-12-04 19:54 UTC"
    assert lines[3] == (
        "- command: `.venv/bin/python bench/memory.py --mb 0.5 --format conll "
        "--code /tmp/16m/before`"
    )


TUNE_STORAGE = {
    "bench": "tune_storage",
    "finished": "2026-12-04T13:41:09+00:00",
    "command": ".venv/bin/python bench/tune_storage.py --trials 200 --n-trials 6",
    "host": "vm",
    "cpus": 2,
    "load": "13:39:47 up  2:25,  0 user,  load average: 0.71, 0.50, 1.04",
    "trials": 200,
    "ms_per_trial": {"SQLite": 56.83, "PostgreSQL": 63.91},
    "n_trials": 6,
    "search": [{"workers": 1, "wall_s": 23.41}, {"workers": 2, "wall_s": 17.93}],
}


def test_a_tune_storage_result_renders_as_its_results_md_section(bench):
    render, _ = bench
    assert render.render(through_json(TUNE_STORAGE)) == [
        "## tune_storage: 2026-12-04 13:41 UTC",
        "",
        "`.venv/bin/python bench/tune_storage.py --trials 200 --n-trials 6` on vm (2 CPUs), "
        "load at start: `13:39:47 up  2:25,  0 user,  load average: 0.71, 0.50, 1.04`",
        "",
        "(a) Storage overhead, 200 empty trials each (RDB storage with heartbeats, as the stage "
        "opens it):",
        "",
        "| storage | ms per trial |",
        "|---|---|",
        "| SQLite | 56.8 |",
        "| PostgreSQL | 63.9 |",
        "",
        "(b) One search of 6 trials (tiny random BERT, 240 toy reviews, half per trial, 2 "
        "epochs), PostgreSQL storage, workers with one thread each:",
        "",
        "| workers | wall s | speed-up |",
        "|---|---|---|",
        "| 1 | 23.4 | 1.00 |",
        "| 2 | 17.9 | 1.31 |",
    ]
    skipped = render.render(through_json({**TUNE_STORAGE, "search": None}))
    assert skipped[-1] == "| PostgreSQL | 63.9 |"


SECTIONS = {
    "quantize": QUANTIZE,
    "tune_pruning": TUNE_PRUNING,
    "pruning_replay": PRUNING_REPLAY,
    "pipeline_overhead": PIPELINE_OVERHEAD,
    "memory": MEMORY,
    "tune_storage": TUNE_STORAGE,
}


def _context_run(context: int, f1: float, train_s: float) -> dict:
    return {
        "context_tokens": context,
        "max_length": 256,
        "mean_length": {"train": 21.4 if not context else 118.25, "test": 18.8},
        "context": {},
        "test_entity_f1": f1,
        "test_precision": 0.87,
        "test_recall": 0.875,
        "per_type_f1": {"PER": 0.93, "LOC": 0.9051},
        "validation_entity_f1": 0.912,
        "best_epoch": 3.0,
        "train_s": train_s,
        "train_tokens_per_second": 2312.6,
    }


def test_a_document_context_result_compares_each_size_with_none(bench):
    render, _ = bench
    result = {
        "bench": "document_context",
        "started": "2026-12-05T15:16:19+00:00",
        "machine": "x86_64, 2 torch threads",
        "platform": "Linux",
        "command": "bench/document_context.py --context 0 64",
        "train": {"learning_rate": 1.2e-4, "batch_size": 16, "epochs": 3},
        "work": ".state/bench/document_context/x",
        "runs": [_context_run(0, 0.8712, 400.0), _context_run(64, 0.8843, 2200.0)],
    }
    lines = render.render(result)
    assert lines[0] == "## document_context: 2026-12-05 15:16 UTC"
    assert "learning rate 0.00012, batch 16, 3 epochs" in lines[4]
    assert (
        "| 64 | 118.2 | **0.8843** | 0.8700 | 0.8750 | LOC 0.905, PER 0.930 | 0.9120 (3) "
        "| 2200 | 2,313 |"
    ) in lines
    assert lines[-1] == (
        "Context 64: +1.31 points of test entity F1 for 5.5x the training time "
        "(target 0.90: **NOT met**)."
    )


def test_every_bench_that_records_a_result_has_a_renderer(bench):
    render, _ = bench
    recording = {
        path.stem
        for path in BENCH.glob("*.py")
        if "record(result, args.results" in path.read_text()
    }
    assert recording == {
        "throughput",
        "tune_transfer",
        "tune_headroom",
        "document_context",
        *SECTIONS,
    }
    assert recording <= set(render.RENDERERS)


def test_the_command_line_re_renders_stored_results(bench, tmp_path, monkeypatch, capsys):
    """``bench/render.py FILE ...``: each stored result's section, printed or appended."""
    render, _ = bench
    files = []
    for name, run in SECTIONS.items():
        files.append(tmp_path / f"{name}-1.json")
        files[-1].write_text(json.dumps(run))
    monkeypatch.setattr(sys, "argv", ["render.py", *map(str, files)])
    render.main()
    printed = capsys.readouterr().out
    for run in SECTIONS.values():
        assert "\n".join(render.render(run)) in printed
    md = tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", ["render.py", str(files[1]), "--append", str(md)])
    render.main()
    assert md.read_text() == (
        "# Benchmark results\n\n" + "\n".join(render.render(TUNE_PRUNING)).rstrip() + "\n"
    )
