"""Issue 13's targets checked against one run: on a GPU 2x the best flags, 3x the defaults,
25% MFU; on a CPU 1.2x the best flags; never slower than the defaults anywhere."""

from __future__ import annotations

from typing import Any

from .training import BEST, OTHER_PADDING

TARGETS = {
    "cuda": {"train_vs_best": 2.0, "train_vs_default": 3.0, "infer_vs_fixed": 3.0, "mfu": 0.25},
    "cpu": {"train_vs_best": 1.2, "train_vs_default": 1.0, "infer_vs_fixed": 3.0, "mfu": 0.40},
}
MAX_ACCURACY_LOSS = 0.5  # points of dev accuracy the product may lose to Trainer defaults


def _check(kind: str, dataset: str, value: float, target: float | None, **more: Any) -> dict:
    """One check: ``met`` when ``value >= target`` (no target: a measurement, never failing)."""
    met = None if target is None else value >= target
    return {"kind": kind, "dataset": dataset, "value": value, "target": target, "met": met, **more}


def _mfu_check(name: str, product: dict, target: float) -> dict:
    """The bf16 MFU target; not applicable when the product trained in another precision."""
    if product["precision"] == "bf16":
        return _check("mfu", name, product["mfu_bf16"], target)
    return _check("mfu_not_applicable", name, product["mfu"], None, precision=product["precision"])


def dataset_checks(dataset: dict, device: str) -> list[dict]:
    """The target checks of one dataset's result (``runs.bench_dataset``)."""
    targets, name = TARGETS[device], dataset["name"]
    train = {row["path"]: row for row in dataset["training"]}["product"]
    infer = {row["path"]: row for row in dataset["inference"]}["product"]
    return [
        _check("train_vs_best", name, train["vs"][BEST], targets["train_vs_best"]),
        _check(
            "train_vs_default", name, train["vs"]["Trainer default"], targets["train_vs_default"]
        ),
        _check("infer_vs_fixed", name, infer["vs"]["fixed-128"], targets["infer_vs_fixed"]),
        _check(
            "infer_vs_default", name, infer["vs"]["Trainer default"], 1.0, vs_best=infer["vs"][BEST]
        ),
        _check("padding", name, train["vs"][OTHER_PADDING], None, batching=train["batching"]),
        _mfu_check(name, train, targets["mfu"]),
    ]


def accuracy_check(guard: dict) -> dict:
    """The accuracy guard: the product at most half a point below Trainer defaults."""
    return _check("accuracy", guard["corpus"], guard["gap"], -MAX_ACCURACY_LOSS)
