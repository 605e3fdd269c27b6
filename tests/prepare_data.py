"""Data and params builders shared by the prepare tests (unit and command tiers)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from conftest import ROOT

from tasks.core.config import load_params
from tasks.prepare import prepare

TEXT_COLUMNS = {"text_column": "review", "label_column": "sentiment"}


def write_params(directory: Path, **sections) -> Path:
    """A params.yaml in ``directory``: the project's, with ``sections`` merged in."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_prepare(directory: Path, **sections) -> dict:
    params = load_params(write_params(directory, **sections))
    return prepare(params, directory / "prepared", directory / "raw")


def read_split(directory: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(directory / "prepared" / f"{split}.parquet")


def reviews_csv(path: Path, n: int = 60) -> Path:
    rows = ["review,sentiment,movie"]
    for i in range(n):
        label = "pos" if i % 3 else "neg"
        rows.append(f'"review number {i}, quite {label}",{label},movie{i % 12}')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def conll_text(sentences: list[list[tuple[str, str]]], docstart: bool = True) -> str:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for sentence in sentences:
        lines += [f"{token} NNP B-NP {tag}" for token, tag in sentence] + [""]
    return "\n".join(lines)


def user_data(path: Path, **extra) -> dict:
    return {"source": {"path": str(path)}, **TEXT_COLUMNS, **extra}
