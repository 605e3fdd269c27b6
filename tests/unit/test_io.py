"""Atomic writes (tasks/core/io.py): the one helper every stage output goes through."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

import pytest

from tasks.core import io


def test_write_atomic_writes_text_as_utf8_and_bytes_as_they_are(tmp_path):
    text, data = tmp_path / "sub" / "a.md", tmp_path / "b.bin"
    io.write_atomic(text, "café\n")
    io.write_atomic(data, b"\x00\xff")
    assert text.read_bytes() == "café\n".encode()
    assert data.read_bytes() == b"\x00\xff"
    io.write_atomic(text, "replaced")
    assert text.read_text(encoding="utf-8") == "replaced"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.md", "b.bin", "sub"]


def test_write_atomic_file_has_umask_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        io.write_atomic(tmp_path / "out.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~0o027


def test_write_atomic_temporary_file_is_named_by_the_process(tmp_path, monkeypatch):
    used = []
    real_replace = os.replace

    def replace(src, dst):
        used.append(Path(src).name)
        assert Path(src).read_bytes() == b"new"  # complete before it is moved into place
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    io.write_atomic(tmp_path / "report.json", "new")
    assert used == [f".report.json.{os.getpid()}.tmp"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        io.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_csv_keeps_the_header_order_and_ignores_other_keys(tmp_path):
    path = tmp_path / "history.csv"
    io.write_csv(path, [{"b": 2, "a": "x,y", "extra": 9}, {"a": 1}], ("a", "b"))
    # csv's own dialect (CRLF rows, quoting), as a csv.DictWriter over a file writes it.
    assert path.read_bytes() == b'a,b\r\n"x,y",2\r\n1,\r\n'
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_write_figure_writes_a_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(1, 1))
    axes.plot([0, 1], [1, 0])
    io.write_figure(tmp_path / "plot.png", figure, dpi=20)
    plt.close(figure)
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_files_are_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Issue 31: a power loss must not leave an empty report or a folder of empty files. The
    order of os.fsync and the renames is recorded (the real calls still run)."""
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, Path.rename

    def fsync(descriptor):
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        events.append(("fsync", Path(target).name))
        return real_fsync(descriptor)

    def replace(source, target):
        events.append(("rename", Path(target).name))
        return real_replace(source, target)

    def rename(self, target):
        events.append(("rename", Path(target).name))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "rename", rename)
    io.write_atomic(tmp_path / "best_params.json", "{}")
    assert events == [
        ("fsync", f".best_params.json.{os.getpid()}.tmp"),
        ("rename", "best_params.json"),
        ("fsync", tmp_path.name),
    ]
    events.clear()
    staged = tmp_path / "staged"
    (staged / "checkpoint").mkdir(parents=True)
    (staged / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    io.replace_dir(staged, tmp_path / "model")
    assert events.index(("fsync", "model.safetensors")) < events.index(("rename", "model"))
    assert events[-1] == ("fsync", tmp_path.name)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+cmd", "'+cmd"),
        ("-x|calc", "'-x|calc"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-1", "-1"),  # a number label stays a number
        ("positive", "positive"),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path, value, written):
    import csv

    io.write_csv(tmp_path / "confusion.csv", [{"actual": value, "predicted": "b"}], ("actual",
                 "predicted"))  # fmt: skip
    with (tmp_path / "confusion.csv").open(newline="") as handle:
        assert next(iter(csv.DictReader(handle)))["actual"] == written


def test_eval_report_shows_user_labels_and_texts_as_plain_text():
    """A label or text can open no link, image, HTML tag, code span or new table cell."""
    from types import SimpleNamespace

    from tasks.core.evaluation.eval_reports import markdown

    bad = "<img src=x onerror=alert(1)>|[click](http://x)"
    labels = [bad, "ok"]
    metrics = {"samples": 2, "accuracy": 0.5, "per_class": {
        bad: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ok": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}}  # fmt: skip
    errors = [{"text": "`code` *bold*\n| new row", "gold": bad, "predicted": "ok",
               "confidence": 0.9}]  # fmt: skip
    precision = SimpleNamespace(dtype="fp32", device="cpu")
    report = markdown("text_classification", metrics, [(bad, "ok"), ("ok", "ok")], labels,
                      errors, precision, Path("model"), [])  # fmt: skip
    escaped = r"\<img src=x onerror=alert(1)\>\|\[click\](http://x)"
    assert bad not in report and report.count(escaped) == 4  # per class, matrix x2, mistakes
    assert r"| \`code\` \*bold\* \| new row |" in report
    for line in report.splitlines():
        if line.startswith("| ") and escaped in line:  # no cell break: the columns hold
            assert line.replace(r"\|", "").count("|") in (4, 5, 6)


def _age(path: Path, seconds: float) -> None:
    """Set the modification time of ``path`` and everything under it ``seconds`` back."""
    when = time.time() - seconds
    for entry in [path, *path.rglob("*")]:
        os.utime(entry, (when, when))


def test_replacing_an_output_sweeps_what_killed_runs_staged_beside_it(tmp_path):
    """A run killed between staging and the rename leaves `.model-XXXX` beside the output;
    the next replace removes those older than a day and leaves a live one alone."""
    stale, live = tmp_path / ".model-abc123", tmp_path / ".model-def456"
    for staged in (stale, live):
        (staged / "weights").mkdir(parents=True)
        (staged / "weights" / "model.safetensors").write_bytes(b"half")
    _age(stale, io.STALE_AFTER_S + 60)
    _age(live, io.STALE_AFTER_S - 600)
    new = tmp_path / "new"
    new.mkdir()
    (new / "config.json").write_text("{}")
    io.replace_dir(new, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()
    assert not stale.exists() and live.exists()


def test_checkpoints_of_runs_killed_long_ago_are_swept_unless_locked(tmp_path):
    from tasks.core.modeling.checkpoints import STALE_CHECKPOINTS_S, sweep_stale_checkpoints

    checkpoints = tmp_path / "checkpoints"
    old, held, recent, mine = (checkpoints / key for key in ("old", "held", "recent", "mine"))
    for run_dir in (old, held, recent, mine):
        (run_dir / "checkpoint-10").mkdir(parents=True)
        (run_dir / "checkpoint-10" / "trainer_state.json").write_text("{}")
    for run_dir in (old, held, mine):
        _age(run_dir, STALE_CHECKPOINTS_S + 60)
    _age(recent, STALE_CHECKPOINTS_S - 3600)
    (tmp_path / "locks").mkdir()
    with open(tmp_path / "locks" / "checkpoints-held", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run training that configuration right now
        assert sweep_stale_checkpoints(mine) == [old]
    assert not old.exists() and held.exists() and recent.exists() and mine.exists()


def test_a_staged_folder_replaces_its_target_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    (target / "old").mkdir(parents=True)
    (target / "old" / "weights").write_text("v1")
    with pytest.raises(RuntimeError), io.staged_dir(target) as staged:
        (staged / "weights").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "old" / "weights").read_text() == "v1"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left

    with io.staged_dir(target) as staged:
        (staged / "weights").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]  # replaced whole
    assert (target / "weights").read_text() == "v2"
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)  # not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_staged_files_join_the_folder_and_keep_its_other_files(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / ".gitignore").write_text("/train.parquet\n")  # DVC's, beside the outputs
    (out / "train.parquet").write_text("old")
    with pytest.raises(ValueError), io.staged_files(out) as staged:
        (staged / "train.parquet").write_text("half")
        raise ValueError("bad row")
    assert (out / "train.parquet").read_text() == "old"
    with io.staged_files(out) as staged:
        (staged / "train.parquet").write_text("new")
    assert (out / "train.parquet").read_text() == "new"
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "train.parquet"]
