"""Atomic writes (tasks/core/io.py): the one helper every stage output goes through."""

from __future__ import annotations

import os
import stat
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
